//! Tenant registry: the three tenant ids and `ensure_tenants()`, which makes sure they
//! exist in the application's tenants table.

use crate::errors::{raise, raise_full, OrRaise};
use crate::logic::ident::{parse_qualified, quote_ident, QualifiedName};
use crate::logic::tenants::{
    uuid_bytes, ExtraPlan, TenantSpec, ALL, DIGITAL_HEALTH, PHARMA, PLATFORM,
};
use pgrx::prelude::*;
use pgrx::spi::{SpiClient, SpiResult, SpiTupleTable};
use pgrx::{JsonB, Uuid};
use serde_json::{Map, Value};

fn uuid_of(spec: &TenantSpec) -> Uuid {
    // The ids are constants checked by the unit tests; a bad one is a build bug.
    match uuid_bytes(spec.id) {
        Some(b) => Uuid::from_bytes(b),
        None => raise(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!(
                "vital_tenancy: built-in tenant id {} is not a uuid",
                spec.id
            ),
        ),
    }
}

/// The Platform tenant: shared resources, readable by every tenant.
#[pg_extern(immutable, parallel_safe)]
fn platform_tenant_id() -> Uuid {
    uuid_of(&PLATFORM)
}

/// The Digital Health Startup tenant.
#[pg_extern(immutable, parallel_safe)]
fn digital_health_tenant_id() -> Uuid {
    uuid_of(&DIGITAL_HEALTH)
}

/// The Pharmaceuticals tenant.
#[pg_extern(immutable, parallel_safe)]
fn pharma_tenant_id() -> Uuid {
    uuid_of(&PHARMA)
}

/// One column of the tenants table as `ensure_tenants` needs to know it.
struct Column {
    name: String,
    is_uuid: bool,
    not_null: bool,
    has_default: bool,
    generated: bool,
}

/// `extra` read into a plan by `parse`: 22004 when NULL, 22023 when refused.
fn extra_plan(
    extra: Option<crate::catalog::JsonArg>,
    parse: fn(&Value) -> Result<ExtraPlan, crate::logic::tenants::ExtraError>,
) -> ExtraPlan {
    let Some(crate::catalog::JsonArg(extra)) = extra else {
        raise(
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            "extra must not be NULL; pass '{}' for no extra column values",
        )
    };
    match parse(&extra) {
        Ok(p) => p,
        Err(e) => raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            e.to_string(),
        ),
    }
}

/// Make sure the three tenants exist in the application's tenants table, creating the
/// table if needed. Never changes an existing row. Returns what it did per tenant.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn ensure_tenants(
    tenants_table: default!(Option<&str>, "'public.tenants'"),
    extra: default!(Option<crate::catalog::JsonArg>, "'{}'"),
) -> TableIterator<
    'static,
    (
        name!(tenant_id, Uuid),
        name!(name, String),
        name!(slug, String),
        name!(action, String),
        name!(detail, Option<String>),
    ),
> {
    let Some(table_text) = tenants_table else {
        raise(
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            "tenants_table must not be NULL",
        )
    };
    let table = match parse_qualified(table_text) {
        Ok(t) => t,
        Err(e) => raise(PgSqlErrorCode::ERRCODE_INVALID_NAME, e.to_string()),
    };
    let plan = extra_plan(extra, ExtraPlan::parse);

    let rows = Spi::connect_mut(|client| {
        let relid = resolve_or_create(client, &table);
        let columns = load_columns(client, relid);
        check_columns(&table, &columns, &plan);
        let checks = load_checks(client, relid);
        let mut out = Vec::with_capacity(ALL.len());
        for spec in ALL.iter() {
            let new = NewTenant {
                id: uuid_of(spec),
                name: spec.name.into(),
                slug: spec.slug.into(),
                keyed_extra: true,
            };
            out.push(ensure_one(
                client,
                &table,
                &columns,
                &checks,
                &new,
                plan.row_for(spec),
            ));
        }
        remember_tenants_table(client, &table);
        out
    });
    TableIterator::new(rows)
}

