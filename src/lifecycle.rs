//! Tenant lifecycle after the migration: what each registry status allows
//! (`tenant_status()`, `set_status_access()`, `set_status_column()`), offboarding
//! (`tenant_deletion_plan()`; the batched, journaled `delete_tenant` procedure is
//! PL/pgSQL in `sql/lifecycle.sql`) and moving a tenant (`import_tenant()`, the way
//! back for `export_tenant()`).

use crate::catalog::TenantTable;
use crate::errors::{raise, raise_full, OrRaise};
use crate::logic::ident::{display_ident, quote_ident};
use crate::logic::lifecycle::{delete_order, Access, BUILTIN_STATUSES};
use crate::logic::tenants::{uuid_bytes, PLATFORM};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::Uuid;

/// One registry row as `tenant_status()` shows it.
pub(crate) struct StatusRow {
    pub(crate) id: Uuid,
    pub(crate) name: Option<String>,
    pub(crate) slug: Option<String>,
    pub(crate) status: Option<String>,
    pub(crate) access: Access,
    /// A status the built-in meaning or an override knows (an unknown one gives no
    /// access; `health()` names it).
    pub(crate) known: bool,
}

/// Every tenant of the registry with its status and access (the caller's privileges).
pub(crate) fn status_rows() -> Vec<StatusRow> {
    let table = crate::context::tenants_table_sql();
    let rows: Vec<(Uuid, Option<String>, Option<String>)> = Spi::connect(|c| {
        c.select(
            &format!("SELECT id, name::text, slug::text FROM {table} ORDER BY id"),
            None,
            &[],
        )
        .or_raise("reading the tenants table")
        .filter_map(|r| {
            Some((
                r.get::<Uuid>(1).ok().flatten()?,
                r.get::<String>(2).ok().flatten(),
                r.get::<String>(3).ok().flatten(),
            ))
        })
        .collect()
    });
    let ids: Vec<[u8; 16]> = rows.iter().map(|r| *r.0.as_bytes()).collect();
    let access = crate::context::tenant_access(&table, &ids);
    rows.into_iter()
        .map(|(id, name, slug)| {
            let a = access.iter().find(|t| &t.id == id.as_bytes());
            let status = a.and_then(|t| t.status.clone());
            let acc = a.map(|t| t.access).unwrap_or(Access::NoAccess);
            let known = acc.reads()
                || a.is_some_and(|t| t.overridden)
                || status
                    .as_deref()
                    .is_some_and(|s| BUILTIN_STATUSES.iter().any(|(b, _)| *b == s));
            StatusRow {
                id,
                name,
                slug,
                status,
                access: acc,
                known,
            }
        })
        .collect()
}

// pgrx needs the name!() tuple spelled out in the signature (it rejects a type alias).
#[allow(clippy::type_complexity)]
/// Every tenant of the registry with its status and the access that status gives
/// (for the DBA: reads the registry with the caller's privileges).
#[pg_extern(stable, parallel_restricted)]
#[search_path(pg_catalog, pg_temp)]
fn tenant_status() -> TableIterator<
    'static,
    (
        name!(tenant_id, Uuid),
        name!(name, Option<String>),
        name!(slug, Option<String>),
        name!(status, Option<String>),
        name!(access, String),
        name!(known_status, bool),
    ),
> {
    TableIterator::new(
        status_rows()
            .into_iter()
            .map(|r| {
                (
                    r.id,
                    r.name,
                    r.slug,
                    r.status,
                    r.access.as_str().to_string(),
                    r.known,
                )
            })
            .collect::<Vec<_>>(),
    )
}

