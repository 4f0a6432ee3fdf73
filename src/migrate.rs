//! Online migration toolkit: the tenant column's online DDL path, the backfill plan
//! (the `backfill` procedure itself is PL/pgSQL in `sql/migrate.sql`, because only a
//! procedure can COMMIT per batch), count snapshots, journaled revert, and the
//! Markdown migration report.

use crate::errors::{raise, raise_full, OrRaise};
use crate::logic::ident::{display_ident, quote_ident};
use crate::logic::migrate::{
    add_steps, enforce_steps, expression, index_ddl, Classifier, Column, ColumnState, PlanError,
    Step, TableInfo,
};
use crate::logic::tenants::uuid_bytes;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::{JsonB, Uuid};
use serde_json::json;

pub(crate) fn plan_error(e: PlanError) -> ! {
    let code = match e.code {
        "42703" => PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
        "42804" => PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
        "42P01" => PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
        _ => PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
    };
    raise(code, e.message)
}

/// Name (regclass text, qualified under the pinned search_path), bare relname and
/// relkind of a table.
fn names(c: &SpiClient<'_>, oid: pg_sys::Oid) -> (String, String, String) {
    let t = c
        .select(
            "SELECT $1::pg_catalog.regclass::pg_catalog.text, c.relname::text, c.relkind::text
               FROM pg_catalog.pg_class c WHERE c.oid = $1",
            Some(1),
            &[oid.into()],
        )
        .or_raise("reading the table");
    let r = t.first();
    (
        r.get(1).or_raise("name").unwrap_or_default(),
        r.get(2).or_raise("relname").unwrap_or_default(),
        r.get(3).or_raise("relkind").unwrap_or_default(),
    )
}

fn require_table(c: &SpiClient<'_>, oid: pg_sys::Oid) -> (String, String) {
    let (name, relname, kind) = names(c, oid);
    if kind != "r" && kind != "p" {
        raise(
            PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            format!("{name} is not a table"),
        );
    }
    crate::catalog::require_application_table(c, oid, &name);
    (name, relname)
}

pub(crate) fn table_info(c: &SpiClient<'_>, oid: pg_sys::Oid, sql_name: &str) -> TableInfo {
    let rows = c
        .select(
            "SELECT a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod)
               FROM pg_catalog.pg_attribute a
              WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            None,
            &[oid.into()],
        )
        .or_raise("reading columns");
    let mut columns = Vec::new();
    for r in rows {
        columns.push(Column {
            name: r.get(1).or_raise("attname").unwrap_or_default(),
            type_name: r.get(2).or_raise("type").unwrap_or_default(),
        });
    }
    TableInfo {
        sql_name: sql_name.to_string(),
        columns,
    }
}

/// The single-column primary key: quoted name and type.
fn primary_key(c: &SpiClient<'_>, oid: pg_sys::Oid, name: &str) -> (String, String) {
    let t = c
        .select(
            "SELECT a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod), pg_catalog.array_length(i.indkey::int2[], 1)
               FROM pg_catalog.pg_index i
               JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
              WHERE i.indrelid = $1 AND i.indisprimary",
            Some(1),
            &[oid.into()],
        )
        .or_raise("reading the primary key");
    if t.is_empty() {
        raise(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("table {name} has no primary key; backfill walks the primary key in batches"),
        );
    }
    let r = t.first();
    let n: i32 = r.get(3).or_raise("key length").unwrap_or(1);
    if n != 1 {
        raise(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("table {name} has a composite primary key; backfill needs a single-column key"),
        );
    }
    (
        quote_ident(&r.get::<String>(1).or_raise("pk").unwrap_or_default()),
        r.get(2).or_raise("pk type").unwrap_or_default(),
    )
}

/// What `backfill` will run for a table: the classification expression, the key it
/// walks and the tenant column. Validates everything; writes nothing.
#[pg_extern(stable)]
#[search_path(pg_catalog, pg_temp)]
fn backfill_plan(
    tbl: crate::catalog::Regclass,
    classifier: &str,
    options: default!(crate::catalog::JsonArg, "'{}'"),
    tenant_column: default!(&str, "'tenant_id'"),
) -> JsonB {
    let tenant_column = crate::catalog::name_arg("tenant_column", tenant_column);
    let oid = tbl.oid();
    let cls = Classifier::parse(classifier, &options.0).unwrap_or_else(|e| plan_error(e));
    let plan = Spi::connect(|c| {
        let (name, _) = require_table(c, oid);
        // The batches run with the foreign key's trigger off (replica mode): a tenant
        // the options name is checked here, before anything is written (F04).
        for (option, id) in cls.option_tenants() {
            let tenants = crate::catalog::require_tenants_table(c);
            let known = uuid_bytes(id).is_some_and(|b| crate::context::tenant_exists(&tenants, b));
            if !known {
                raise(
                    PgSqlErrorCode::ERRCODE_FOREIGN_KEY_VIOLATION,
                    format!("option \"{option}\": tenant {id} does not exist in {tenants}"),
                );
            }
        }
        let info = table_info(c, oid, &name);
        // A missing column is for the backfill to add (with the majority tenant as
        // its catalog default); the plan says so.
        match info.column(tenant_column) {
            None => {}
            Some(col) if col.type_name != "uuid" => raise(
                PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
                format!(
                    "tenant column {} of table {name} must be of type uuid",
                    display_ident(tenant_column)
                ),
            ),
            Some(_) => {}
        }
        let parent = match cls.parent_table() {
            Some(p) => {
                let poid: Option<pg_sys::Oid> = c
                    .select(
                        "SELECT pg_catalog.to_regclass($1)::pg_catalog.oid",
                        Some(1),
                        &[p.into()],
                    )
                    .and_then(|t| t.first().get_one())
                    .or_raise("resolving the parent table");
                let Some(poid) = poid else {
                    raise(
                        PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
                        format!("parent table \"{p}\" does not exist"),
                    )
                };
                let (pname, _) = require_table(c, poid);
                Some(table_info(c, poid, &pname))
            }
            None => None,
        };
        let expr = expression(&cls, &info, tenant_column, parent.as_ref())
            .unwrap_or_else(|e| plan_error(e));
        let (pk, pk_type) = primary_key(c, oid, &name);
        json!({
            "table": name,
            "pk": pk,
            "pk_type": pk_type,
            "tenant_column": quote_ident(tenant_column),
            "expression": expr,
            "may_return_null": cls.may_return_null(),
            "column_exists": info.column(tenant_column).is_some(),
            "classifier": classifier.trim().to_ascii_lowercase(),
        })
    });
    JsonB(plan)
}

