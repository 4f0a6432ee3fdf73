//! Row-level security: `enable_tenant_rls()` / `disable_tenant_rls()` and
//! `rls_status()`. The policy text itself is `logic::rls`.
//!
//! Every table enabled is recorded in `vital_tenancy.rls_tables` with what was there
//! before (column default, RLS flags, whether the extension created the index), so
//! that `disable_tenant_rls()` undoes exactly what `enable_tenant_rls()` did, and a
//! second `enable_tenant_rls()` replaces only the extension's own policies.

use crate::errors::{raise, raise_full, OrRaise};
use crate::logic::ident::{display_ident, quote_ident};
use crate::logic::migrate::LockLimits;
use crate::logic::rls::{citus_policies, policies, CITUS_POLICY_NAMES, POLICY_NAMES};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;

/// What the catalog says about a table and its tenant column.
struct Target {
    oid: pg_sys::Oid,
    /// regclass text under the pinned search_path: schema-qualified and quoted.
    sql_name: String,
    column: String,
    attnum: i16,
}

fn target(c: &SpiClient<'_>, oid: pg_sys::Oid, column: &str) -> Target {
    let row = c
        .select(
            "SELECT $1::pg_catalog.regclass::pg_catalog.text, c.relkind::text
               FROM pg_catalog.pg_class c WHERE c.oid = $1",
            Some(1),
            &[oid.into()],
        )
        .or_raise("reading the table");
    let first = row.first();
    let sql_name: String = first
        .get(1)
        .or_raise("reading the table name")
        .unwrap_or_default();
    let kind: String = first.get(2).or_raise("reading relkind").unwrap_or_default();
    if kind != "r" && kind != "p" {
        raise(
            PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            format!("{sql_name} is not a table; tenant RLS applies to tables"),
        );
    }
    crate::catalog::require_application_table(c, oid, &sql_name);
    let col = c
        .select(
            "SELECT a.attnum, a.atttypid = 'pg_catalog.uuid'::pg_catalog.regtype
               FROM pg_catalog.pg_attribute a
              WHERE a.attrelid = $1 AND a.attname = $2 AND a.attnum > 0 AND NOT a.attisdropped",
            Some(1),
            &[oid.into(), column.into()],
        )
        .or_raise("reading the tenant column");
    if col.is_empty() {
        raise(
            PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
            format!(
                "column {} of table {sql_name} does not exist",
                display_ident(column)
            ),
        );
    }
    let first = col.first();
    let attnum: i16 = first.get(1).or_raise("reading attnum").unwrap_or_default();
    if first.get::<bool>(2).or_raise("reading the column type") != Some(true) {
        raise(
            PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
            format!(
                "tenant column {} of table {sql_name} must be of type uuid",
                display_ident(column)
            ),
        );
    }
    Target {
        oid,
        sql_name,
        column: column.to_string(),
        attnum,
    }
}

/// Drop the extension's policies on a table (and only those).
fn drop_own_policies(c: &mut SpiClient<'_>, oid: pg_sys::Oid, sql_name: &str) {
    let existing: Vec<String> = c
        .select(
            "SELECT polname::text FROM pg_catalog.pg_policy WHERE polrelid = $1 AND polname = ANY ($2)",
            None,
            &[
                oid.into(),
                [POLICY_NAMES.as_slice(), CITUS_POLICY_NAMES.as_slice()]
                    .concat()
                    .into(),
            ],
        )
        .or_raise("reading the table's policies")
        .filter_map(|r| r.get::<String>(1).ok().flatten())
        .collect();
    for name in existing {
        crate::ddl::run(
            c,
            sql_name,
            "dropping a policy",
            &format!("DROP POLICY {} ON {sql_name}", quote_ident(&name)),
            LockLimits::DEFAULT,
        );
    }
}