/// On a Citus coordinator, run `sql` on every worker too (the policies of the shards
/// read the extension's settings there); nothing elsewhere.
fn on_workers(c: &mut SpiClient<'_>, sql: &str) {
    if !crate::catalog::citus_installed(c) {
        return;
    }
    let failed: Option<String> = crate::catalog::value(
        c,
        "SELECT pg_catalog.string_agg(nodename || ':' || nodeport || ': ' || result, '; ')
           FROM run_command_on_workers($1) WHERE NOT success",
        &[sql.into()],
    );
    if let Some(f) = failed {
        raise(
            PgSqlErrorCode::ERRCODE_CONNECTION_FAILURE,
            format!("the setting changed here but not on every Citus worker: {f}"),
        );
    }
}

/// Say what a status allows (`read-write`, `read-only`, `none`), overriding the
/// built-in meaning; NULL access removes the override. Effective from the next
/// statement. Returns the access now in effect for that status.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn set_status_access(status: Option<&str>, access: Option<&str>) -> String {
    let Some(status) = status else {
        raise(
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            "status must not be NULL",
        )
    };
    if let Some(a) = access {
        if Access::parse(a).is_none() {
            raise_full(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("access \"{a}\" for status \"{status}\" is not one of read-write, read-only, none"),
                None,
                Some("Pass NULL to go back to the built-in meaning of the status.".into()),
            );
        }
    }
    Spi::connect_mut(|c| {
        let sql: String = crate::catalog::value(
            c,
            "SELECT CASE WHEN $2::text IS NULL
                         THEN pg_catalog.format('DELETE FROM vital_tenancy.tenant_statuses WHERE status = %L', $1)
                         ELSE pg_catalog.format('INSERT INTO vital_tenancy.tenant_statuses (status, access) VALUES (%L, %L)
                                                 ON CONFLICT (status) DO UPDATE SET access = EXCLUDED.access', $1, $2) END",
            &[status.into(), access.into()],
        )
        .unwrap_or_default();
        c.update(&sql, None, &[])
            .or_raise("recording the status's access");
        on_workers(c, &sql);
    });
    crate::logic::lifecycle::access_for(Some(status), access)
        .as_str()
        .to_string()
}

/// Which column of the tenants table holds the status (default `status`); NULL or ''
/// turns statuses off (every tenant of the registry then reads and writes).
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn set_status_column(column_name: Option<&str>) -> Option<String> {
    let given = column_name.unwrap_or("");
    let value = if given.is_empty() {
        String::new()
    } else {
        crate::catalog::name_arg("column_name", given).to_string()
    };
    Spi::connect_mut(|c| {
        let table = crate::catalog::require_tenants_table(c);
        if !value.is_empty() {
            let oid: pg_sys::Oid = crate::catalog::value(
                c,
                "SELECT $1::pg_catalog.regclass::pg_catalog.oid",
                &[table.as_str().into()],
            )
            .unwrap_or(pg_sys::InvalidOid);
            if !crate::catalog::has_column(c, oid, &value) {
                raise(
                    PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
                    format!("column \"{value}\" of tenants table {table} does not exist"),
                );
            }
            check_status_column(c, oid, &table, &value);
        }
        let sql: String = crate::catalog::value(
            c,
            "SELECT pg_catalog.format('INSERT INTO vital_tenancy.settings (name, value) VALUES (''status_column'', %L)
                                       ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value', $1)",
            &[value.as_str().into()],
        )
        .unwrap_or_default();
        c.update(&sql, None, &[])
            .or_raise("recording the status column");
        on_workers(c, &sql);
    });
    (!value.is_empty()).then_some(value)
}