fn column_state(c: &SpiClient<'_>, oid: pg_sys::Oid, column: &str, tenants: &str) -> ColumnState {
    let partitioned = crate::catalog::value::<bool>(
        c,
        "SELECT relkind = 'p' FROM pg_catalog.pg_class WHERE oid = $1",
        &[oid.into()],
    )
    .unwrap_or(false);
    let t = c
        .select(
            "SELECT a.atttypid = 'pg_catalog.uuid'::pg_catalog.regtype, a.attnotnull, a.attnum
               FROM pg_catalog.pg_attribute a
              WHERE a.attrelid = $1 AND a.attname = $2 AND a.attnum > 0 AND NOT a.attisdropped",
            Some(1),
            &[oid.into(), column.into()],
        )
        .or_raise("reading the tenant column");
    if t.is_empty() {
        return ColumnState {
            partitioned,
            ..ColumnState::default()
        };
    }
    let r = t.first();
    let is_uuid: bool = r.get(1).or_raise("type").unwrap_or(false);
    let not_null: bool = r.get(2).or_raise("attnotnull").unwrap_or(false);
    let attnum: i16 = r.get(3).or_raise("attnum").unwrap_or(0);
    let fk = c
        .select(
            "SELECT conname::text, convalidated FROM pg_catalog.pg_constraint
              WHERE conrelid = $1 AND contype = 'f' AND conkey = ARRAY[$2]::int2[]
                AND confrelid = $3::pg_catalog.regclass ORDER BY conname LIMIT 1",
            Some(1),
            &[oid.into(), attnum.into(), tenants.into()],
        )
        .or_raise("reading the foreign key");
    let fk = if fk.is_empty() {
        None
    } else {
        let r = fk.first();
        Some((
            r.get::<String>(1).or_raise("conname").unwrap_or_default(),
            r.get::<bool>(2).or_raise("valid").unwrap_or(false),
        ))
    };
    let chk = c
        .select(
            "SELECT conname::text, convalidated FROM pg_catalog.pg_constraint
              WHERE conrelid = $1 AND contype = 'c' AND conname LIKE '%vt\\_not\\_null' ORDER BY conname LIMIT 1",
            Some(1),
            &[oid.into()],
        )
        .or_raise("reading the NOT NULL check");
    let not_null_check = if chk.is_empty() {
        None
    } else {
        let r = chk.first();
        Some((
            r.get::<String>(1).or_raise("conname").unwrap_or_default(),
            r.get::<bool>(2).or_raise("valid").unwrap_or(false),
        ))
    };
    ColumnState {
        exists: true,
        is_uuid,
        not_null,
        fk,
        not_null_check,
        partitioned,
    }
}

fn run_steps(
    c: &mut SpiClient<'_>,
    table: &str,
    steps: &[Step],
    limits: crate::logic::migrate::LockLimits,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for s in steps {
        crate::ddl::run(c, table, &s.name, &s.sql, limits);
        out.push((s.name.clone(), s.sql.clone()));
    }
    out
}