fn resolve_or_create(client: &mut SpiClient<'_>, table: &QualifiedName) -> pg_sys::Oid {
    // Checked by name first (pg_temp names no schema of its own).
    // The registry is the application's: never in a system schema, the extension's own
    // or a session's temporary one.
    let s = table.schema.as_str();
    if s == "pg_catalog"
        || s == "information_schema"
        || s == "vital_tenancy"
        || s.starts_with("pg_toast")
        || s.starts_with("pg_temp")
    {
        raise(
            PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            format!(
                "tenants table {table} would be in schema \"{s}\"; the tenants registry belongs in an application schema"
            ),
        );
    }
    let nsp: Option<pg_sys::Oid> = client
        .select(
            "SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = $1",
            Some(1),
            &[table.schema.as_str().into()],
        )
        .and_then(first_value)
        .or_raise("looking up the schema");
    let Some(nsp) = nsp else {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_SCHEMA_NAME,
            format!(
                "schema \"{}\" of tenants table {} does not exist",
                table.schema, table
            ),
        )
    };
    // Concurrent calls for a table that does not exist yet: one creates it, the others
    // wait here and then find it (the lookup below takes its snapshot after the wait).
    client
        .update(
            "SELECT pg_catalog.pg_advisory_xact_lock($1::oid::integer, pg_catalog.hashtext($2))",
            None,
            &[nsp.into(), table.name.as_str().into()],
        )
        .or_raise("serialising ensure_tenants");
    let found = client
        .select(
            "SELECT oid, relkind::text FROM pg_catalog.pg_class WHERE relnamespace = $1 AND relname = $2",
            Some(1),
            &[nsp.into(), table.name.as_str().into()],
        )
        .and_then(|t| {
            if t.is_empty() {
                return Ok((None, None));
            }
            let row = t.first();
            Ok((row.get::<pg_sys::Oid>(1)?, row.get::<String>(2)?))
        })
        .or_raise("looking up the tenants table");
    match found {
        (Some(oid), Some(kind)) if kind == "r" || kind == "p" => {
            // Serialise concurrent ensure_tenants() calls; readers are not blocked.
            // Behind an open writer of the registry it gives up (55P03) after the
            // toolkit's lock timeout rather than blocking other writers behind it (N02).
            lock_registry(client, table);
            oid
        }
        (Some(_), Some(kind)) => raise(
            PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            format!(
                "tenants table {table} is {}, not a table",
                crate::catalog::relkind_article(&kind)
            ),
        ),
        _ => {
            client
                .update(
                    &format!(
                        "CREATE TABLE {} (
                            id         uuid PRIMARY KEY,
                            name       text NOT NULL,
                            slug       text NOT NULL UNIQUE,
                            settings   jsonb NOT NULL DEFAULT '{{}}'::jsonb,
                            created_at timestamptz NOT NULL DEFAULT now()
                        )",
                        table.quoted()
                    ),
                    None,
                    &[],
                )
                .or_raise("creating the tenants table");
            client
                .select(
                    "SELECT oid FROM pg_catalog.pg_class WHERE relnamespace = $1 AND relname = $2",
                    Some(1),
                    &[nsp.into(), table.name.as_str().into()],
                )
                .and_then(first_value::<pg_sys::Oid>)
                .or_raise("reading back the new tenants table")
                .unwrap_or_else(|| {
                    raise(
                        PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                        format!("tenants table {table} vanished after CREATE TABLE"),
                    )
                })
        }
    }
}