/// A status column holds words: text, varchar, char or an enum, else 42804 (an id or
/// a number would give every tenant an unknown status, and no access; census N10).
/// Values that neither the built-in statuses nor `tenant_statuses` know are one
/// WARNING: those tenants get no access until the DBA names them.
fn check_status_column(c: &SpiClient<'_>, oid: pg_sys::Oid, table: &str, column: &str) {
    let (type_name, words): (String, bool) = c
        .select(
            "SELECT pg_catalog.format_type(a.atttypid, a.atttypmod),
                    t.typtype = 'e' OR CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
                                         = ANY ('{text,varchar,bpchar}'::pg_catalog.regtype[])
               FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
              WHERE a.attrelid = $1 AND a.attname = $2",
            Some(1),
            &[oid.into(), column.into()],
        )
        .and_then(|t| {
            let r = t.first();
            Ok((
                r.get::<String>(1)?.unwrap_or_default(),
                r.get::<bool>(2)?.unwrap_or(false),
            ))
        })
        .or_raise("reading the status column's type");
    if !words {
        raise(
            PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
            format!(
                "column {} of tenants table {table} is {type_name}; a status column is text, varchar or an enum",
                display_ident(column)
            ),
        );
    }
    let builtin: Vec<String> = BUILTIN_STATUSES
        .iter()
        .map(|(s, _)| s.to_string())
        .collect();
    let unknown: Option<String> = crate::catalog::value(
        c,
        &format!(
            "SELECT pg_catalog.string_agg(DISTINCT pg_catalog.quote_literal(t.{col}::text), ', ')
               FROM {table} t
              WHERE t.{col} IS NOT NULL AND t.{col}::text <> ALL ($1)
                AND NOT EXISTS (SELECT 1 FROM vital_tenancy.tenant_statuses s WHERE s.status = t.{col}::text)",
            col = quote_ident(column)
        ),
        &[builtin.into()],
    );
    if let Some(values) = unknown {
        pgrx::warning!(
            "status column {} of {table} holds {values}, which neither the built-in statuses nor vital_tenancy.tenant_statuses know: those tenants get no access until set_status_access() names them",
            display_ident(column)
        );
    }
}

fn require_tenant(c: &SpiClient<'_>, tenant: Option<Uuid>, what: &str) -> (Uuid, String) {
    let Some(tenant) = tenant else {
        raise(
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            "tenant must not be NULL",
        )
    };
    let table = crate::catalog::require_tenants_table(c);
    if Some(*tenant.as_bytes()) == uuid_bytes(PLATFORM.id) {
        raise_full(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("{what} refuses the Platform tenant {tenant}"),
            Some("Platform's rows are shared with every tenant.".into()),
            None,
        );
    }
    (tenant, table)
}

/// A foreign key between two tables: (child, parent).
type Edge = (String, String);

/// Foreign keys between the given tables.
fn fk_edges(c: &SpiClient<'_>, tables: &[String]) -> Vec<Edge> {
    c.select(
        "SELECT DISTINCT conrelid::pg_catalog.regclass::pg_catalog.text, confrelid::pg_catalog.regclass::pg_catalog.text
           FROM pg_catalog.pg_constraint
          WHERE contype = 'f'
            AND conrelid::pg_catalog.regclass::pg_catalog.text = ANY ($1)
            AND confrelid::pg_catalog.regclass::pg_catalog.text = ANY ($1)",
        None,
        &[tables.to_vec().into()],
    )
    .or_raise("listing foreign keys between tenant tables")
    .map(|r| {
        (
            r.get::<String>(1).ok().flatten().unwrap_or_default(),
            r.get::<String>(2).ok().flatten().unwrap_or_default(),
        )
    })
    .collect()
}

/// The tenant tables children first, or a 0A000 naming a foreign-key cycle.
fn ordered_tables(c: &SpiClient<'_>) -> (Vec<TenantTable>, Vec<Edge>) {
    let tables = crate::catalog::tenant_tables(c, &None);
    let names: Vec<String> = tables.iter().map(|t| t.table.clone()).collect();
    let edges = fk_edges(c, &names);
    let order = match delete_order(&names, &edges) {
        Ok(o) => o,
        Err(cycle) => raise_full(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!(
                "the foreign keys between tenant tables {} form a cycle",
                cycle.join(", ")
            ),
            None,
            Some("Make one of the foreign keys DEFERRABLE or ON DELETE CASCADE, or delete those rows by hand first.".into()),
        ),
    };
    let ordered = order
        .iter()
        .filter_map(|n| tables.iter().find(|t| &t.table == n).cloned())
        .collect();
    (ordered, edges)
}