/// Add a nullable tenant column and a NOT VALID foreign key to the tenants table, each
/// step under lock_timeout with retries and logged. The tenant index must be built
/// CONCURRENTLY, which cannot run here: its statement comes back in `ddl` for `\gexec`.
/// With `default_tenant`, a column that does not exist yet is added with that tenant
/// for every existing row, in the catalog (no row is rewritten); rows inserted later
/// still arrive without one. (A new C symbol: 0.1.0's SQL definition, with four
/// arguments, calls `add_tenant_column_wrapper`, kept below until the database runs
/// ALTER EXTENSION UPDATE.)
#[pg_extern(volatile, name = "add_tenant_column")]
#[search_path(pg_catalog, pg_temp)]
fn add_tenant_column_v2(
    tbl: Option<crate::catalog::Regclass>,
    tenant_column: default!(Option<&str>, "'tenant_id'"),
    lock_timeout_ms: default!(Option<i32>, 2000),
    retries: default!(Option<i32>, 5),
    default_tenant: default!(Option<Uuid>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(step, String),
        name!(detail, String),
        name!(ddl, Option<String>),
    ),
> {
    // Not STRICT (default_tenant may be NULL): the other arguments may not.
    fn given<T>(v: Option<T>, arg: &str) -> T {
        v.unwrap_or_else(|| {
            raise(
                PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
                format!("{arg} must not be NULL"),
            )
        })
    }
    TableIterator::new(add_tenant_column_impl(
        given(tbl, "tbl"),
        given(tenant_column, "tenant_column"),
        given(lock_timeout_ms, "lock_timeout_ms"),
        given(retries, "retries"),
        default_tenant,
    ))
}

/// 0.1.0's `add_tenant_column(regclass, text, integer, integer)`, for a database whose
/// extension SQL is still 0.1.0's while this library is installed (no SQL of its own).
#[pg_extern(volatile, sql = false)]
fn add_tenant_column(
    tbl: crate::catalog::Regclass,
    tenant_column: &str,
    lock_timeout_ms: i32,
    retries: i32,
) -> TableIterator<
    'static,
    (
        name!(step, String),
        name!(detail, String),
        name!(ddl, Option<String>),
    ),
> {
    TableIterator::new(add_tenant_column_impl(
        tbl,
        tenant_column,
        lock_timeout_ms,
        retries,
        None,
    ))
}

fn add_tenant_column_impl(
    tbl: crate::catalog::Regclass,
    tenant_column: &str,
    lock_timeout_ms: i32,
    retries: i32,
    default_tenant: Option<Uuid>,
) -> Vec<(String, String, Option<String>)> {
    let tenant_column = crate::catalog::name_arg("tenant_column", tenant_column);
    let limits = crate::ddl::limits(lock_timeout_ms, retries);
    let oid = tbl.oid();
    let rows = Spi::connect_mut(|c| {
        let (name, relname) = require_table(c, oid);
        let tenants = crate::catalog::require_tenants_table(c);
        let st = column_state(c, oid, tenant_column, &tenants);
        if st.exists && !st.is_uuid {
            raise(
                PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
                format!(
                    "column {} of table {name} exists and is not uuid",
                    display_ident(tenant_column)
                ),
            );
        }
        let default = default_tenant.map(|u| uuid::Uuid::from_bytes(*u.as_bytes()));
        if let Some(d) = default {
            if !crate::context::tenant_exists(&tenants, *d.as_bytes()) {
                raise(
                    PgSqlErrorCode::ERRCODE_FOREIGN_KEY_VIOLATION,
                    format!("default_tenant {d} does not exist in {tenants}"),
                );
            }
        }
        let steps = add_steps(&name, &relname, tenant_column, &tenants, &st, default);
        let mut rows: Vec<(String, String, Option<String>)> = run_steps(c, &name, &steps, limits)
            .into_iter()
            .map(|(s, d)| (s, d, None))
            .collect();
        if st.fk.is_none() && st.partitioned {
            rows.push((
                "foreign key deferred".into(),
                format!("{name} is partitioned: PostgreSQL 15 cannot add a NOT VALID foreign key to it; enforce_tenant_column adds it, validated, after the backfill"),
                None,
            ));
        }
        if st.exists && default.is_some() {
            rows.push((
                "default_tenant not applied".into(),
                format!(
                    "{name} already has {}: its rows keep their values (the backfill assigns them)",
                    display_ident(tenant_column)
                ),
                None,
            ));
        }
        if steps.is_empty() && !(st.fk.is_none() && st.partitioned) {
            rows.push((
                "nothing to do".into(),
                format!(
                    "{name} already has {} and its foreign key",
                    display_ident(tenant_column)
                ),
                None,
            ));
        }
        let indexed: bool = c
            .select(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_index i JOIN pg_catalog.pg_attribute a
                                   ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
                                WHERE i.indrelid = $1 AND i.indisvalid AND a.attname = $2)",
                Some(1),
                &[oid.into(), tenant_column.into()],
            )
            .and_then(|t| t.first().get_one())
            .or_raise("looking for a tenant index")
            .unwrap_or(false);
        if !indexed {
            rows.push((
                "index (run with \\gexec)".into(),
                "CREATE INDEX CONCURRENTLY cannot run inside a function or transaction".into(),
                Some(index_ddl(&name, &relname, tenant_column, st.partitioned)),
            ));
        }
        rows
    });
    rows
}

/// After the backfill: validate the foreign key and make the column NOT NULL the
/// online way (CHECK NOT VALID, VALIDATE, SET NOT NULL, drop the CHECK).
#[pg_extern(volatile)]
#[search_path(pg_catalog, pg_temp)]
fn enforce_tenant_column(
    tbl: crate::catalog::Regclass,
    tenant_column: default!(&str, "'tenant_id'"),
    lock_timeout_ms: default!(i32, 2000),
    retries: default!(i32, 5),
) -> TableIterator<'static, (name!(step, String), name!(detail, String))> {
    let tenant_column = crate::catalog::name_arg("tenant_column", tenant_column);
    let limits = crate::ddl::limits(lock_timeout_ms, retries);
    let oid = tbl.oid();
    let rows = Spi::connect_mut(|c| {
        let (name, relname) = require_table(c, oid);
        let tenants = crate::catalog::require_tenants_table(c);
        let st = column_state(c, oid, tenant_column, &tenants);
        if !st.exists {
            raise(
                PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
                format!(
                    "column {} of table {name} does not exist; run add_tenant_column first",
                    display_ident(tenant_column)
                ),
            );
        }
        if st.fk.is_none() && !st.partitioned {
            raise(
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("column {} of table {name} has no foreign key to {tenants}; run add_tenant_column first", display_ident(tenant_column)),
            );
        }
        let steps = enforce_steps(&name, &relname, tenant_column, &tenants, &st);
        let mut rows = run_steps(c, &name, &steps, limits);
        if rows.is_empty() {
            rows.push((
                "nothing to do".into(),
                format!(
                    "{name}.{} is already NOT NULL with a valid foreign key",
                    display_ident(tenant_column)
                ),
            ));
        }
        rows
    });
    TableIterator::new(rows)
}