/// LOCK the registry IN SHARE ROW EXCLUSIVE MODE within the toolkit's lock timeout
/// (PostgreSQL's 55P03 beyond it), the caller's own lock_timeout again afterwards.
fn lock_registry(client: &mut SpiClient<'_>, table: &QualifiedName) {
    let prior = crate::catalog::value::<String>(
        client,
        "SELECT pg_catalog.current_setting('lock_timeout')",
        &[],
    )
    .unwrap_or_else(|| "0".into());
    let ms = crate::logic::migrate::LockLimits::DEFAULT.lock_timeout_ms;
    for (sql, args) in [
        (
            "SELECT pg_catalog.set_config('lock_timeout', $1, true)".to_string(),
            vec![format!("{ms}ms")],
        ),
        (
            format!("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE", table.quoted()),
            vec![],
        ),
        (
            "SELECT pg_catalog.set_config('lock_timeout', $1, true)".to_string(),
            vec![prior],
        ),
    ] {
        let args: Vec<_> = args.iter().map(|a| a.as_str().into()).collect();
        client
            .update(&sql, None, &args)
            .or_raise("locking the tenants registry");
    }
}

/// The first column of the first row, or `None` when there is no row.
fn first_value<A: FromDatum + IntoDatum>(t: SpiTupleTable<'_>) -> SpiResult<Option<A>> {
    if t.is_empty() {
        Ok(None)
    } else {
        t.first().get_one()
    }
}

fn load_columns(client: &SpiClient<'_>, relid: pg_sys::Oid) -> Vec<Column> {
    let table = client
        .select(
            "SELECT a.attname::text,
                    a.atttypid = 'pg_catalog.uuid'::pg_catalog.regtype,
                    a.attnotnull,
                    a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> '',
                    a.attgenerated <> '' OR a.attidentity = 'a'
               FROM pg_catalog.pg_attribute a
              WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
              ORDER BY a.attnum",
            None,
            &[relid.into()],
        )
        .or_raise("reading the tenants table's columns");
    let mut cols = Vec::new();
    for row in table {
        cols.push(Column {
            name: row
                .get::<String>(1)
                .or_raise("reading a column name")
                .unwrap_or_default(),
            is_uuid: row
                .get::<bool>(2)
                .or_raise("reading a column type")
                .unwrap_or(false),
            not_null: row
                .get::<bool>(3)
                .or_raise("reading attnotnull")
                .unwrap_or(false),
            has_default: row
                .get::<bool>(4)
                .or_raise("reading atthasdef")
                .unwrap_or(false),
            generated: row
                .get::<bool>(5)
                .or_raise("reading attgenerated")
                .unwrap_or(false),
        });
    }
    cols
}

fn check_columns(table: &QualifiedName, columns: &[Column], plan: &ExtraPlan) {
    for needed in ["id", "name", "slug"] {
        if !columns.iter().any(|c| c.name == needed) {
            raise_full(
                PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
                format!("column \"{needed}\" of tenants table {table} does not exist"),
                Some("ensure_tenants needs the columns id (uuid), name and slug.".into()),
                None,
            );
        }
    }
    if let Some(id) = columns.iter().find(|c| c.name == "id") {
        if !id.is_uuid {
            raise(
                PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
                format!("column \"id\" of tenants table {table} must be of type uuid"),
            );
        }
    }
    for col in plan.columns() {
        match columns.iter().find(|c| c.name == col) {
            None => raise(
                PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
                format!("column \"{col}\" named in extra does not exist in tenants table {table}"),
            ),
            Some(c) if c.generated => raise(
                PgSqlErrorCode::ERRCODE_GENERATED_ALWAYS,
                format!("column \"{col}\" of tenants table {table} is generated and cannot be set through extra"),
            ),
            Some(_) => {}
        }
    }
}

/// A CHECK constraint of the tenants table: name, expression, the columns it reads.
struct Check {
    name: String,
    expr: String,
    columns: String,
}