/// Rows of other tenants that reference rows of `tenant`, per foreign key between tenant
/// tables: (child table, foreign key, its ON DELETE action, rows). Deleting the tenant
/// would delete them (CASCADE), rewrite them (SET NULL / SET DEFAULT) or fail on them.
fn foreign_children(
    c: &SpiClient<'_>,
    tenant: Uuid,
    tables: &[TenantTable],
) -> Vec<(String, String, String, i64)> {
    let names: Vec<String> = tables.iter().map(|t| t.table.clone()).collect();
    let columns: Vec<String> = tables.iter().map(|t| t.raw_column.clone()).collect();
    // One count query per foreign key, built by PostgreSQL (format %I/%s).
    let keys: Vec<(String, String, String, String)> = c
        .select(
            "SELECT k.conrelid::pg_catalog.regclass::pg_catalog.text, k.conname::pg_catalog.text,
                    CASE k.confdeltype WHEN 'c' THEN 'CASCADE' WHEN 'n' THEN 'SET NULL' WHEN 'd' THEN 'SET DEFAULT'
                                       WHEN 'r' THEN 'RESTRICT' ELSE 'NO ACTION' END,
                    pg_catalog.format('SELECT pg_catalog.count(*) FROM %s ch JOIN %s pa ON %s WHERE pa.%I = $1 AND ch.%I IS DISTINCT FROM $1',
                        k.conrelid::pg_catalog.regclass, k.confrelid::pg_catalog.regclass,
                        (SELECT pg_catalog.string_agg(pg_catalog.format('ch.%I = pa.%I', ca.attname, pa.attname), ' AND ')
                           FROM unnest(k.conkey, k.confkey) u(ck, pk)
                           JOIN pg_catalog.pg_attribute ca ON ca.attrelid = k.conrelid AND ca.attnum = u.ck
                           JOIN pg_catalog.pg_attribute pa ON pa.attrelid = k.confrelid AND pa.attnum = u.pk),
                        pt.col, ct.col)
               FROM pg_catalog.pg_constraint k
               JOIN unnest($1::text[], $2::text[]) ct(tbl, col) ON ct.tbl = k.conrelid::pg_catalog.regclass::pg_catalog.text
               JOIN unnest($1::text[], $2::text[]) pt(tbl, col) ON pt.tbl = k.confrelid::pg_catalog.regclass::pg_catalog.text
              WHERE k.contype = 'f'
              ORDER BY 1, 2",
            None,
            &[names.into(), columns.into()],
        )
        .or_raise("listing foreign keys between tenant tables")
        .map(|r| {
            (
                r.get::<String>(1).ok().flatten().unwrap_or_default(),
                r.get::<String>(2).ok().flatten().unwrap_or_default(),
                r.get::<String>(3).ok().flatten().unwrap_or_default(),
                r.get::<String>(4).ok().flatten().unwrap_or_default(),
            )
        })
        .collect();
    keys.into_iter()
        .filter_map(|(child, key, action, count_sql)| {
            let n: i64 = crate::catalog::value(c, &count_sql, &[tenant.into()]).unwrap_or(0);
            (n > 0).then_some((child, key, action, n))
        })
        .collect()
}

/// ERROR 23503 when rows of other tenants reference rows of `tenant`: a deletion must
/// never delete or rewrite another tenant's rows (through CASCADE, SET NULL, SET
/// DEFAULT), so such a plan is refused, naming every foreign key and how many rows.
fn refuse_foreign_children(c: &SpiClient<'_>, tenant: Uuid, tables: &[TenantTable]) {
    let found = foreign_children(c, tenant, tables);
    if found.is_empty() {
        return;
    }
    let list: Vec<String> = found
        .iter()
        .map(|(child, key, action, n)| {
            format!("{n} row(s) of {child} through {key} (ON DELETE {action})")
        })
        .collect();
    raise_full(
        PgSqlErrorCode::ERRCODE_FOREIGN_KEY_VIOLATION,
        format!(
            "tenant {tenant} cannot be deleted: rows of other tenants reference its rows: {}",
            list.join("; ")
        ),
        Some("Deleting the tenant would delete, rewrite or trip over rows that belong to other tenants; it deletes nothing of them.".into()),
        Some("Re-point or delete those rows first (vital_tenancy.cross_tenant_references() lists references across tenants), then run the deletion again.".into()),
    )
}