/// Exact row counts of every table in `schemas`, stored under `label`. An existing
/// label is kept (so re-running migration 000 changes nothing) unless `replace`.
#[pg_extern(volatile)]
#[search_path(pg_catalog, pg_temp)]
fn snapshot_counts(
    label: &str,
    schemas: default!(Vec<Option<String>>, "ARRAY['public']"),
    replace: default!(bool, false),
) -> TableIterator<'static, (name!(table_name, String), name!(row_count, i64))> {
    let schemas = crate::errors::no_null_elements("schemas", schemas);
    if label.trim().is_empty() {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "label must not be empty",
        );
    }
    // (The label is indexed; a btree entry holds at most ~2.7 kB.)
    if label.len() > 1000 {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("label is {} bytes long; at most 1000", label.len()),
        );
    }
    let rows = Spi::connect_mut(|c| {
        crate::catalog::check_schemas(c, &schemas);
        let have: bool = c
            .select(
                "SELECT EXISTS (SELECT 1 FROM vital_tenancy.count_snapshots WHERE label = $1)",
                Some(1),
                &[label.into()],
            )
            .and_then(|t| t.first().get_one())
            .or_raise("reading snapshots")
            .unwrap_or(false);
        if have && !replace {
            notice(&format!(
                "count snapshot \"{label}\" exists; kept (pass replace => true to retake it)"
            ));
        } else {
            c.update(
                "DELETE FROM vital_tenancy.count_snapshots WHERE label = $1",
                None,
                &[label.into()],
            )
            .or_raise("clearing a snapshot");
            let tables: Vec<String> = c
                .select(
                    "SELECT c.oid::pg_catalog.regclass::pg_catalog.text FROM pg_catalog.pg_class c
                       JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                      WHERE n.nspname = ANY ($1) AND c.relkind IN ('r', 'p') AND NOT c.relispartition ORDER BY 1",
                    None,
                    &[schemas.clone().into()],
                )
                .or_raise("listing tables")
                .filter_map(|r| r.get::<String>(1).ok().flatten())
                .collect();
            for t in tables {
                c.update(
                    &format!(
                        "INSERT INTO vital_tenancy.count_snapshots (label, table_name, row_count)
                         SELECT $1, $2, count(*) FROM {t}"
                    ),
                    None,
                    &[label.into(), t.as_str().into()],
                )
                .or_raise("counting a table");
            }
        }
        c.select(
            "SELECT table_name, row_count FROM vital_tenancy.count_snapshots WHERE label = $1 ORDER BY table_name",
            None,
            &[label.into()],
        )
        .or_raise("reading the snapshot")
        .map(|r| (r.get::<String>(1).ok().flatten().unwrap_or_default(), r.get::<i64>(2).ok().flatten().unwrap_or(0)))
        .collect::<Vec<_>>()
    });
    TableIterator::new(rows)
}

fn notice(msg: &str) {
    ereport!(
        NOTICE,
        PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION,
        msg.to_string()
    );
}

// pgrx needs the name!() tuple spelled out in the signature (it rejects a type alias).
#[allow(clippy::type_complexity)]
/// Per-table row counts of two snapshots side by side: the "no data loss" proof.
#[pg_extern(stable)]
#[search_path(pg_catalog, pg_temp)]
fn compare_counts(
    before: &str,
    after: &str,
) -> TableIterator<
    'static,
    (
        name!(table_name, String),
        name!(before, Option<i64>),
        name!(after, Option<i64>),
        name!(difference, Option<i64>),
    ),
> {
    let rows = Spi::connect(|c| {
        for l in [before, after] {
            let have: bool = c
                .select(
                    "SELECT EXISTS (SELECT 1 FROM vital_tenancy.count_snapshots WHERE label = $1)",
                    Some(1),
                    &[l.into()],
                )
                .and_then(|t| t.first().get_one())
                .or_raise("reading snapshots")
                .unwrap_or(false);
            if !have {
                raise(
                    PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                    format!("no count snapshot is labelled \"{l}\""),
                );
            }
        }
        c.select(
            "SELECT COALESCE(b.table_name, a.table_name), b.row_count, a.row_count, a.row_count - b.row_count
               FROM (SELECT * FROM vital_tenancy.count_snapshots WHERE label = $1) b
               FULL JOIN (SELECT * FROM vital_tenancy.count_snapshots WHERE label = $2) a USING (table_name)
              ORDER BY 1",
            None,
            &[before.into(), after.into()],
        )
        .or_raise("comparing snapshots")
        .map(|r| {
            (
                r.get::<String>(1).ok().flatten().unwrap_or_default(),
                r.get::<i64>(2).ok().flatten(),
                r.get::<i64>(3).ok().flatten(),
                r.get::<i64>(4).ok().flatten(),
            )
        })
        .collect::<Vec<_>>()
    });
    TableIterator::new(rows)
}

/// The run's state before a revert: whether there is anything to do (false: already
/// reverted, with a NOTICE); an ERROR for an unknown or running run.
fn revertible(c: &SpiClient<'_>, run_id: i64) -> bool {
    let status: Option<String> = c
        .select(
            "SELECT status FROM vital_tenancy.migration_runs WHERE run_id = $1",
            Some(1),
            &[run_id.into()],
        )
        .and_then(|t| {
            if t.is_empty() {
                Ok(None)
            } else {
                t.first().get_one()
            }
        })
        .or_raise("reading the run");
    match status.as_deref() {
        None => raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("migration run {run_id} does not exist"),
        ),
        Some("reverted") => {
            notice(&format!(
                "migration run {run_id} was already reverted; nothing to do"
            ));
            return false;
        }
        Some("running") => raise_full(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("migration run {run_id} is still running"),
            None,
            Some(
                "Finish it (CALL the same backfill again) or let it fail before reverting.".into(),
            ),
        ),
        Some(_) => {}
    }
    true
}