fn load_checks(client: &SpiClient<'_>, relid: pg_sys::Oid) -> Vec<Check> {
    let table = client
        .select(
            "SELECT c.conname::text,
                    pg_catalog.pg_get_expr(c.conbin, c.conrelid),
                    (SELECT pg_catalog.string_agg(pg_catalog.format('\"%s\"', a.attname), ', ' ORDER BY a.attnum)
                       FROM pg_catalog.pg_attribute a
                      WHERE a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey))
               FROM pg_catalog.pg_constraint c
              WHERE c.conrelid = $1 AND c.contype = 'c'
              ORDER BY c.conname",
            None,
            &[relid.into()],
        )
        .or_raise("reading the tenants table's CHECK constraints");
    let mut out = Vec::new();
    for row in table {
        out.push(Check {
            name: row
                .get::<String>(1)
                .or_raise("reading conname")
                .unwrap_or_default(),
            expr: row
                .get::<String>(2)
                .or_raise("reading a CHECK expression")
                .unwrap_or_default(),
            columns: row
                .get::<String>(3)
                .or_raise("reading CHECK columns")
                .unwrap_or_default(),
        });
    }
    out
}

/// Onboarding: create a tenant in the application's tenants table with `extra`'s
/// column values (the table's NOT NULL columns without default, e.g. VITAL's `type`,
/// must be given; its CHECK constraints are evaluated first so that the error names
/// the column). Everything else (policies, defaults, classification rules, health,
/// usage) takes the new tenant from the registry. Returns its id; a tenant with this
/// slug (and name, and id if given) already present is returned as it is.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn add_tenant(
    name: Option<&str>,
    slug: Option<&str>,
    extra: default!(Option<crate::catalog::JsonArg>, "'{}'"),
    id: default!(Option<Uuid>, "NULL"),
) -> Uuid {
    let (Some(name), Some(slug)) = (name, slug) else {
        raise(
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            "name and slug must not be NULL",
        )
    };
    for (arg, v) in [("name", name), ("slug", slug)] {
        if v.trim().is_empty() {
            raise(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("{arg} must not be empty"),
            );
        }
    }
    let plan = extra_plan(extra, ExtraPlan::single);
    Spi::connect_mut(|client| {
        let text = crate::catalog::require_tenants_table(client);
        let table = match parse_qualified(&text) {
            Ok(t) => t,
            Err(e) => raise(PgSqlErrorCode::ERRCODE_INVALID_NAME, e.to_string()),
        };
        let relid: pg_sys::Oid = crate::catalog::value(
            client,
            "SELECT $1::pg_catalog.regclass::pg_catalog.oid",
            &[text.as_str().into()],
        )
        .unwrap_or(pg_sys::InvalidOid);
        let columns = load_columns(client, relid);
        check_columns(&table, &columns, &plan);
        let checks = load_checks(client, relid);
        // Two calls with one slug at once behave as one after the other (census N06):
        // the second waits for the first to commit, then finds its tenant (the look-up
        // below takes its snapshot after the wait, in READ COMMITTED).
        client
            .update(
                "SELECT pg_catalog.pg_advisory_xact_lock($1::pg_catalog.oid::integer,
                        pg_catalog.hashtext('vital_tenancy.add_tenant ' OPERATOR(pg_catalog.||) $2))",
                None,
                &[relid.into(), slug.into()],
            )
            .or_raise("serialising add_tenant");
        // Without an id, a tenant of this slug is the one asked for (a second call).
        let by_slug: Option<Uuid> = client
            .select(
                &format!("SELECT id FROM {} WHERE slug::text = $1", table.quoted()),
                Some(1),
                &[slug.into()],
            )
            .and_then(first_value)
            .or_raise("looking up a tenant by slug");
        let id = match (id, by_slug) {
            (Some(id), _) => id,
            (None, Some(existing)) => existing,
            (None, None) => {
                crate::catalog::value::<Uuid>(client, "SELECT pg_catalog.gen_random_uuid()", &[])
                    .unwrap_or_else(|| {
                        raise(
                            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                            "gen_random_uuid() returned NULL",
                        )
                    })
            }
        };
        let new = NewTenant {
            id,
            name: name.into(),
            slug: slug.into(),
            keyed_extra: false,
        };
        let row = plan.row_for_new(&id.to_string(), name, slug);
        let (id, _, _, action, detail) = ensure_one(client, &table, &columns, &checks, &new, row);
        if action != "created" && action != "already present" {
            raise_full(
                PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION,
                format!("tenant {id} already exists in {table} with another {}", action.trim_end_matches(" differs")),
                detail,
                Some("add_tenant never changes an existing tenant; update the row yourself or pick another id.".into()),
            );
        }
        id
    })
}