/// What `delete_tenant` will do, in order: every tenant table children first (rows of
/// the tenant, and whether they go in batches or, for a self-referencing or
/// partitioned table, in one statement), the registry row last. Changes nothing.
#[pg_extern(stable, parallel_restricted)]
#[search_path(pg_catalog, pg_temp)]
fn tenant_deletion_plan(
    tenant: Option<Uuid>,
) -> TableIterator<
    'static,
    (
        name!(step, i32),
        name!(table_name, String),
        name!(tenant_column, String),
        name!(rows, i64),
        name!(batched, bool),
    ),
> {
    let rows = Spi::connect(|c| {
        let (tenant, registry) = require_tenant(c, tenant, "tenant_deletion_plan()");
        let exists: bool = crate::catalog::value(
            c,
            &format!("SELECT EXISTS (SELECT 1 FROM {registry} WHERE id = $1)"),
            &[tenant.into()],
        )
        .unwrap_or(false);
        let journaled: bool = crate::catalog::value(
            c,
            "SELECT pg_catalog.to_regclass('vital_tenancy.tenant_deletions') IS NOT NULL
                AND EXISTS (SELECT 1 FROM vital_tenancy.tenant_deletions WHERE tenant = $1)",
            &[tenant.into()],
        )
        .unwrap_or(false);
        if !exists && !journaled {
            raise(
                PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
                format!("tenant {tenant} does not exist in {registry}"),
            );
        }
        let (tables, edges) = ordered_tables(c);
        refuse_foreign_children(c, tenant, &tables);
        let mut out = Vec::with_capacity(tables.len() + 1);
        for (
            i,
            TenantTable {
                table,
                column: qcol,
                raw_column: raw,
            },
        ) in tables.iter().enumerate()
        {
            let n: i64 = crate::catalog::value(
                c,
                &format!("SELECT pg_catalog.count(*) FROM {table} WHERE {qcol} = $1"),
                &[tenant.into()],
            )
            .unwrap_or(0);
            let partitioned: bool = crate::catalog::value(
                c,
                "SELECT relkind = 'p' FROM pg_catalog.pg_class WHERE oid = $1::pg_catalog.regclass",
                &[table.as_str().into()],
            )
            .unwrap_or(false);
            let self_ref = edges.iter().any(|(ch, p)| ch == table && p == table);
            out.push((
                i as i32 + 1,
                table.clone(),
                raw.clone(),
                n,
                !self_ref && !partitioned,
            ));
        }
        let n: i64 = if exists { 1 } else { 0 };
        out.push((out.len() as i32 + 1, registry, "id".to_string(), n, false));
        out
    });
    TableIterator::new(rows)
}

/// The non-generated columns of a table, quoted, and whether one is an identity
/// column GENERATED ALWAYS (the insert then says OVERRIDING SYSTEM VALUE).
fn insert_columns(c: &SpiClient<'_>, table: &str) -> (Vec<String>, bool) {
    let cols: Vec<(String, bool)> = c
        .select(
            "SELECT pg_catalog.quote_ident(attname), attidentity = 'a'
               FROM pg_catalog.pg_attribute
              WHERE attrelid = $1::pg_catalog.regclass AND attnum > 0 AND NOT attisdropped AND attgenerated = ''
              ORDER BY attnum",
            None,
            &[table.into()],
        )
        .or_raise("listing a table's columns")
        .map(|r| {
            (
                r.get::<String>(1).ok().flatten().unwrap_or_default(),
                r.get::<bool>(2).ok().flatten().unwrap_or(false),
            )
        })
        .collect();
    let always = cols.iter().any(|c| c.1);
    (cols.into_iter().map(|c| c.0).collect(), always)
}