/// One table of a run, as revert_run needs it.
struct RevertStep {
    table: String,
    /// Its OID as text (a table dropped since may have left it to another).
    oid: String,
    column: String,
    /// Whether it still exists, as the table the run changed.
    exists: bool,
    /// Where the run added the column with a catalog default and stopped before its
    /// batches had walked every row: the default tenant and the checkpoint (the last
    /// key done, None before the first batch). The rows past it hold the default
    /// without a journal entry (census N05).
    unwalked_default: Option<(String, Option<String>)>,
}

/// The run's tables, newest step first.
fn revert_steps(c: &SpiClient<'_>, run_id: i64) -> Vec<RevertStep> {
    c.select(
        "SELECT s.tbl::pg_catalog.text, s.tbl::pg_catalog.oid::pg_catalog.text, s.tenant_column::text,
                    -- Steps of 0.1.0 and 0.2.0 (before their UPDATE) lack dropped_at, and
                    -- 0.1.0's default_tenant: read as jsonb.
                    pg_catalog.to_jsonb(s) ->> 'dropped_at' IS NULL AND EXISTS (SELECT 1 FROM pg_catalog.pg_class k WHERE k.oid = s.tbl),
                    CASE WHEN s.phase = 'queue' THEN pg_catalog.to_jsonb(s) ->> 'default_tenant' END, s.last_key
               FROM vital_tenancy.migration_steps s
              WHERE s.run_id = $1 ORDER BY s.started_at DESC, s.tbl::pg_catalog.text",
        None,
        &[run_id.into()],
    )
    .or_raise("reading the run's steps")
    .map(|r| RevertStep {
        table: r.get::<String>(1).ok().flatten().unwrap_or_default(),
        oid: r.get::<String>(2).ok().flatten().unwrap_or_default(),
        column: r.get::<String>(3).ok().flatten().unwrap_or_default(),
        exists: r.get::<bool>(4).ok().flatten().unwrap_or(false),
        unwalked_default: r
            .get::<String>(5)
            .ok()
            .flatten()
            .map(|d| (d, r.get::<String>(6).ok().flatten())),
    })
    .collect()
}

/// Putting tenants back is not an application write: as in backfill, the tables'
/// triggers (updated_at stamps, audit) do not fire, when the role may say so. Returns
/// the session_replication_role to restore, if it was changed.
fn triggers_off(c: &mut SpiClient<'_>) -> Option<String> {
    let replica: bool = c
        .select(
            "SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user",
            Some(1),
            &[],
        )
        .and_then(|t| t.first().get_one())
        .or_raise("checking the role")
        .unwrap_or(false);
    let prior_role: Option<String> = c
        .select(
            "SELECT pg_catalog.current_setting('session_replication_role')",
            Some(1),
            &[],
        )
        .and_then(|t| t.first().get_one())
        .or_raise("reading session_replication_role");
    if replica {
        c.update(
            "SELECT pg_catalog.set_config('session_replication_role', 'replica', true)",
            None,
            &[],
        )
        .or_raise("setting session_replication_role");
    }
    replica.then(|| prior_role.unwrap_or_else(|| "origin".into()))
}

/// A table dropped since the run: nothing to put back; reported with its journal.
fn revert_dropped(c: &SpiClient<'_>, run_id: i64, table: &str) -> (String, i64, i64) {
    let journaled: i64 = c
        .select(
            "SELECT COALESCE(sum(cardinality(keys)), 0)::bigint FROM vital_tenancy.migration_journal_batches
              WHERE run_id = $1 AND tbl::pg_catalog.oid::pg_catalog.text = $2",
            Some(1),
            &[run_id.into(), table.into()],
        )
        .and_then(|t| t.first().get_one())
        .or_raise("counting the journal")
        .unwrap_or(0);
    notice(&format!(
        "table with OID {table} was dropped since run {run_id}: its {journaled} journaled rows are gone"
    ));
    (format!("(dropped table {table})"), 0, journaled)
}

