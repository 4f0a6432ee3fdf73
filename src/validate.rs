//! Validation set-returning functions over every table with a tenant column (found
//! in the catalog, optionally limited to some schemas), and `validate()` /
//! `assert_valid()` that run them all. They only read.

use crate::errors::{raise, raise_full, OrRaise};
use crate::logic::ident::{quote_ident, quote_literal};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::{JsonB, Uuid};

use crate::catalog::{
    check_schemas, has_column, table_name, tenant_tables as tenanted_tables,
    TenantTable as Tenanted, TENANTS_TABLE,
};

/// The same filter on schemas as `catalog::tenant_tables`, for catalog queries here.
const USER_SCHEMAS: &str = "n.nspname NOT IN ('pg_catalog', 'information_schema', 'vital_tenancy', 'pg_toast')
                            AND n.nspname NOT LIKE 'pg\\_%' AND ($1::text[] IS NULL OR n.nspname = ANY ($1))";

/// One scan per table: rows per tenant value, and whether that tenant exists.
fn tenant_groups(
    c: &SpiClient<'_>,
    t: &Tenanted,
    tenants: &str,
) -> Vec<(Option<Uuid>, Option<String>, bool, i64)> {
    c.select(
        &format!(
            "SELECT g.tenant, tt.name::text, tt.id IS NOT NULL, g.n
               FROM (SELECT x.{col} AS tenant, count(*) AS n FROM {tbl} x GROUP BY 1) g
               LEFT JOIN {tenants} tt ON tt.id = g.tenant ORDER BY g.n DESC",
            col = t.column,
            tbl = t.table
        ),
        None,
        &[],
    )
    .or_raise("counting rows per tenant")
    .map(|r| {
        (
            r.get::<Uuid>(1).ok().flatten(),
            r.get::<String>(2).ok().flatten(),
            r.get::<bool>(3).ok().flatten().unwrap_or(false),
            r.get::<i64>(4).ok().flatten().unwrap_or(0),
        )
    })
    .collect()
}