/// Put back the application's policies `citus_safe_policies()` folded or set aside.
fn restore_originals(c: &mut SpiClient<'_>, oid: pg_sys::Oid, sql_name: &str) -> Vec<String> {
    // 0.2.0's table: absent while a database's SQL is still 0.1.0's.
    let present: Option<bool> = crate::catalog::value(
        c,
        "SELECT pg_catalog.to_regclass('vital_tenancy.originals') IS NOT NULL",
        &[],
    );
    if present != Some(true) {
        return Vec::new();
    }
    let rows: Vec<(String, String)> = c
        .select(
            "SELECT name::text, definition FROM vital_tenancy.originals WHERE tbl = $1 AND kind = 'policy' ORDER BY name",
            None,
            &[oid.into()],
        )
        .or_raise("reading policy_originals")
        .filter_map(|r| Some((r.get::<String>(1).ok().flatten()?, r.get::<String>(2).ok().flatten()?)))
        .collect();
    let mut out = Vec::new();
    for (policy, definition) in rows {
        for name in [policy.clone(), crate::logic::rls::read_policy_name(&policy)] {
            crate::ddl::run(
                c,
                sql_name,
                "dropping a folded policy",
                &format!("DROP POLICY IF EXISTS {} ON {sql_name}", quote_ident(&name)),
                LockLimits::DEFAULT,
            );
        }
        // The definition is the catalog's own deparsed text, kept when it was changed.
        crate::ddl::run(
            c,
            sql_name,
            "restoring a policy",
            &definition,
            LockLimits::DEFAULT,
        );
        out.push(format!("policy {} restored", display_ident(&policy)));
    }
    c.update(
        "DELETE FROM vital_tenancy.originals WHERE tbl = $1 AND kind = 'policy'",
        None,
        &[oid.into()],
    )
    .or_raise("forgetting the policy originals");
    out
}

/// Whether the table has permissive policies other than the extension's own.
fn has_own_permissive_policies(c: &SpiClient<'_>, oid: pg_sys::Oid) -> bool {
    c.select(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_policy
                         WHERE polrelid = $1 AND polpermissive AND polname NOT LIKE 'vt\\_%')",
        Some(1),
        &[oid.into()],
    )
    .and_then(|t| t.first().get_one::<bool>())
    .or_raise("reading the table's policies")
    .unwrap_or(false)
}

/// A valid index whose first key column is the tenant column.
fn tenant_index(c: &SpiClient<'_>, oid: pg_sys::Oid, attnum: i16) -> Option<String> {
    c.select(
        "SELECT i.indexrelid::pg_catalog.regclass::pg_catalog.text FROM pg_catalog.pg_index i
          WHERE i.indrelid = $1 AND i.indisvalid AND i.indkey[0] = $2 ORDER BY i.indexrelid LIMIT 1",
        Some(1),
        &[oid.into(), attnum.into()],
    )
    .and_then(|t| if t.is_empty() { Ok(None) } else { t.first().get_one::<String>() })
    .or_raise("looking for a tenant index")
}

/// Replace the extension's policies on a table with the current definition
/// (`logic::rls::policies`); the application's own policies are left alone.
fn apply_policies(c: &mut SpiClient<'_>, t: &Target, shared: bool) -> Vec<String> {
    let col = quote_ident(&t.column);
    let mut actions = Vec::new();
    drop_own_policies(c, t.oid, &t.sql_name);
    let grant = !has_own_permissive_policies(c, t.oid);
    let citus = crate::catalog::value::<String>(
        c,
        // As jsonb: the column is 0.2.0's, and a database whose SQL is still 0.1.0's
        // (before ALTER EXTENSION UPDATE) runs this library too.
        "SELECT pg_catalog.to_jsonb(r) ->> 'policy_shape' FROM vital_tenancy.rls_tables r WHERE r.tbl = $1",
        &[t.oid.into()],
    )
    .as_deref()
        == Some("citus");
    let list = if citus {
        citus_policies(&t.sql_name, &col, shared, grant)
    } else {
        policies(&t.sql_name, &col, shared, grant)
    };
    for (name, sql) in list {
        crate::ddl::run(
            c,
            &t.sql_name,
            "creating a policy",
            &sql,
            LockLimits::DEFAULT,
        );
        actions.push(format!("policy {name}"));
    }
    if !grant {
        actions.push("the table's own permissive policies decide access within the tenant".into());
    }
    actions
}

/// Re-create the extension's policies on every table `enable_tenant_rls()` manages,
/// from the current definition (run by `ALTER EXTENSION vital_tenancy UPDATE` when the
/// policies change). Tables since dropped are skipped. Nothing else is touched.
#[pg_extern(volatile)]
#[search_path(pg_catalog, pg_temp)]
fn refresh_tenant_policies(
) -> TableIterator<'static, (name!(table_name, String), name!(action, String))> {
    let mut out = Vec::new();
    Spi::connect_mut(|c| {
        let rows: Vec<(pg_sys::Oid, String, bool)> = c
            .select(
                "SELECT r.tbl::pg_catalog.oid, r.tenant_column::text, r.shared
                   FROM vital_tenancy.rls_tables r JOIN pg_catalog.pg_class c ON c.oid = r.tbl
                  ORDER BY r.tbl::pg_catalog.regclass::pg_catalog.text",
                None,
                &[],
            )
            .or_raise("reading rls_tables")
            .map(|r| {
                (
                    r.get::<pg_sys::Oid>(1)
                        .ok()
                        .flatten()
                        .unwrap_or(pg_sys::InvalidOid),
                    r.get::<String>(2).ok().flatten().unwrap_or_default(),
                    r.get::<bool>(3).ok().flatten().unwrap_or(true),
                )
            })
            .collect();
        for (oid, column, shared) in rows {
            // A table an earlier version accepted but this one refuses keeps its policies.
            let name = crate::catalog::table_name(c, oid);
            if let Some(why) = crate::catalog::application_table_problem(c, oid, &name, false) {
                out.push((name, format!("skipped: {why}")));
                continue;
            }
            let t = target(c, oid, &column);
            for a in apply_policies(c, &t, shared) {
                out.push((t.sql_name.clone(), a));
            }
        }
    });
    TableIterator::new(out)
}