/// A tenant to create: its id, name and slug.
struct NewTenant {
    id: Uuid,
    name: String,
    slug: String,
    /// `extra` may key values by slug (ensure_tenants), or holds this tenant's only
    /// (add_tenant): what the hints of a refused row say.
    keyed_extra: bool,
}

/// Create one tenant with the values of `row` unless a row with its id exists.
fn ensure_one(
    client: &mut SpiClient<'_>,
    table: &QualifiedName,
    columns: &[Column],
    checks: &[Check],
    spec: &NewTenant,
    row: Map<String, Value>,
) -> (Uuid, String, String, String, Option<String>) {
    let id = spec.id;
    let existing = client
        .select(
            &format!(
                "SELECT name::text, slug::text FROM {} WHERE id = $1",
                table.quoted()
            ),
            Some(1),
            &[id.into()],
        )
        .and_then(|t| {
            if t.is_empty() {
                return Ok(None);
            }
            let row = t.first();
            Ok(Some((row.get::<String>(1)?, row.get::<String>(2)?)))
        })
        .or_raise("looking up a tenant by id");
    if let Some((name, slug)) = existing {
        let name = name.unwrap_or_default();
        let slug = slug.unwrap_or_default();
        let (action, detail) = if name != spec.name {
            (
                "name differs",
                Some(format!(
                    "kept existing name \"{name}\" (slug \"{slug}\"); vital_tenancy calls it \"{}\"",
                    spec.name
                )),
            )
        } else if slug != spec.slug {
            (
                "slug differs",
                Some(format!(
                    "kept existing slug \"{slug}\"; vital_tenancy calls it \"{}\"",
                    spec.slug
                )),
            )
        } else {
            ("already present", None)
        };
        return (id, name, slug, action.into(), detail);
    }

    let taken: Option<Uuid> = client
        .select(
            &format!("SELECT id FROM {} WHERE slug::text = $1", table.quoted()),
            Some(1),
            &[spec.slug.as_str().into()],
        )
        .and_then(first_value)
        .or_raise("looking up a tenant by slug");
    if let Some(other) = taken {
        raise_full(
            PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION,
            format!(
                "slug \"{}\" of tenants table {table} is already used by tenant {other}, not by {}",
                spec.slug, spec.id
            ),
            Some(format!(
                "tenant \"{}\" must have id {}; ensure_tenants never changes an existing row's id.",
                spec.name, spec.id
            )),
            Some("Rename the other tenant's slug, or give it the expected id, then run ensure_tenants again.".into()),
        );
    }

    check_required(table, columns, &row, spec);
    let row_json = JsonB(Value::Object(row.clone()));
    check_constraints(client, table, checks, &row_json, spec);

    let cols: Vec<String> = row.keys().map(|k| quote_ident(k)).collect();
    let select: Vec<String> = cols.iter().map(|c| format!("r.{c}")).collect();
    client
        .update(
            &format!(
                "INSERT INTO {qt} ({}) SELECT {} FROM pg_catalog.jsonb_populate_record(NULL::{qt}, $1) r",
                cols.join(", "),
                select.join(", "),
                qt = table.quoted()
            ),
            None,
            &[row_json.into()],
        )
        .or_raise("inserting a tenant");
    (
        id,
        spec.name.clone(),
        spec.slug.clone(),
        "created".into(),
        None,
    )
}