/// For each foreign key of `table` to itself, the condition that a row `r` is ready:
/// a key column NULL (MATCH SIMPLE: no reference) or the parent row present.
fn self_references(c: &SpiClient<'_>, table: &str) -> Vec<String> {
    c.select(
        "SELECT pg_catalog.format('(%s OR EXISTS (SELECT 1 FROM %s p WHERE %s))',
                  (SELECT pg_catalog.string_agg(pg_catalog.format('r.%I IS NULL', a.attname), ' OR ')
                     FROM unnest(co.conkey) k(n) JOIN pg_catalog.pg_attribute a ON a.attrelid = co.conrelid AND a.attnum = k.n),
                  co.conrelid::pg_catalog.regclass,
                  (SELECT pg_catalog.string_agg(pg_catalog.format('p.%I = r.%I', pa.attname, ca.attname), ' AND ')
                     FROM unnest(co.conkey, co.confkey) k(cn, pn)
                     JOIN pg_catalog.pg_attribute ca ON ca.attrelid = co.conrelid AND ca.attnum = k.cn
                     JOIN pg_catalog.pg_attribute pa ON pa.attrelid = co.confrelid AND pa.attnum = k.pn))
           FROM pg_catalog.pg_constraint co
          WHERE co.contype = 'f' AND co.conrelid = $1::pg_catalog.regclass AND co.confrelid = co.conrelid",
        None,
        &[table.into()],
    )
    .or_raise("reading a table's self-references")
    .filter_map(|r| r.get::<String>(1).ok().flatten())
    .collect()
}

/// One table of an import: where its rows come from and go to.
struct ImportTarget<'a> {
    table: &'a str,
    /// The quoted column list of the insert.
    list: String,
    /// An identity column GENERATED ALWAYS: OVERRIDING SYSTEM VALUE.
    always: bool,
    /// `r.<column>` for each column.
    select: Vec<String>,
    /// The export table.
    src: &'a str,
    /// The table's name as a literal (the export's table_name).
    lit: String,
}

/// Insert the export's rows of a table that satisfy `ready` (and are not present).
fn insert_rows(c: &mut SpiClient<'_>, t: &ImportTarget<'_>, ready: &str) -> i64 {
    let ImportTarget {
        table,
        list,
        always,
        select,
        src,
        lit,
    } = t;
    c.update(
        &format!(
            "WITH ins AS (
               INSERT INTO {table} ({list}) {over} SELECT {sel}
                 FROM {src} s, pg_catalog.jsonb_populate_record(NULL::{table}, s.row) r
                WHERE s.table_name = {lit} AND ({ready})
               ON CONFLICT DO NOTHING RETURNING 1)
             SELECT pg_catalog.count(*) FROM ins",
            over = if *always {
                "OVERRIDING SYSTEM VALUE"
            } else {
                ""
            },
            sel = select.join(", ")
        ),
        None,
        &[],
    )
    .and_then(|t| t.first().get_one::<i64>())
    .or_raise("importing a tenant's rows")
    .unwrap_or(0)
}

/// Import a tenant's export (a table of `(table_name text, row jsonb)`, as
/// `export_tenant()` writes it, loaded with COPY) into this database, which has the
/// same schema: the registry row first, then every tenant table parents first; ids
/// kept; a row already present (same key) is kept as it is, so importing again
/// inserts nothing. Refuses, changing nothing, rows of another tenant and rows of a
/// table this database does not have as a tenant table.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn import_tenant(
    source: Option<crate::catalog::Regclass>,
    tenant: Option<Uuid>,
) -> TableIterator<
    'static,
    (
        name!(table_name, String),
        name!(source_rows, i64),
        name!(inserted, i64),
    ),