/// Rows with and without a tenant, per table.
#[pg_extern(stable)]
#[search_path(pg_catalog, pg_temp)]
fn tenant_id_coverage(
    schemas: default!(Option<Vec<Option<String>>>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(table_name, String),
        name!(total, i64),
        name!(with_tenant, i64),
        name!(missing, i64),
    ),
> {
    let schemas = schemas.map(|v| crate::errors::no_null_elements("schemas", v));
    let rows = Spi::connect(|c| {
        let tenants = crate::catalog::require_tenants_table(c);
        tenanted_tables(c, &schemas)
            .into_iter()
            .map(|t| {
                let g = tenant_groups(c, &t, &tenants);
                let total: i64 = g.iter().map(|x| x.3).sum();
                let missing: i64 = g.iter().filter(|x| x.0.is_none()).map(|x| x.3).sum();
                (t.table, total, total - missing, missing)
            })
            .collect::<Vec<_>>()
    });
    TableIterator::new(rows)
}

/// Tenant ids that are not in the tenants table, per table.
#[pg_extern(stable)]
#[search_path(pg_catalog, pg_temp)]
fn orphaned_tenant_refs(
    schemas: default!(Option<Vec<Option<String>>>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(table_name, String),
        name!(tenant_id, Uuid),
        name!(row_count, i64),
    ),
> {
    let schemas = schemas.map(|v| crate::errors::no_null_elements("schemas", v));
    let rows = Spi::connect(|c| {
        let tenants = crate::catalog::require_tenants_table(c);
        let mut out = Vec::new();
        for t in tenanted_tables(c, &schemas) {
            for (id, _, exists, n) in tenant_groups(c, &t, &tenants) {
                if let (Some(id), false) = (id, exists) {
                    out.push((t.table.clone(), id, n));
                }
            }
        }
        out
    });
    TableIterator::new(rows)
}

/// Rows per tenant and table, computed table by table (no cross-table join).
#[pg_extern(stable)]
#[search_path(pg_catalog, pg_temp)]
fn tenant_distribution(
    schemas: default!(Option<Vec<Option<String>>>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(tenant_id, Option<Uuid>),
        name!(tenant_name, Option<String>),
        name!(table_name, String),
        name!(row_count, i64),
    ),
> {
    let schemas = schemas.map(|v| crate::errors::no_null_elements("schemas", v));
    let rows = Spi::connect(|c| {
        let tenants = crate::catalog::require_tenants_table(c);
        let mut out = Vec::new();
        for t in tenanted_tables(c, &schemas) {
            for (id, name, _, n) in tenant_groups(c, &t, &tenants) {
                out.push((id, name, t.table.clone(), n));
            }
        }
        out
    });
    TableIterator::new(rows)
}

/// A reference between two tables: a foreign key or a declared one.
struct Reference {
    child: String,
    child_cols: Vec<String>,
    parent: String,
    parent_cols: Vec<String>,
    /// Declared references match any of the parent columns (`agent_id` = id or name).
    any_of: bool,
}

fn references(c: &SpiClient<'_>, schemas: &Option<Vec<String>>) -> Vec<Reference> {
    if let Some(list) = schemas {
        check_schemas(c, list);
    }
    let mut out: Vec<Reference> = c
        .select(
            &format!(
                "SELECT co.conrelid::pg_catalog.regclass::pg_catalog.text,
                        ARRAY(SELECT pg_catalog.quote_ident(a.attname) FROM unnest(co.conkey) WITH ORDINALITY k(n, i)
                                JOIN pg_catalog.pg_attribute a ON a.attrelid = co.conrelid AND a.attnum = k.n ORDER BY k.i),
                        co.confrelid::pg_catalog.regclass::pg_catalog.text,
                        ARRAY(SELECT pg_catalog.quote_ident(a.attname) FROM unnest(co.confkey) WITH ORDINALITY k(n, i)
                                JOIN pg_catalog.pg_attribute a ON a.attrelid = co.confrelid AND a.attnum = k.n ORDER BY k.i)
                   FROM pg_catalog.pg_constraint co
                   JOIN pg_catalog.pg_class c ON c.oid = co.conrelid
                   JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                  WHERE co.contype = 'f' AND {USER_SCHEMAS}
                    AND co.confrelid IS DISTINCT FROM {TENANTS_TABLE}
                  ORDER BY 1, 2"
            ),
            None,
            &[schemas.clone().into()],
        )
        .or_raise("listing foreign keys")
        .map(|r| Reference {
            child: r.get::<String>(1).ok().flatten().unwrap_or_default(),
            child_cols: r.get::<Vec<String>>(2).ok().flatten().unwrap_or_default(),
            parent: r.get::<String>(3).ok().flatten().unwrap_or_default(),
            parent_cols: r.get::<Vec<String>>(4).ok().flatten().unwrap_or_default(),
            any_of: false,
        })
        .collect();
    let declared = c
        .select(
            &format!(
                "SELECT d.child::pg_catalog.text, pg_catalog.quote_ident(d.child_column), d.parent::pg_catalog.text,
                        ARRAY(SELECT pg_catalog.quote_ident(x) FROM unnest(d.parent_columns) x)
                   FROM vital_tenancy.declared_references d
                   JOIN pg_catalog.pg_class c ON c.oid = d.child
                   JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                  WHERE {USER_SCHEMAS}
                    -- A declaration 0.2.0 accepted on an index or a composite type is
                    -- not read (declared_problems() reports it) rather than failing
                    -- every check (census N03).
                    AND c.relkind IN ('r', 'p')
                    AND EXISTS (SELECT 1 FROM pg_catalog.pg_class pc WHERE pc.oid = d.parent AND pc.relkind IN ('r', 'p'))
                  ORDER BY 1, 2"
            ),
            None,
            &[schemas.clone().into()],
        )
        .or_raise("listing declared references");
    for r in declared {
        out.push(Reference {
            child: r.get::<String>(1).ok().flatten().unwrap_or_default(),
            child_cols: vec![r.get::<String>(2).ok().flatten().unwrap_or_default()],
            parent: r.get::<String>(3).ok().flatten().unwrap_or_default(),
            parent_cols: r.get::<Vec<String>>(4).ok().flatten().unwrap_or_default(),
            any_of: true,
        });
    }
    out
}

/// The join condition between child `x` and parent `p` of a reference.
fn match_condition(r: &Reference) -> String {
    if r.any_of {
        let col = &r.child_cols[0];
        let parts: Vec<String> = r
            .parent_cols
            .iter()
            .map(|p| format!("p.{p}::text = x.{col}::text"))
            .collect();
        format!("({})", parts.join(" OR "))
    } else {
        r.child_cols
            .iter()
            .zip(&r.parent_cols)
            .map(|(c, p)| format!("p.{p} = x.{c}"))
            .collect::<Vec<_>>()
            .join(" AND ")
    }
}

fn child_not_null(r: &Reference) -> String {
    r.child_cols
        .iter()
        .map(|c| format!("x.{c} IS NOT NULL"))
        .collect::<Vec<_>>()
        .join(" AND ")
}

fn key_expr(r: &Reference) -> String {
    if r.child_cols.len() == 1 {
        format!("x.{}::text", r.child_cols[0])
    } else {
        format!(
            "({})::text",
            r.child_cols
                .iter()
                .map(|c| format!("x.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

type RefRow = (String, String, String, i64, Vec<String>);

fn orphans(c: &SpiClient<'_>, schemas: &Option<Vec<String>>) -> Vec<RefRow> {
    references(c, schemas)
        .into_iter()
        .map(|r| {
            let row = c
                .select(
                    &format!(
                        "SELECT count(*), (pg_catalog.array_agg(k ORDER BY k))[1:5]
                           FROM (SELECT {key} AS k FROM {child} x
                                  WHERE {nn} AND NOT EXISTS (SELECT 1 FROM {parent} p WHERE {cond})) s",
                        key = key_expr(&r),
                        child = r.child,
                        nn = child_not_null(&r),
                        parent = r.parent,
                        cond = match_condition(&r)
                    ),
                    Some(1),
                    &[],
                )
                .or_raise("counting orphaned references");
            let f = row.first();
            (
                r.child.clone(),
                r.child_cols.join(", "),
                r.parent.clone(),
                f.get::<i64>(1).ok().flatten().unwrap_or(0),
                f.get::<Vec<String>>(2).ok().flatten().unwrap_or_default(),
            )
        })
        .collect()
}

/// For every foreign key (NOT VALID ones included) and every declared reference:
/// child rows whose parent does not exist.
#[pg_extern(stable)]
#[search_path(pg_catalog, pg_temp)]
fn orphaned_references(
    schemas: default!(Option<Vec<Option<String>>>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(table_name, String),
        name!(column_name, String),
        name!(referenced_table, String),
        name!(orphan_count, i64),
        name!(sample_keys, Vec<String>),
    ),
> {
    let schemas = schemas.map(|v| crate::errors::no_null_elements("schemas", v));
    TableIterator::new(Spi::connect(|c| orphans(c, &schemas)))
}

fn tenant_column_of(c: &SpiClient<'_>, table: &str) -> Option<String> {
    c.select(
        "SELECT pg_catalog.quote_ident(a.attname) FROM pg_catalog.pg_attribute a
           LEFT JOIN vital_tenancy.rls_tables r ON r.tbl = a.attrelid
          WHERE a.attrelid = $1::pg_catalog.regclass AND a.attnum > 0 AND NOT a.attisdropped
            AND a.attname = COALESCE(r.tenant_column, 'tenant_id')
            AND a.atttypid = 'pg_catalog.uuid'::pg_catalog.regtype",
        Some(1),
        &[table.into()],
    )
    .and_then(|t| {
        if t.is_empty() {
            Ok(None)
        } else {
            t.first().get_one()
        }
    })
    .or_raise("finding a tenant column")
}

fn cross_tenant(c: &SpiClient<'_>, schemas: &Option<Vec<String>>) -> Vec<RefRow> {
    let mut out = Vec::new();
    for r in references(c, schemas) {
        let (Some(ct), Some(pt)) = (
            tenant_column_of(c, &r.child),
            tenant_column_of(c, &r.parent),
        ) else {
            continue;
        };
        let row = c
            .select(
                &format!(
                    "SELECT count(*), (pg_catalog.array_agg(k ORDER BY k))[1:5]
                       FROM (SELECT {key} AS k FROM {child} x JOIN {parent} p ON {cond}
                              WHERE p.{pt} IS DISTINCT FROM x.{ct}
                                AND p.{pt} IS DISTINCT FROM vital_tenancy.platform_tenant_id()) s",
                    key = key_expr(&r),
                    child = r.child,
                    parent = r.parent,
                    cond = match_condition(&r)
                ),
                Some(1),
                &[],
            )
            .or_raise("counting cross-tenant references");
        let f = row.first();
        out.push((
            r.child.clone(),
            r.child_cols.join(", "),
            r.parent.clone(),
            f.get::<i64>(1).ok().flatten().unwrap_or(0),
            f.get::<Vec<String>>(2).ok().flatten().unwrap_or_default(),
        ));
    }
    out
}

/// Child rows whose tenant differs from their parent's, where the parent is not
/// Platform: a leak that RLS on each table alone does not catch.
#[pg_extern(stable)]
#[search_path(pg_catalog, pg_temp)]
fn cross_tenant_references(
    schemas: default!(Option<Vec<Option<String>>>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(table_name, String),
        name!(column_name, String),
        name!(referenced_table, String),
        name!(row_count, i64),
        name!(sample_keys, Vec<String>),
    ),
> {
    let schemas = schemas.map(|v| crate::errors::no_null_elements("schemas", v));
    TableIterator::new(Spi::connect(|c| cross_tenant(c, &schemas)))
}

/// Declare a reference that has no foreign key (e.g. `messages.agent_id` is text and
/// holds an agent's id or name), so the reference checks cover it.
#[pg_extern(volatile)]
#[search_path(pg_catalog, pg_temp)]
fn declare_reference(
    child: crate::catalog::Regclass,
    child_column: &str,
    parent: crate::catalog::Regclass,
    parent_columns: default!(Vec<Option<String>>, "ARRAY['id']"),
) {
    let parent_columns = crate::errors::no_null_elements("parent_columns", parent_columns);
    let (coid, poid) = (child.oid(), parent.oid());
    if parent_columns.is_empty() {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "parent_columns must not be empty",
        );
    }
    Spi::connect_mut(|c| {
        // Only the application's tables (the checks skip every other schema, so a
        // reference declared there would never be checked); a parent may be the registry.
        crate::catalog::require_application_table(c, coid, &table_name(c, coid));
        crate::catalog::require_application_table_or(c, poid, &table_name(c, poid), true);
        if !has_column(c, coid, child_column) {
            raise(
                PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
                format!(
                    "column \"{child_column}\" of table {} does not exist",
                    table_name(c, coid)
                ),
            );
        }
        for p in &parent_columns {
            if !has_column(c, poid, p) {
                raise(
                    PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
                    format!(
                        "column \"{p}\" of table {} does not exist",
                        table_name(c, poid)
                    ),
                );
            }
        }
        c.update(
            "INSERT INTO vital_tenancy.declared_references (child, child_column, parent, parent_columns)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (child, child_column) DO UPDATE SET parent = EXCLUDED.parent, parent_columns = EXCLUDED.parent_columns",
            None,
            &[coid.into(), child_column.into(), poid.into(), parent_columns.clone().into()],
        )
        .or_raise("declaring the reference");
    });
}

/// Keys that occur more than once within one tenant.
#[pg_extern(stable)]
#[search_path(pg_catalog, pg_temp)]
fn duplicates(
    tbl: crate::catalog::Regclass,
    columns: Vec<Option<String>>,
) -> TableIterator<
    'static,
    (
        name!(tenant_id, Option<Uuid>),
        name!(key, JsonB),
        name!(row_count, i64),
    ),
> {
    let columns = crate::errors::no_null_elements("columns", columns);
    let oid = tbl.oid();
    let rows = Spi::connect(|c| duplicate_rows(c, oid, &columns));
    TableIterator::new(rows)
}

fn duplicate_rows(
    c: &SpiClient<'_>,
    oid: pg_sys::Oid,
    columns: &[String],
) -> Vec<(Option<Uuid>, JsonB, i64)> {
    let table = table_name(c, oid);
    if columns.is_empty() {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "columns must name at least one column",
        );
    }
    let Some(tcol) = tenant_column_of(c, &table) else {
        raise(
            PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
            format!("table {table} has no tenant column"),
        )
    };
    for col in columns {
        if !has_column(c, oid, col) {
            raise(
                PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
                format!("column \"{col}\" of table {table} does not exist"),
            );
        }
    }
    // jsonb_build_object takes at most 100 arguments: 50 columns per call, joined by ||.
    let pairs: Vec<String> = columns
        .chunks(50)
        .map(|chunk| {
            let args: Vec<String> = chunk
                .iter()
                .map(|col| format!("{}, x.{}", quote_literal(col), quote_ident(col)))
                .collect();
            format!("pg_catalog.jsonb_build_object({})", args.join(", "))
        })
        .collect();
    let group: Vec<String> = columns
        .iter()
        .map(|col| format!("x.{}", quote_ident(col)))
        .collect();
    c.select(
        &format!(
            "SELECT x.{tcol}, {}, count(*) FROM {table} x
              GROUP BY x.{tcol}, {} HAVING count(*) > 1 ORDER BY 3 DESC, 2::text",
            pairs.join(" || "),
            group.join(", ")
        ),
        None,
        &[],
    )
    .or_raise("finding duplicates")
    .map(|r| {
        (
            r.get::<Uuid>(1).ok().flatten(),
            r.get::<JsonB>(2)
                .ok()
                .flatten()
                .unwrap_or(JsonB(serde_json::Value::Null)),
            r.get::<i64>(3).ok().flatten().unwrap_or(0),
        )
    })
    .collect()
}

/// Tools whose `category` text disagrees with the name of their `category_id`.
#[pg_extern(stable)]
#[search_path(pg_catalog, pg_temp)]
fn category_mismatches() -> TableIterator<
    'static,
    (
        name!(tool_id, String),
        name!(category, Option<String>),
        name!(category_name, Option<String>),
    ),
> {
    TableIterator::new(Spi::connect(category_mismatch_rows))
}

fn category_mismatch_rows(c: &SpiClient<'_>) -> Vec<(String, Option<String>, Option<String>)> {
    let ready: bool = c
        .select(
            "SELECT pg_catalog.to_regclass('public.tools') IS NOT NULL AND pg_catalog.to_regclass('public.tool_categories') IS NOT NULL
                AND EXISTS (SELECT 1 FROM pg_catalog.pg_attribute WHERE attrelid = pg_catalog.to_regclass('public.tools') AND attname = 'category' AND NOT attisdropped)
                AND EXISTS (SELECT 1 FROM pg_catalog.pg_attribute WHERE attrelid = pg_catalog.to_regclass('public.tools') AND attname = 'category_id' AND NOT attisdropped)",
            Some(1),
            &[],
        )
        .and_then(|t| t.first().get_one())
        .or_raise("checking the tools tables")
        .unwrap_or(false);
    if !ready {
        return Vec::new();
    }
    c.select(
        "SELECT t.id::text, t.category::text, c.name::text FROM public.tools t
           LEFT JOIN public.tool_categories c ON c.id = t.category_id
          WHERE t.category::text IS DISTINCT FROM c.name::text ORDER BY 1",
        None,
        &[],
    )
    .or_raise("comparing tool categories")
    .map(|r| {
        (
            r.get::<String>(1).ok().flatten().unwrap_or_default(),
            r.get::<String>(2).ok().flatten(),
            r.get::<String>(3).ok().flatten(),
        )
    })
    .collect()
}

fn rls_problems(c: &SpiClient<'_>, schemas: &Option<Vec<String>>) -> Vec<(String, String)> {
    let tables: Vec<String> = tenanted_tables(c, schemas)
        .into_iter()
        .map(|t| t.table)
        .collect();
    c.select(
        "SELECT table_name, concat_ws(', ',
                    CASE WHEN NOT rls_enabled THEN 'row level security is off' END,
                    CASE WHEN rls_enabled AND NOT rls_forced THEN 'not forced (the owner bypasses it)' END,
                    CASE WHEN policies = 0 THEN 'no policies' END,
                    CASE WHEN NOT tenant_index THEN 'no index on the tenant column' END,
                    CASE WHEN policies > 0 AND tenant_index AND NOT index_usable_policy THEN 'a policy cannot use the tenant index' END)
           FROM vital_tenancy.rls_status() WHERE table_name = ANY ($1)
            AND NOT (rls_enabled AND rls_forced AND policies > 0 AND tenant_index AND index_usable_policy)",
        None,
        &[tables.into()],
    )
    .or_raise("reading rls_status")
    .map(|r| (r.get::<String>(1).ok().flatten().unwrap_or_default(), r.get::<String>(2).ok().flatten().unwrap_or_default()))
    .chain(registry_problems(c))
    .collect()
}

/// The tenants registry listable by every role with SELECT (no row level security), or
/// writable by roles other than its owner and vital_tenancy_admin (superusers aside).
fn registry_problems(c: &SpiClient<'_>) -> Vec<(String, String)> {
    c.select(
        &format!(
            "WITH r AS (SELECT c.oid, c.oid::pg_catalog.regclass::pg_catalog.text AS name, c.relrowsecurity, c.relowner, c.relacl
                      FROM pg_catalog.pg_class c
                     WHERE c.oid = {TENANTS_TABLE}),
              g AS (SELECT r.name, a.privilege_type, a.grantee,
                           CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_catalog.pg_get_userbyid(a.grantee) END AS role
                      FROM r, pg_catalog.aclexplode(r.relacl) a
                     WHERE a.grantee <> r.relowner
                       AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles x WHERE x.oid = a.grantee AND (x.rolsuper OR x.rolname = 'vital_tenancy_admin')))
         SELECT r.name, 'row level security is off on the tenants registry: every role with SELECT on it lists every tenant (run vital_tenancy.protect_tenants_table())'
           FROM r WHERE NOT r.relrowsecurity AND EXISTS (SELECT 1 FROM g WHERE g.privilege_type = 'SELECT')
         UNION ALL
         SELECT g.name, pg_catalog.format('the tenants registry is writable by %s: only DBAs and vital_tenancy_admin should write it (run vital_tenancy.protect_tenants_table())',
                                          pg_catalog.string_agg(DISTINCT g.role, ', '))
           FROM g WHERE g.privilege_type IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE') GROUP BY g.name"
        ),
        None,
        &[],
    )
    .or_raise("reading the tenants registry's protection")
    .map(|r| (r.get::<String>(1).ok().flatten().unwrap_or_default(), r.get::<String>(2).ok().flatten().unwrap_or_default()))
    .collect()
}

/// A role (superusers aside) that holds privileges on a tenant table and bypasses row
/// level security: the boundary does not apply to its requests.
pub(crate) struct Bypass {
    pub table: String,
    pub role: String,
    pub privileges: String,
}

impl Bypass {
    fn problem(&self) -> String {
        let role = crate::logic::ident::quote_ident(&self.role);
        format!(
            "role {role} bypasses row level security (BYPASSRLS) and holds {} on it: the tenant boundary does not apply to its requests; run the application's server path as vital_tenancy_service instead, then ALTER ROLE {role} NOBYPASSRLS or revoke its privileges",
            self.privileges
        )
    }
}

/// Every (tenant table, role) with a `Bypass`, by table and role.
pub(crate) fn bypass_roles(c: &SpiClient<'_>, schemas: &Option<Vec<String>>) -> Vec<Bypass> {
    let tables: Vec<String> = tenanted_tables(c, schemas)
        .into_iter()
        .map(|t| t.table)
        .collect();
    c.select(
        "SELECT t, r.rolname::text, p.privs
           FROM pg_catalog.unnest($1::text[]) t
           CROSS JOIN pg_catalog.pg_roles r
           CROSS JOIN LATERAL (
                SELECT pg_catalog.string_agg(priv, ', ' ORDER BY o) AS privs
                  FROM pg_catalog.unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE']) WITH ORDINALITY x(priv, o)
                 WHERE pg_catalog.has_table_privilege(r.oid, t::pg_catalog.regclass, priv)) p
          WHERE r.rolbypassrls AND NOT r.rolsuper AND p.privs IS NOT NULL
          ORDER BY t, r.rolname",
        None,
        &[tables.into()],
    )
    .or_raise("reading roles that bypass row level security")
    .map(|r| Bypass {
        table: r.get::<String>(1).ok().flatten().unwrap_or_default(),
        role: r.get::<String>(2).ok().flatten().unwrap_or_default(),
        privileges: r.get::<String>(3).ok().flatten().unwrap_or_default(),
    })
    .collect()
}

/// Tables with a tenant column whose RLS is off, not forced, without policies, or
/// whose policy cannot use an index; and the roles that bypass RLS on them.
#[pg_extern(stable)]
#[search_path(pg_catalog, pg_temp)]
fn rls_coverage(
    schemas: default!(Option<Vec<Option<String>>>, "NULL"),
) -> TableIterator<'static, (name!(table_name, String), name!(problem, String))> {
    let schemas = schemas.map(|v| crate::errors::no_null_elements("schemas", v));
    TableIterator::new(Spi::connect(|c| {
        let mut rows = rls_problems(c, &schemas);
        rows.extend(
            bypass_roles(c, &schemas)
                .into_iter()
                .map(|b| (b.table.clone(), b.problem())),
        );
        rows
    }))
}

type CheckRow = (String, String, Option<String>, i64, Option<String>);

fn run_checks(c: &SpiClient<'_>, schemas: &Option<Vec<String>>) -> Vec<CheckRow> {
    let mut out: Vec<CheckRow> = Vec::new();
    let push_check =
        |out: &mut Vec<CheckRow>, check: &str, severity: &str, rows: Vec<(String, i64, String)>| {
            let failing: Vec<_> = rows.into_iter().filter(|r| r.1 > 0).collect();
            if failing.is_empty() {
                out.push((
                    check.into(),
                    severity.into(),
                    None,
                    0,
                    Some("passed".into()),
                ));
            }
            for (t, n, d) in failing {
                out.push((check.into(), severity.into(), Some(t), n, Some(d)));
            }
        };
    // A schema list that leaves nothing to look at would report every check passed (F06).
    if let Some(list) = schemas {
        let excluded = |s: &String| {
            ["pg_catalog", "information_schema", "vital_tenancy"].contains(&s.as_str())
                || s.starts_with("pg_")
        };
        if list.iter().all(excluded) {
            raise(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!(
                    "schemas {{{}}} leave nothing to validate: give application schemas, or NULL for all",
                    list.join(",")
                ),
            );
        }
    }
    let tenants = crate::catalog::require_tenants_table(c);
    let tables = tenanted_tables(c, schemas);
    // A column named like the tenant column but not a uuid is not one: nothing checks
    // that table (F07), so say so.
    let wrong_type: Vec<(String, i64, String)> =
        crate::catalog::non_uuid_tenant_columns(c, schemas)
            .into_iter()
            .map(|(t, col, ty)| {
                (
                    t,
                    1,
                    format!(
                        "column {} is {ty}, not uuid: the table is not treated as a tenant table",
                        quote_ident(&col)
                    ),
                )
            })
            .collect();
    push_check(&mut out, "tenant_column_type", "warning", wrong_type);
    let mut missing = Vec::new();
    let mut orphan_ids = Vec::new();
    for t in &tables {
        let g = tenant_groups(c, t, &tenants);
        let m: i64 = g.iter().filter(|x| x.0.is_none()).map(|x| x.3).sum();
        missing.push((t.table.clone(), m, format!("{m} rows without a tenant")));
        let bad: Vec<&(Option<Uuid>, Option<String>, bool, i64)> =
            g.iter().filter(|x| x.0.is_some() && !x.2).collect();
        let n: i64 = bad.iter().map(|x| x.3).sum();
        let ids: Vec<String> = bad
            .iter()
            .filter_map(|x| x.0.map(|u| u.to_string()))
            .take(5)
            .collect();
        orphan_ids.push((
            t.table.clone(),
            n,
            format!("tenant ids not in {tenants}: {}", ids.join(", ")),
        ));
    }
    push_check(&mut out, "tenant_id_coverage", "blocking", missing);
    push_check(&mut out, "orphaned_tenant_refs", "blocking", orphan_ids);
    let rows = orphans(c, schemas)
        .into_iter()
        .map(|(t, col, p, n, keys)| (t, n, format!("({col}) -> {p}: e.g. {}", keys.join(", "))))
        .collect();
    push_check(&mut out, "orphaned_references", "blocking", rows);
    let rows = cross_tenant(c, schemas)
        .into_iter()
        .map(|(t, col, p, n, keys)| {
            (
                t,
                n,
                format!("({col}) -> {p} of another tenant: e.g. {}", keys.join(", ")),
            )
        })
        .collect();
    push_check(&mut out, "cross_tenant_references", "blocking", rows);
    let mut dups = Vec::new();
    for t in &tables {
        let oid = crate::catalog::value::<pg_sys::Oid>(
            c,
            "SELECT $1::pg_catalog.regclass::pg_catalog.oid",
            &[t.table.as_str().into()],
        )
        .unwrap_or(pg_sys::InvalidOid);
        let has_name = has_column(c, oid, "name");
        if has_name {
            let d = duplicate_rows(c, oid, &["name".to_string()]);
            let n: i64 = d.iter().map(|x| x.2).sum();
            dups.push((
                t.table.clone(),
                n,
                format!("{} names repeated within a tenant", d.len()),
            ));
        }
    }
    push_check(&mut out, "duplicate_names", "warning", dups);
    let mism = category_mismatch_rows(c);
    push_check(
        &mut out,
        "category_mismatches",
        "warning",
        vec![(
            "public.tools".into(),
            mism.len() as i64,
            "tools.category differs from tool_categories.name".into(),
        )],
    );
    let rls: Vec<(String, i64, String)> = rls_problems(c, schemas)
        .into_iter()
        .map(|(t, p)| (t, 1, p))
        .collect();
    push_check(&mut out, "rls_coverage", "warning", rls);
    let mut per_table: Vec<(String, i64, String)> = Vec::new();
    for b in bypass_roles(c, schemas) {
        let (t, p) = (b.table.clone(), b.problem());
        match per_table.last_mut() {
            Some(last) if last.0 == t => {
                last.1 += 1;
                last.2 = format!("{}; {p}", last.2);
            }
            _ => per_table.push((t, 1, p)),
        }
    }
    push_check(&mut out, "rls_bypass_roles", "warning", per_table);
    out
}

// pgrx needs the name!() tuple spelled out in the signature (it rejects a type alias).
#[allow(clippy::type_complexity)]
/// Every check: (check, severity, table, failing, detail); `blocking` failures stop a
/// migration, `warning`s are reported. A passed check is one row with failing 0.
#[pg_extern(stable)]
#[search_path(pg_catalog, pg_temp)]
fn validate(
    schemas: default!(Option<Vec<Option<String>>>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(check_name, String),
        name!(severity, String),
        name!(table_name, Option<String>),
        name!(failing, i64),
        name!(detail, Option<String>),
    ),
> {
    let schemas = schemas.map(|v| crate::errors::no_null_elements("schemas", v));
    TableIterator::new(Spi::connect(|c| run_checks(c, &schemas)))
}

/// Raise one ERROR listing every blocking failure (what migration 005 calls).
#[pg_extern(stable)]
#[search_path(pg_catalog, pg_temp)]
fn assert_valid(schemas: default!(Option<Vec<Option<String>>>, "NULL")) {
    let schemas = schemas.map(|v| crate::errors::no_null_elements("schemas", v));
    let failures: Vec<CheckRow> = Spi::connect(|c| run_checks(c, &schemas))
        .into_iter()
        .filter(|r| r.1 == "blocking" && r.3 > 0)
        .collect();
    if !failures.is_empty() {
        let detail: Vec<String> = failures
            .iter()
            .map(|(check, _, t, n, d)| {
                format!(
                    "{check}: {} — {n} failing ({})",
                    t.clone().unwrap_or_default(),
                    d.clone().unwrap_or_default()
                )
            })
            .collect();
        raise_full(
            PgSqlErrorCode::ERRCODE_CHECK_VIOLATION,
            format!(
                "vital_tenancy validation failed: {} blocking problem(s)",
                failures.len()
            ),
            Some(detail.join("\n")),
            Some("SELECT * FROM vital_tenancy.validate() shows every check.".into()),
        );
    }
}