/// Turn on tenant isolation for a table: ENABLE and FORCE row level security, the
/// tenant policies, the column default and an index. Idempotent.
#[pg_extern(volatile)]
#[search_path(pg_catalog, pg_temp)]
fn enable_tenant_rls(
    tbl: crate::catalog::Regclass,
    tenant_column: default!(&str, "'tenant_id'"),
    shared: default!(bool, true),
) -> TableIterator<'static, (name!(action, String),)> {
    let tenant_column = crate::catalog::name_arg("tenant_column", tenant_column);
    let mut actions: Vec<String> = Vec::new();
    // Close our reference to the relation: ALTER TABLE refuses a table this session
    // still has open. The regclass argument already proved it exists.
    let oid = tbl.oid();
    Spi::connect_mut(|c| {
        let t = target(c, oid, tenant_column);
        let col = quote_ident(&t.column);
        // What was there before, unless an earlier run already recorded it.
        let recorded = c
            .select(
                "SELECT 1 FROM vital_tenancy.rls_tables WHERE tbl = $1",
                Some(1),
                &[t.oid.into()],
            )
            .or_raise("reading rls_tables");
        let first_time = recorded.is_empty();
        if first_time {
            let prior = c
                .select(
                    "SELECT c.relrowsecurity, c.relforcerowsecurity,
                            (SELECT pg_catalog.pg_get_expr(d.adbin, d.adrelid) FROM pg_catalog.pg_attrdef d
                              WHERE d.adrelid = c.oid AND d.adnum = $2)
                       FROM pg_catalog.pg_class c WHERE c.oid = $1",
                    Some(1),
                    &[t.oid.into(), t.attnum.into()],
                )
                .or_raise("reading the table's prior state");
            let r = prior.first();
            let was_enabled: bool = r.get(1).or_raise("relrowsecurity").unwrap_or(false);
            let was_forced: bool = r.get(2).or_raise("relforcerowsecurity").unwrap_or(false);
            let prior_default: Option<String> = r.get(3).or_raise("reading the prior default");
            // A concurrent first call may have recorded it meanwhile (its snapshot is
            // older than the lock this call waited for): theirs stands (F24).
            c.update(
                "INSERT INTO vital_tenancy.rls_tables (tbl, tenant_column, shared, prior_default, rls_was_enabled, rls_was_forced)
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (tbl) DO NOTHING",
                None,
                &[
                    t.oid.into(),
                    t.column.as_str().into(),
                    shared.into(),
                    prior_default.into(),
                    was_enabled.into(),
                    was_forced.into(),
                ],
            )
            .or_raise("recording the table");
        } else {
            c.update(
                "UPDATE vital_tenancy.rls_tables SET tenant_column = $2, shared = $3 WHERE tbl = $1",
                None,
                &[t.oid.into(), t.column.as_str().into(), shared.into()],
            )
            .or_raise("updating the table's record");
        }

        crate::ddl::run(
            c,
            &t.sql_name,
            "enabling RLS",
            &format!("ALTER TABLE {} ENABLE ROW LEVEL SECURITY", t.sql_name),
            LockLimits::DEFAULT,
        );
        crate::ddl::run(
            c,
            &t.sql_name,
            "forcing RLS",
            &format!("ALTER TABLE {} FORCE ROW LEVEL SECURITY", t.sql_name),
            LockLimits::DEFAULT,
        );
        actions.push("row level security enabled and forced".into());

        actions.extend(apply_policies(c, &t, shared));

        crate::ddl::run(
            c,
            &t.sql_name,
            "setting the column default",
            &format!(
                "ALTER TABLE {} ALTER COLUMN {col} SET DEFAULT vital_tenancy.current_tenant_id()",
                t.sql_name
            ),
            LockLimits::DEFAULT,
        );
        actions.push(format!(
            "{} defaults to vital_tenancy.current_tenant_id()",
            display_ident(&t.column)
        ));

        match tenant_index(c, t.oid, t.attnum) {
            Some(ix) => actions.push(format!("index {ix} serves the tenant column")),
            None => {
                let table_name: String = c
                    .select(
                        "SELECT relname::text FROM pg_catalog.pg_class WHERE oid = $1",
                        Some(1),
                        &[t.oid.into()],
                    )
                    .and_then(|r| r.first().get_one())
                    .or_raise("reading the table name")
                    .unwrap_or_default();
                // Truncated to 63 bytes keeping the suffix (a plain cut of a long
                // table's name would give the table's own name back: F20).
                let ix = crate::logic::migrate::derived_name(&table_name, &t.column, "vt_idx");
                crate::ddl::run(
                    c,
                    &t.sql_name,
                    "creating the tenant index",
                    &format!(
                        "CREATE INDEX {} ON {} ({col})",
                        quote_ident(&ix),
                        t.sql_name
                    ),
                    LockLimits::DEFAULT,
                );
                c.update(
                    "UPDATE vital_tenancy.rls_tables SET created_index = $2 WHERE tbl = $1",
                    None,
                    &[t.oid.into(), ix.as_str().into()],
                )
                .or_raise("recording the index");
                actions.push(format!("index {} created", display_ident(&ix)));
            }
        }
    });
    TableIterator::new(actions.into_iter().map(|a| (a,)))
}