/// A NOT NULL column without default that `extra` leaves empty would fail the insert
/// with a message that does not say how to fix it: say it here.
fn check_required(
    table: &QualifiedName,
    columns: &[Column],
    row: &Map<String, Value>,
    spec: &NewTenant,
) {
    let slug = &spec.slug;
    for col in columns.iter().filter(|c| c.not_null && !c.has_default) {
        if row.get(&col.name).is_none_or(Value::is_null) {
            raise_full(
                PgSqlErrorCode::ERRCODE_NOT_NULL_VIOLATION,
                format!(
                    "cannot create tenant \"{}\" in {table}: column \"{}\" is NOT NULL and has no default",
                    slug, col.name
                ),
                None,
                Some(if spec.keyed_extra {
                    format!(
                        "Pass a value in extra, for every tenant ('{{\"{0}\": ...}}') or for this one ('{{\"{1}\": {{\"{0}\": ...}}}}').",
                        col.name, slug
                    )
                } else {
                    format!("Pass a value in extra: '{{\"{}\": ...}}'.", col.name)
                }),
            );
        }
    }
}

/// Evaluate the table's CHECK constraints against the row before inserting it, so the
/// error can name the column and the tenant rather than only the constraint.
fn check_constraints(
    client: &SpiClient<'_>,
    table: &QualifiedName,
    checks: &[Check],
    row: &JsonB,
    spec: &NewTenant,
) {
    let slug = &spec.slug;
    for check in checks {
        // The expression comes from the catalog (pg_get_expr), never from user input.
        let ok: Option<bool> = client
            .select(
                &format!(
                    "SELECT ({}) IS NOT FALSE FROM pg_catalog.jsonb_populate_record(NULL::{}, $1) r",
                    check.expr,
                    table.quoted()
                ),
                Some(1),
                &[JsonB(row.0.clone()).into()],
            )
            .and_then(first_value)
            .or_raise("evaluating a CHECK constraint");
        if ok == Some(false) {
            raise_full(
                PgSqlErrorCode::ERRCODE_CHECK_VIOLATION,
                format!(
                    "cannot create tenant \"{}\" in {table}: column {} violates check constraint \"{}\"",
                    slug, check.columns, check.name
                ),
                Some(format!("The constraint is CHECK ({}).", check.expr)),
                Some(if spec.keyed_extra {
                    "Pass a valid value in extra, for every tenant or keyed by slug.".into()
                } else {
                    "Pass a valid value in extra.".into()
                }),
            );
        }
    }
}