/// Put one table's journaled tenant values back: (table, reverted, changed since).
fn revert_table(c: &mut SpiClient<'_>, run_id: i64, step: RevertStep) -> (String, i64, i64) {
    let RevertStep {
        table,
        column,
        unwalked_default,
        ..
    } = step;
    let column = column.as_str();
    let oid: pg_sys::Oid = c
        .select(
            "SELECT $1::pg_catalog.regclass::pg_catalog.oid",
            Some(1),
            &[table.as_str().into()],
        )
        .and_then(|t| t.first().get_one())
        .or_raise("resolving a table")
        .unwrap_or(pg_sys::InvalidOid);
    let (pk, pk_type) = primary_key(c, oid, &table);
    let col = quote_ident(column);
    let needs_null: bool = c
        .select(
            "SELECT ($4 OR EXISTS (SELECT 1 FROM vital_tenancy.migration_journal_batches WHERE run_id = $1
                                    AND tbl = $2::pg_catalog.regclass AND old_tenant IS NULL))
                AND (SELECT attnotnull FROM pg_catalog.pg_attribute WHERE attrelid = $2::pg_catalog.regclass AND attname = $3)",
            Some(1),
            &[
                run_id.into(),
                table.as_str().into(),
                column.into(),
                unwalked_default.is_some().into(),
            ],
        )
        .and_then(|t| t.first().get_one())
        .or_raise("checking NOT NULL")
        .unwrap_or(false);
    if needs_null {
        c.update(
            &format!("ALTER TABLE {table} ALTER COLUMN {col} DROP NOT NULL"),
            None,
            &[],
        )
        .or_raise("dropping NOT NULL");
        notice(&format!(
            "{table}.{column}: NOT NULL dropped to restore the pre-migration NULLs"
        ));
    }
    let reverted: i64 = c
        .update(
            &format!(
                "WITH u AS (UPDATE {table} t SET {col} = j.old_tenant
                              FROM vital_tenancy.migration_journal j
                             WHERE j.run_id = $1 AND j.tbl = $2::pg_catalog.regclass
                               AND t.{pk} = j.key::{pk_type}
                               AND t.{col} IS NOT DISTINCT FROM j.new_tenant
                         RETURNING 1)
                 SELECT count(*) FROM u"
            ),
            None,
            &[run_id.into(), table.as_str().into()],
        )
        .and_then(|t| t.first().get_one())
        .or_raise("reverting a table")
        .unwrap_or(0);
    // Rows past the checkpoint of a run that stopped in its first phase still hold the
    // catalog default the run gave them, unjournaled: before the run they had no tenant.
    let unwalked: i64 = match &unwalked_default {
        None => 0,
        Some((tenant, after)) => {
            let n: i64 = c
                .update(
                    &format!(
                        "WITH u AS (UPDATE {table} t SET {col} = NULL
                                     WHERE t.{col} = $1::pg_catalog.uuid AND ($2::pg_catalog.text IS NULL OR t.{pk} > $2::{pk_type})
                                 RETURNING 1)
                         SELECT count(*) FROM u"
                    ),
                    None,
                    &[tenant.as_str().into(), after.as_deref().into()],
                )
                .and_then(|t| t.first().get_one())
                .or_raise("resetting the rows past the run's checkpoint")
                .unwrap_or(0);
            notice(&format!(
                "{table}: the run stopped after key {}; the {n} rows after it still held the tenant {tenant} the run had given them in the catalog, and are reset to NULL",
                after.as_deref().unwrap_or("(start)")
            ));
            n
        }
    };
    let journaled: i64 = c
        .select(
            "SELECT COALESCE(sum(cardinality(keys)), 0)::bigint FROM vital_tenancy.migration_journal_batches WHERE run_id = $1 AND tbl = $2::pg_catalog.regclass",
            Some(1),
            &[run_id.into(), table.as_str().into()],
        )
        .and_then(|t| t.first().get_one())
        .or_raise("counting the journal")
        .unwrap_or(0);
    (table, reverted + unwalked, journaled - reverted)
}

/// Put back the tenant values a migration run journaled, exactly: each row whose
/// tenant is still the one the run wrote gets its old value back; rows changed since
/// are left alone and counted. Drops NOT NULL first where old values were NULL.
#[pg_extern(volatile)]
#[search_path(pg_catalog, pg_temp)]
fn revert_run(
    run_id: i64,
) -> TableIterator<
    'static,
    (
        name!(table_name, String),
        name!(reverted, i64),
        name!(skipped_changed_since, i64),
    ),
> {
    let rows = Spi::connect_mut(|c| {
        if !revertible(c, run_id) {
            return Vec::new();
        }
        let steps = revert_steps(c, run_id);
        let restore = triggers_off(c);
        let mut out = Vec::new();
        for step in steps {
            out.push(if step.exists {
                revert_table(c, run_id, step)
            } else {
                revert_dropped(c, run_id, &step.oid)
            });
        }
        if let Some(role) = restore {
            c.update(
                "SELECT pg_catalog.set_config('session_replication_role', $1, true)",
                None,
                &[role.into()],
            )
            .or_raise("restoring session_replication_role");
        }
        c.update(
            "UPDATE vital_tenancy.migration_runs SET status = 'reverted', finished_at = pg_catalog.now() WHERE run_id = $1",
            None,
            &[run_id.into()],
        )
        .or_raise("marking the run reverted");
        out
    });
    TableIterator::new(rows)
}