/// Undo exactly what `enable_tenant_rls()` did to a table.
#[pg_extern(volatile)]
#[search_path(pg_catalog, pg_temp)]
fn disable_tenant_rls(
    tbl: crate::catalog::Regclass,
) -> TableIterator<'static, (name!(action, String),)> {
    let mut actions = Vec::new();
    let oid = tbl.oid();
    Spi::connect_mut(|c| {
        let rec = c
            .select(
                "SELECT tbl::text, tenant_column::text, prior_default, created_index::text, rls_was_enabled, rls_was_forced
                   FROM vital_tenancy.rls_tables WHERE tbl = $1",
                Some(1),
                &[oid.into()],
            )
            .or_raise("reading rls_tables");
        if rec.is_empty() {
            let name = crate::catalog::table_name(c, oid);
            raise_full(
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("tenant RLS was not enabled on {name} by vital_tenancy"),
                None,
                Some("vital_tenancy.rls_status() lists the tables it manages.".into()),
            );
        }
        let r = rec.first();
        let name: String = r.get(1).or_raise("tbl").unwrap_or_default();
        let column: String = r.get(2).or_raise("tenant_column").unwrap_or_default();
        let prior_default: Option<String> = r.get(3).or_raise("prior_default");
        let created_index: Option<String> = r.get(4).or_raise("created_index");
        let was_enabled: bool = r.get(5).or_raise("rls_was_enabled").unwrap_or(false);
        let was_forced: bool = r.get(6).or_raise("rls_was_forced").unwrap_or(false);
        drop_own_policies(c, oid, &name);
        actions.push("vital_tenancy policies dropped".to_string());
        actions.extend(restore_originals(c, oid, &name));
        let col = quote_ident(&column);
        match &prior_default {
            // The prior default is deparsed catalog text (pg_get_expr), not user input.
            Some(d) => crate::ddl::run(
                c,
                &name,
                "restoring the default",
                &format!("ALTER TABLE {name} ALTER COLUMN {col} SET DEFAULT {d}"),
                LockLimits::DEFAULT,
            ),
            None => crate::ddl::run(
                c,
                &name,
                "dropping the default",
                &format!("ALTER TABLE {name} ALTER COLUMN {col} DROP DEFAULT"),
                LockLimits::DEFAULT,
            ),
        }
        actions.push(match prior_default {
            Some(d) => format!("default of {} restored to {d}", display_ident(&column)),
            None => format!("default of {} dropped", display_ident(&column)),
        });
        if let Some(ix) = created_index {
            let ns: String = c
                .select(
                    "SELECT pg_catalog.quote_ident(n.nspname) FROM pg_catalog.pg_class c
                       JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1",
                    Some(1),
                    &[oid.into()],
                )
                .and_then(|t| t.first().get_one())
                .or_raise("reading the schema")
                .unwrap_or_default();
            crate::ddl::run(
                c,
                &name,
                "dropping the index",
                &format!("DROP INDEX IF EXISTS {ns}.{}", quote_ident(&ix)),
                LockLimits::DEFAULT,
            );
            actions.push(format!("index {} dropped", display_ident(&ix)));
        }
        if !was_forced {
            crate::ddl::run(
                c,
                &name,
                "unforcing RLS",
                &format!("ALTER TABLE {name} NO FORCE ROW LEVEL SECURITY"),
                LockLimits::DEFAULT,
            );
        }
        if !was_enabled {
            crate::ddl::run(
                c,
                &name,
                "disabling RLS",
                &format!("ALTER TABLE {name} DISABLE ROW LEVEL SECURITY"),
                LockLimits::DEFAULT,
            );
        }
        actions.push(format!(
            "row level security back to {}{}",
            if was_enabled { "enabled" } else { "disabled" },
            if was_forced { ", forced" } else { "" }
        ));
        c.update(
            "DELETE FROM vital_tenancy.rls_tables WHERE tbl = $1",
            None,
            &[oid.into()],
        )
        .or_raise("forgetting the table");
    });
    TableIterator::new(actions.into_iter().map(|a| (a,)))
}