fn remember_tenants_table(client: &mut SpiClient<'_>, table: &QualifiedName) {
    client
        .update(
            "INSERT INTO vital_tenancy.settings (name, value) VALUES ('tenants_table', $1)
             ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value
             WHERE settings.value IS DISTINCT FROM EXCLUDED.value",
            None,
            &[table.quoted().into()],
        )
        .or_raise("recording the tenants table");
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn count(sql: &str) -> i64 {
        Spi::get_one::<i64>(sql).unwrap().unwrap()
    }

    #[pg_test]
    fn ids_are_the_plan_ids() {
        assert_eq!(
            Spi::get_one::<String>("SELECT vital_tenancy.platform_tenant_id()::text").unwrap(),
            Some("00000000-0000-0000-0000-000000000001".into())
        );
        assert_eq!(
            Spi::get_one::<String>("SELECT vital_tenancy.digital_health_tenant_id()::text")
                .unwrap(),
            Some("11111111-1111-1111-1111-111111111111".into())
        );
        assert_eq!(
            Spi::get_one::<String>("SELECT vital_tenancy.pharma_tenant_id()::text").unwrap(),
            Some("f7aa6fd4-0af9-4706-8b31-034f1f7accda".into())
        );
    }

    #[pg_test]
    fn creates_table_then_is_a_no_op() {
        Spi::run("CREATE SCHEMA vt_t1").unwrap();
        assert_eq!(
            count("SELECT count(*) FROM vital_tenancy.ensure_tenants('vt_t1.tenants') WHERE action = 'created'"),
            3
        );
        assert_eq!(count("SELECT count(*) FROM vt_t1.tenants"), 3);
        assert_eq!(
            count("SELECT count(*) FROM vital_tenancy.ensure_tenants('vt_t1.tenants') WHERE action = 'already present'"),
            3
        );
        assert_eq!(count("SELECT count(*) FROM vt_t1.tenants"), 3);
        assert_eq!(
            Spi::get_one::<String>("SELECT vital_tenancy.tenants_table()::text").unwrap(),
            Some("vt_t1.tenants".into())
        );
    }

    #[pg_test]
    fn existing_row_is_never_changed() {
        Spi::run("CREATE SCHEMA vt_t2; CREATE TABLE vt_t2.tenants (id uuid PRIMARY KEY, name text NOT NULL, slug text UNIQUE NOT NULL)").unwrap();
        Spi::run("INSERT INTO vt_t2.tenants VALUES ('00000000-0000-0000-0000-000000000001', 'VITAL Platform', 'vital-platform')").unwrap();
        assert_eq!(
            Spi::get_one::<String>("SELECT action FROM vital_tenancy.ensure_tenants('vt_t2.tenants') WHERE slug = 'vital-platform'").unwrap(),
            Some("name differs".into())
        );
        assert_eq!(
            Spi::get_one::<String>(
                "SELECT name FROM vt_t2.tenants WHERE id = vital_tenancy.platform_tenant_id()"
            )
            .unwrap(),
            Some("VITAL Platform".into())
        );
    }

    #[pg_test(
        error = "slug \"pharmaceuticals\" of tenants table vt_t3.tenants is already used by tenant 22222222-2222-2222-2222-222222222222, not by f7aa6fd4-0af9-4706-8b31-034f1f7accda"
    )]
    fn slug_taken_by_other_id_is_an_error() {
        Spi::run("CREATE SCHEMA vt_t3; CREATE TABLE vt_t3.tenants (id uuid PRIMARY KEY, name text, slug text UNIQUE)").unwrap();
        Spi::run("INSERT INTO vt_t3.tenants VALUES ('22222222-2222-2222-2222-222222222222', 'Pharma', 'pharmaceuticals')").unwrap();
        Spi::run("SELECT * FROM vital_tenancy.ensure_tenants('vt_t3.tenants')").unwrap();
    }

    #[pg_test(error = "column \"slug\" of tenants table vt_t4.tenants does not exist")]
    fn table_without_slug_is_an_error() {
        Spi::run(
            "CREATE SCHEMA vt_t4; CREATE TABLE vt_t4.tenants (id uuid PRIMARY KEY, name text)",
        )
        .unwrap();
        Spi::run("SELECT * FROM vital_tenancy.ensure_tenants('vt_t4.tenants')").unwrap();
    }

    #[pg_test(
        error = "cannot create tenant \"pharmaceuticals\" in vt_t5.tenants: column \"type\" violates check constraint \"tenants_type_check\""
    )]
    fn check_violation_names_the_column() {
        Spi::run("CREATE SCHEMA vt_t5; CREATE TABLE vt_t5.tenants (id uuid PRIMARY KEY, name text, slug text UNIQUE, type text NOT NULL CHECK (type IN ('platform', 'industry')))").unwrap();
        Spi::run(r#"SELECT * FROM vital_tenancy.ensure_tenants('vt_t5.tenants', '{"type": "industry", "pharmaceuticals": {"type": "pharma"}}')"#).unwrap();
    }
}