/// Mark a named migration run completed (the end of migration 004). A run already
/// completed is reported (migration 004 run again after a later step failed); a name
/// no run has is 22023 (a typo would leave the real run running, census N08). A run
/// with a step that stopped before its last batch is still marked, with a WARNING per
/// step: it can no longer be resumed, only reverted.
#[pg_extern(volatile)]
#[search_path(pg_catalog, pg_temp)]
fn finish_run(run_name: &str) -> Option<i64> {
    Spi::connect_mut(|c| {
        let finished = c
            .update(
                "UPDATE vital_tenancy.migration_runs SET status = 'completed', finished_at = pg_catalog.now()
                  WHERE run_id = (SELECT max(run_id) FROM vital_tenancy.migration_runs WHERE name = $1 AND status = 'running')
                  RETURNING run_id",
                None,
                &[run_name.into()],
            )
            .and_then(|t| if t.is_empty() { Ok(None) } else { t.first().get_one::<i64>() })
            .or_raise("finishing the run");
        let Some(run_id) = finished else {
            let done = crate::catalog::value::<i64>(
                c,
                "SELECT max(run_id) FROM vital_tenancy.migration_runs WHERE name = $1 AND status = 'completed'",
                &[run_name.into()],
            );
            match done {
                Some(id) => notice(&format!(
                    "migration run {id} ({}) is already completed",
                    crate::logic::ident::quote_literal(run_name)
                )),
                None => raise_full(
                    PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                    format!(
                        "no running migration run is named {}",
                        crate::logic::ident::quote_literal(run_name)
                    ),
                    None,
                    Some("migration_runs lists the runs and their names.".into()),
                ),
            }
            return done;
        };
        let open = c
            .select(
                // (0.1.0's steps, before its UPDATE, have no default_tenant: read as jsonb.)
                "SELECT s.tbl::pg_catalog.text, s.phase, s.last_key, s.rows_done, s.rows_total,
                        pg_catalog.to_jsonb(s) ->> 'default_tenant' IS NOT NULL
                   FROM vital_tenancy.migration_steps s WHERE s.run_id = $1 AND s.phase <> 'done' ORDER BY 1",
                None,
                &[run_id.into()],
            )
            .or_raise("reading the run's steps");
        for r in open {
            let table: String = r.get(1).ok().flatten().unwrap_or_default();
            let phase: String = r.get(2).ok().flatten().unwrap_or_default();
            let key: Option<String> = r.get(3).ok().flatten();
            let done: i64 = r.get(4).ok().flatten().unwrap_or(0);
            let total: i64 = r.get(5).ok().flatten().unwrap_or(0);
            let by_default: bool = r.get(6).ok().flatten().unwrap_or(false);
            pgrx::warning!(
                "migration run {run_id}: the backfill of {table} stopped in phase {phase} after key {} ({done} of {total} rows); finished, it cannot be resumed{}",
                key.as_deref().unwrap_or("(start)"),
                if by_default && phase == "queue" {
                    ": the rows past that key hold the catalog default tenant, unclassified; revert_run() resets them"
                } else {
                    ""
                }
            );
        }
        Some(run_id)
    })
}

fn md_escape(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

fn md_table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    out.push_str(&format!("| {} |\n", header.join(" | ")));
    out.push_str(&format!(
        "|{}|\n",
        header.iter().map(|_| "---").collect::<Vec<_>>().join("|")
    ));
    if rows.is_empty() {
        out.push_str(&format!(
            "| {} |\n",
            header.iter().map(|_| "–").collect::<Vec<_>>().join(" | ")
        ));
    }
    for r in rows {
        out.push_str(&format!(
            "| {} |\n",
            r.iter()
                .map(|c| md_escape(c))
                .collect::<Vec<_>>()
                .join(" | ")
        ));
    }
    out.push('\n');
}