// pgrx needs the name!() tuple spelled out in the signature (it rejects a type alias).
#[allow(clippy::type_complexity)]
/// Tenant RLS state of every table with a tenant column (`tenant_id`, or the column a
/// table was enabled with), outside the system schemas and the extension's own.
#[pg_extern(stable)]
#[search_path(pg_catalog, pg_temp)]
fn rls_status() -> TableIterator<
    'static,
    (
        name!(table_name, String),
        name!(tenant_column, String),
        name!(rls_enabled, bool),
        name!(rls_forced, bool),
        name!(policies, i64),
        name!(tenant_index, bool),
        name!(index_usable_policy, bool),
    ),
> {
    let rows = Spi::connect(|c| {
        let t = c
            .select(
                "SELECT c.oid::pg_catalog.regclass::pg_catalog.text, a.attname::text, c.relrowsecurity, c.relforcerowsecurity,
                        (SELECT count(*) FROM pg_catalog.pg_policy p WHERE p.polrelid = c.oid),
                        EXISTS (SELECT 1 FROM pg_catalog.pg_index i
                                 WHERE i.indrelid = c.oid AND i.indisvalid AND i.indkey[0] = a.attnum),
                        ARRAY(SELECT COALESCE(p.polqual::pg_catalog.text, '')
                                FROM pg_catalog.pg_policy p
                               WHERE p.polrelid = c.oid AND p.polcmd IN ('r', '*') AND NOT p.polpermissive),
                        ARRAY(SELECT COALESCE(p.polqual::pg_catalog.text, '')
                                FROM pg_catalog.pg_policy p
                               WHERE p.polrelid = c.oid AND p.polcmd IN ('r', '*') AND p.polpermissive),
                        a.attnum
                   FROM pg_catalog.pg_class c
                   JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                   JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                   LEFT JOIN vital_tenancy.rls_tables r ON r.tbl = c.oid
                  WHERE c.relkind IN ('r', 'p')
                    AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'vital_tenancy')
                    AND n.nspname NOT LIKE 'pg\\_%'
                    AND a.attname = COALESCE(r.tenant_column, 'tenant_id')
                  ORDER BY 1",
                None,
                &[],
            )
            .or_raise("reading tables with a tenant column");
        let mut out = Vec::new();
        for r in t {
            let name: String = r.get(1).or_raise("table").unwrap_or_default();
            let column: String = r.get(2).or_raise("column").unwrap_or_default();
            let enabled: bool = r.get(3).or_raise("relrowsecurity").unwrap_or(false);
            let forced: bool = r.get(4).or_raise("relforcerowsecurity").unwrap_or(false);
            let n: i64 = r.get(5).or_raise("policies").unwrap_or(0);
            let index: bool = r.get(6).or_raise("index").unwrap_or(false);
            let restrictive: Vec<String> = r
                .get(7)
                .or_raise("restrictive policy expressions")
                .unwrap_or_default();
            let permissive: Vec<String> = r
                .get(8)
                .or_raise("permissive policy expressions")
                .unwrap_or_default();
            let attnum: i16 = r.get(9).or_raise("attnum").unwrap_or(0);
            // Usable: an index on the column, and the read policies narrow the column
            // with a once-per-scan value: a restrictive policy does (it is AND-ed), or
            // every permissive one does (they are OR-ed). Read from the expression
            // trees (boundary::index_friendly).
            let friendly = |q: &String| crate::boundary::index_friendly(q, attnum);
            let usable = index
                && (restrictive.iter().any(friendly)
                    || (!permissive.is_empty() && permissive.iter().all(friendly)));
            out.push((name, column, enabled, forced, n, index, usable));
        }
        out
    });
    TableIterator::new(rows)
}