/// Protect the application's tenants registry: writes only for its owner (a DBA) and
/// `vital_tenancy_admin` (every other role's INSERT/UPDATE/DELETE/TRUNCATE revoked),
/// and row level security so that a request reads its own tenant's row and
/// Platform's, nothing without a context. Idempotent; migration 006 runs it.
#[pg_extern(volatile)]
#[search_path(pg_catalog, pg_temp)]
fn protect_tenants_table() -> TableIterator<'static, (name!(action, String),)> {
    let mut actions: Vec<String> = Vec::new();
    Spi::connect_mut(|c| {
        let table = crate::catalog::require_tenants_table(c);
        // Role names are quoted by PostgreSQL (format %I); PUBLIC is the grantee 0.
        let revokes: Vec<String> = c
            .select(
                "SELECT pg_catalog.format('REVOKE %s ON %s FROM %s',
                          pg_catalog.string_agg(a.privilege_type, ', ' ORDER BY a.privilege_type), $1::pg_catalog.regclass,
                          CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(a.grantee)) END)
                   FROM pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) a
                  WHERE c.oid = $1::pg_catalog.regclass AND a.grantee <> c.relowner
                    AND a.privilege_type IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE')
                    AND (a.grantee = 0 OR pg_catalog.pg_get_userbyid(a.grantee) <> 'vital_tenancy_admin')
                  GROUP BY a.grantee ORDER BY 1",
                None,
                &[table.as_str().into()],
            )
            .or_raise("reading the registry's privileges")
            .filter_map(|r| r.get::<String>(1).ok().flatten())
            .collect();
        // Every statement through the DDL runner: ENABLE ROW LEVEL SECURITY and the
        // policies take ACCESS EXCLUSIVE on the registry, which the tenant context
        // reads; behind an open reader they give up (55P03) instead of queueing every
        // request behind them (census N02).
        let limits = crate::logic::migrate::LockLimits::DEFAULT;
        for ddl in revokes {
            crate::ddl::run(c, &table, "revoking a registry privilege", &ddl, limits);
            actions.push(ddl);
        }
        for (ddl, what) in [
            (
                format!("GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO vital_tenancy_admin"),
                "granted SELECT, INSERT, UPDATE, DELETE to vital_tenancy_admin",
            ),
            (
                format!("ALTER TABLE {table} ENABLE ROW LEVEL SECURITY"),
                "row level security enabled (not forced: the owner manages the registry)",
            ),
        ] {
            crate::ddl::run(c, &table, "protecting the registry", &ddl, limits);
            actions.push(what.into());
        }
        let existing: Vec<String> = c
            .select(
                "SELECT polname::text FROM pg_catalog.pg_policy WHERE polrelid = $1::pg_catalog.regclass AND polname = ANY ($2)",
                None,
                &[
                    table.as_str().into(),
                    crate::logic::rls::REGISTRY_POLICY_NAMES.to_vec().into(),
                ],
            )
            .or_raise("reading the registry's policies")
            .filter_map(|r| r.get::<String>(1).ok().flatten())
            .collect();
        for name in existing {
            crate::ddl::run(
                c,
                &table,
                "dropping a registry policy",
                &format!("DROP POLICY {} ON {table}", quote_ident(&name)),
                limits,
            );
        }
        let citus = crate::catalog::value::<String>(
            c,
            "SELECT value FROM vital_tenancy.settings WHERE name = 'registry_policy_shape'",
            &[],
        )
        .as_deref()
            == Some("citus");
        let policies = if citus {
            crate::logic::rls::citus_registry_policies(&table)
        } else {
            crate::logic::rls::registry_policies(&table)
        };
        for (name, ddl) in policies {
            crate::ddl::run(c, &table, "creating a registry policy", &ddl, limits);
            actions.push(format!("policy {name}"));
        }
    });
    TableIterator::new(actions.into_iter().map(|a| (a,)))
}

/// The id of the tenant with this slug, or NULL: the one lookup an application needs
/// before sign-in, without opening the registry. SECURITY DEFINER, search_path pinned.
#[pg_extern(stable, parallel_restricted, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn tenant_id_by_slug(slug: &str) -> Option<Uuid> {
    Spi::connect(|c| {
        let table = crate::catalog::require_tenants_table(c);
        c.select(
            &format!("SELECT id FROM {table} WHERE slug = $1"),
            Some(1),
            &[slug.into()],
        )
        .and_then(|t| {
            if t.is_empty() {
                Ok(None)
            } else {
                t.first().get_one::<Uuid>()
            }
        })
        .or_raise("looking up a tenant slug")
    })
}