> {
    let Some(source) = source else {
        raise(
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            "source must not be NULL",
        )
    };
    let source = source.oid();
    let rows = Spi::connect_mut(|c| {
        let (tenant, registry) = require_tenant(c, tenant, "import_tenant()");
        let src = crate::catalog::table_name(c, source);
        let shape: i64 = crate::catalog::value(
            c,
            "SELECT pg_catalog.count(*) FROM pg_catalog.pg_attribute
              WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped
                AND ((attname = 'table_name' AND atttypid = 'pg_catalog.text'::pg_catalog.regtype)
                  OR (attname = 'row' AND atttypid = 'pg_catalog.jsonb'::pg_catalog.regtype))",
            &[source.into()],
        )
        .unwrap_or(0);
        if shape != 2 {
            raise_full(
                PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
                format!("{src} is not a tenant export: it needs columns table_name text and row jsonb"),
                None,
                Some("CREATE TABLE x (table_name text, row jsonb); COPY x FROM ... (the output of COPY (SELECT * FROM vital_tenancy.export_tenant(...)) TO ...)".into()),
            );
        }
        let (mut tables, _) = ordered_tables(c);
        tables.reverse();
        let known: Vec<String> = std::iter::once(registry.clone())
            .chain(tables.iter().map(|t| t.table.clone()))
            .collect();
        let unknown: Option<String> = crate::catalog::value(
            c,
            &format!(
                "SELECT pg_catalog.string_agg(DISTINCT s.table_name, ', ') FROM {src} s
                  WHERE s.table_name IS NULL OR NOT s.table_name = ANY ($1)"
            ),
            &[known.clone().into()],
        );
        if let Some(u) = unknown {
            raise_full(
                PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
                format!("the export {src} holds rows of {u}, which is not a tenant table of this database"),
                None,
                Some("Import into a database with the same schema, migrated the same way.".into()),
            );
        }
        let mut out = Vec::new();
        // The registry row: its id is the tenant's.
        let targets = std::iter::once((registry.clone(), "id".to_string()))
            .chain(tables.iter().map(|t| (t.table.clone(), t.column.clone())));
        for (table, qcol) in targets {
            let lit = crate::logic::ident::quote_literal(&table);
            let foreign: i64 = crate::catalog::value(
                c,
                &format!(
                    "SELECT pg_catalog.count(*) FROM {src} s, pg_catalog.jsonb_populate_record(NULL::{table}, s.row) r
                      WHERE s.table_name = {lit} AND r.{qcol} IS DISTINCT FROM $1"
                ),
                &[tenant.into()],
            )
            .unwrap_or(0);
            if foreign > 0 {
                raise(
                    PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                    format!("the export {src} holds {foreign} row(s) of {table} that are not tenant {tenant}'s"),
                );
            }
            let n: i64 = crate::catalog::value(
                c,
                &format!("SELECT pg_catalog.count(*) FROM {src} WHERE table_name = {lit}"),
                &[],
            )
            .unwrap_or(0);
            if n == 0 {
                continue;
            }
            let (cols, always) = insert_columns(c, &table);
            let target = ImportTarget {
                table: &table,
                list: cols.join(", "),
                always,
                select: cols.iter().map(|c| format!("r.{c}")).collect(),
                src: &src,
                lit: lit.clone(),
            };
            // A self-referencing table (messages.parent_message_id) goes in passes,
            // parents before their children: the tenant-reference guard checks each
            // row as it is inserted. The last pass takes whatever is left, so that a
            // parent missing from the export is the guard's (or the key's) error.
            let selfref = self_references(c, &table);
            let mut inserted = 0i64;
            loop {
                let ready = if selfref.is_empty() {
                    "true".to_string()
                } else {
                    selfref.join(" AND ")
                };
                let n = insert_rows(c, &target, &ready);
                inserted += n;
                if selfref.is_empty() {
                    break;
                }
                if n == 0 {
                    inserted += insert_rows(c, &target, "true");
                    break;
                }
            }
            out.push((table, n, inserted));
        }
        out
    });
    TableIterator::new(rows)
}