fn query_rows(
    c: &SpiClient<'_>,
    sql: &str,
    args: &[pgrx::datum::DatumWithOid<'_>],
    ncols: usize,
) -> Vec<Vec<String>> {
    c.select(sql, None, args)
        .or_raise("building the report")
        .map(|r| {
            (1..=ncols)
                .map(|i| r.get::<String>(i).ok().flatten().unwrap_or_default())
                .collect()
        })
        .collect()
}

/// The migration summary report, in Markdown: counts before and after, the tenant
/// distribution, rows per rule, validation, durations, and the run id to revert.
#[pg_extern(stable)]
#[search_path(pg_catalog, pg_temp)]
fn migration_report(run_name: default!(&str, "'vital-multi-tenant'")) -> String {
    Spi::connect(|c| {
        let run = c
            .select(
                "SELECT run_id, status, started_at::text, COALESCE(finished_at::text, '–'),
                        COALESCE(round(extract(epoch FROM finished_at - started_at) * 1000)::text, '–')
                   FROM vital_tenancy.migration_runs WHERE name = $1 ORDER BY run_id DESC LIMIT 1",
                Some(1),
                &[run_name.into()],
            )
            .or_raise("reading the run");
        if run.is_empty() {
            raise(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("no migration run is named \"{run_name}\""),
            );
        }
        let r = run.first();
        let run_id: i64 = r.get(1).or_raise("run_id").unwrap_or(0);
        let status: String = r.get(2).or_raise("status").unwrap_or_default();
        let started: String = r.get(3).or_raise("started").unwrap_or_default();
        let finished: String = r.get(4).or_raise("finished").unwrap_or_default();
        let ms: String = r.get(5).or_raise("duration").unwrap_or_default();
        let mut out = format!(
            "# Migration report: {run_name}\n\n- run id: **{run_id}** ({status})\n- started: {started}\n- finished: {finished}\n- backfill wall time: {ms} ms\n\n"
        );

        out.push_str("## Row counts before and after\n\n");
        let have_counts: bool = c
            .select(
                "SELECT count(DISTINCT label) = 2 FROM vital_tenancy.count_snapshots WHERE label IN ('pre_migration', 'post_migration')",
                Some(1),
                &[],
            )
            .and_then(|t| t.first().get_one())
            .or_raise("reading snapshots")
            .unwrap_or(false);
        if have_counts {
            let rows = query_rows(
                c,
                "SELECT table_name, COALESCE(before::text, '–'), COALESCE(after::text, '–'),
                        CASE WHEN difference = 0 THEN '0' WHEN difference IS NULL THEN 'new table'
                             WHEN table_name::regclass = vital_tenancy.tenants_table() THEN difference::text || ' (tenants created by 002)'
                             ELSE difference::text || ' ⚠' END
                   FROM vital_tenancy.compare_counts('pre_migration', 'post_migration')",
                &[],
                4,
            );
            md_table(&mut out, &["table", "before", "after", "difference"], &rows);
        } else {
            out.push_str("Snapshots `pre_migration` and `post_migration` are not both present (migrations 000 and 005 take them).\n\n");
        }

        out.push_str("## Tenant distribution\n\n");
        let rows = query_rows(
            c,
            "SELECT s.tbl::text, COALESCE(d.tenant_name, d.tenant_id::text), d.row_count::text
               FROM vital_tenancy.migration_steps s
               CROSS JOIN LATERAL vital_tenancy.tenant_distribution_of(s.tbl, s.tenant_column::text) d
              WHERE s.run_id = $1 ORDER BY 1, 2",
            &[run_id.into()],
            3,
        );
        md_table(&mut out, &["table", "tenant", "rows"], &rows);

        out.push_str("## Rows assigned, per table and rule\n\n");
        let rows = query_rows(
            c,
            // (Read through to_jsonb: a database whose extension SQL is still 0.1.0's,
            // with this library installed, has no rows_rewritten / default_tenant yet.)
            "SELECT s.tbl::text, s.classifier, COALESCE(r.key, '(all)'), COALESCE(r.value, s.rows_changed::text),
                    s.rows_done::text, s.rows_changed::text,
                    COALESCE(pg_catalog.to_jsonb(s) ->> 'rows_rewritten', s.rows_changed::text), s.rows_failed::text,
                    COALESCE(pg_catalog.to_jsonb(s) ->> 'default_tenant', '')
               FROM vital_tenancy.migration_steps s
               LEFT JOIN LATERAL jsonb_each_text(s.rule_counts) r ON true
              WHERE s.run_id = $1 ORDER BY s.started_at, 1, 3",
            &[run_id.into()],
            9,
        );
        md_table(
            &mut out,
            &[
                "table",
                "classifier",
                "tenant / rule (preview)",
                "rows",
                "rows walked",
                "rows given a tenant",
                "rows rewritten",
                "unclassified",
                "catalog default (column added)",
            ],
            &rows,
        );

        out.push_str("## Validation\n\n");
        let rows = query_rows(
            c,
            "SELECT check_name, severity, COALESCE(table_name, ''), failing::text, COALESCE(detail, '')
               FROM vital_tenancy.validate() WHERE failing > 0",
            &[],
            5,
        );
        if rows.is_empty() {
            out.push_str("Every check passes (no blocking failures, no warnings).\n\n");
        } else {
            md_table(
                &mut out,
                &["check", "severity", "table", "failing", "detail"],
                &rows,
            );
        }

        out.push_str("## Index coverage\n\n");
        let doc = crate::advice::coverage_document(c);
        match doc["coverage_percent"].as_f64() {
            Some(v) => out.push_str(&format!(
                "**{v}%** (the plan's target: 95%); measured from {}. `vital_tenancy.query_advice()` proposes the indexes that would serve the rest.\n\n",
                doc["source"].as_str().unwrap_or_default()
            )),
            None => out.push_str("No reads of tenant tables recorded yet (pg_stat_statements or pg_stat_user_tables).\n\n"),
        }

        out.push_str("## Durations (migration_metrics)\n\n");
        let rows = query_rows(
            c,
            "SELECT migration_name, phase, records_processed::text, records_failed::text, duration_ms::text
               FROM vital_tenancy.migration_metrics WHERE pg_catalog.left(migration_name, pg_catalog.length($1) + 1) = $1 || ':' ORDER BY id",
            &[run_name.into()],
            5,
        );
        md_table(
            &mut out,
            &["migration", "phase", "records", "failed", "ms"],
            &rows,
        );

        out.push_str(&format!(
            "## Revert\n\nTo put every journaled tenant value back:\n\n```sql\nSELECT * FROM vital_tenancy.revert_run({run_id});\n```\n\nor `scripts/migrate CONNINFO --revert {run_id}`.\n"
        ));
        out
    })
}

/// Rows per tenant of one table (for reports and validation).
#[pg_extern(stable)]
#[search_path(pg_catalog, pg_temp)]
fn tenant_distribution_of(
    tbl: crate::catalog::Regclass,
    tenant_column: default!(&str, "'tenant_id'"),
) -> TableIterator<
    'static,
    (
        name!(tenant_id, Option<pgrx::Uuid>),
        name!(tenant_name, Option<String>),
        name!(row_count, i64),
    ),
> {
    let tenant_column = crate::catalog::name_arg("tenant_column", tenant_column);
    let oid = tbl.oid();
    let rows = Spi::connect(|c| {
        let (name, _, _) = names(c, oid);
        let tenants = crate::catalog::require_tenants_table(c);
        let is_uuid = crate::catalog::value::<bool>(
            c,
            "SELECT a.atttypid = 'pg_catalog.uuid'::pg_catalog.regtype FROM pg_catalog.pg_attribute a
              WHERE a.attrelid = $1 AND a.attname = $2 AND a.attnum > 0 AND NOT a.attisdropped",
            &[oid.into(), tenant_column.into()],
        );
        match is_uuid {
            None => raise(
                PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
                format!(
                    "column {} of table {name} does not exist",
                    display_ident(tenant_column)
                ),
            ),
            Some(false) => raise(
                PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
                format!(
                    "column {} of table {name} is not uuid",
                    display_ident(tenant_column)
                ),
            ),
            Some(true) => {}
        }
        let col = quote_ident(tenant_column);
        c.select(
            &format!(
                "SELECT x.{col}, t.name::text, count(*) FROM {name} x LEFT JOIN {tenants} t ON t.id = x.{col}
                  GROUP BY 1, 2 ORDER BY 3 DESC"
            ),
            None,
            &[],
        )
        .or_raise("counting rows per tenant")
        .map(|r| {
            (
                r.get::<pgrx::Uuid>(1).ok().flatten(),
                r.get::<String>(2).ok().flatten(),
                r.get::<i64>(3).ok().flatten().unwrap_or(0),
            )
        })
        .collect::<Vec<_>>()
    });
    TableIterator::new(rows)
}
