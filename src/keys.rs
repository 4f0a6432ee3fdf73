//! Tenant-scoped keys and references: `tenant_keys_plan()`, `apply_tenant_keys()`.
//!
//! A unique key of a tenant table that does not include the tenant column answers for
//! every tenant: inserting a name tells whether an invisible tenant uses it (23505, or
//! `ON CONFLICT DO NOTHING` inserting nothing), and lets one tenant squat another's
//! names. A foreign key is checked without row level security: a tenant may point at
//! another tenant's row, and success vs 23503 tells whether that id exists.
//!
//! The keys step makes every unique key (not the primary key: uuid ids) per tenant, as
//! `(tenant column, key...)`, online: the unique index `CONCURRENTLY` first (for
//! `\gexec`), then the constraint re-attached `USING INDEX` under `lock_timeout` with
//! retries. References between tenant tables get a guard trigger: a child row's parent
//! must belong to the child's tenant or to Platform. A plain composite foreign key
//! `(tenant_id, parent_id)` would forbid the Platform parents the data is full of
//! (every tenant's assignments point at Platform tools), so the guard is a BEFORE
//! trigger that looks the parent up as the extension's owner and raises the same 23503
//! whether the parent does not exist or belongs to another tenant: no oracle. The key
//! computation is shared with the Citus readiness path, which needs the same change
//! (and the primary key too).
//!
//! The guard (`tenant_reference_check()`) is a C trigger function, SECURITY INVOKER
//! and not executable by PUBLIC: 0.2.0's PL/pgSQL one was SECURITY DEFINER and took the
//! parent from its trigger arguments, so any role could attach it to a temp table and
//! have a view of its choosing read as the superuser. Now it reads nothing from its
//! arguments: it finds the foreign key its trigger was created for in the catalog,
//! refuses to run for anything else, decides as the writer what to check
//! (`logic::fk::guard_check`), and only then looks the parent up as the owner.

use crate::errors::{raise_full, OrRaise};
use crate::logic::fk::{guard_check, GuardCheck};
use crate::logic::ident::quote_ident;
use crate::logic::migrate::derived_name;
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use std::num::NonZeroUsize;

/// A unique key (or primary key) that does not include the tenant column, and the DDL
/// that makes it include it.
pub(crate) struct KeyChange {
    pub con: String,
    pub primary: bool,
    pub columns: Vec<String>,
    /// Name of the unique index `(tenant column, columns...)`.
    pub index: String,
    /// `CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS ...` (outside a transaction).
    pub index_ddl: String,
    /// `ALTER TABLE ... DROP CONSTRAINT c, ADD CONSTRAINT c ... USING INDEX ix`.
    pub swap_ddl: String,
}

/// The names of a table's columns by attribute number.
pub(crate) fn column_names(c: &SpiClient<'_>, oid: pg_sys::Oid, keys: &[i16]) -> Vec<String> {
    keys.iter()
        .map(|k| {
            crate::catalog::value::<String>(
                c,
                "SELECT attname::text FROM pg_catalog.pg_attribute WHERE attrelid = $1 AND attnum = $2",
                &[oid.into(), (*k).into()],
            )
            .unwrap_or_default()
        })
        .collect()
}

/// The unique constraints (and the primary key when `include_primary`) of a table that
/// do not include its tenant column. `table` is regclass text, `relname` the bare name.
pub(crate) fn key_changes(
    c: &SpiClient<'_>,
    oid: pg_sys::Oid,
    table: &str,
    relname: &str,
    tenant_column: &str,
    tenant_attnum: i16,
    include_primary: bool,
) -> Vec<KeyChange> {
    let keys: Vec<(String, String, Vec<i16>)> = c
        .select(
            "SELECT conname::text, contype::text, conkey FROM pg_catalog.pg_constraint
              WHERE conrelid = $1 AND contype IN ('p', 'u') AND NOT ($2 = ANY (conkey))
                AND ($3 OR contype = 'u') ORDER BY contype, conname",
            None,
            &[oid.into(), tenant_attnum.into(), include_primary.into()],
        )
        .or_raise("reading keys")
        .map(|r| {
            (
                r.get::<String>(1).ok().flatten().unwrap_or_default(),
                r.get::<String>(2).ok().flatten().unwrap_or_default(),
                r.get::<Vec<i16>>(3).ok().flatten().unwrap_or_default(),
            )
        })
        .collect();
    keys.into_iter()
        .map(|(con, kind, key)| {
            let columns = column_names(c, oid, &key);
            let qcols: Vec<String> = std::iter::once(tenant_column.to_string())
                .chain(columns.iter().cloned())
                .map(|x| quote_ident(&x))
                .collect();
            let index = derived_name(relname, "tenant", &format!("{}_key", columns.join("_")));
            let index_ddl = format!(
                "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS {} ON {table} ({})",
                quote_ident(&index),
                qcols.join(", ")
            );
            let primary = kind == "p";
            let swap_ddl = format!(
                "ALTER TABLE {table} DROP CONSTRAINT {}, ADD CONSTRAINT {} {} USING INDEX {}",
                quote_ident(&con),
                quote_ident(&con),
                if primary { "PRIMARY KEY" } else { "UNIQUE" },
                quote_ident(&index)
            );
            KeyChange {
                con,
                primary,
                columns,
                index,
                index_ddl,
                swap_ddl,
            }
        })
        .collect()
}

/// One planned change.
struct PlanRow {
    table: String,
    change: String,
    /// The unique index it needs first, and the DDL that builds it (for `\gexec`).
    index: Option<(String, String)>,
    ddl: Option<String>,
}

/// Managed tenant tables: (oid, regclass text, relname, tenant column, its attnum).
fn managed(c: &SpiClient<'_>) -> Vec<(pg_sys::Oid, String, String, String, i16)> {
    c.select(
        "SELECT c.oid, c.oid::pg_catalog.regclass::pg_catalog.text, c.relname::text, r.tenant_column::text, a.attnum
           FROM vital_tenancy.rls_tables r
           JOIN pg_catalog.pg_class c ON c.oid = r.tbl
           JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attname = r.tenant_column AND NOT a.attisdropped
          ORDER BY 2",
        None,
        &[],
    )
    .or_raise("reading the managed tables")
    .map(|r| {
        (
            r.get::<pg_sys::Oid>(1).ok().flatten().unwrap_or(pg_sys::InvalidOid),
            r.get::<String>(2).ok().flatten().unwrap_or_default(),
            r.get::<String>(3).ok().flatten().unwrap_or_default(),
            r.get::<String>(4).ok().flatten().unwrap_or_default(),
            r.get::<i16>(5).ok().flatten().unwrap_or_default(),
        )
    })
    .collect()
}

fn plan(c: &SpiClient<'_>) -> Vec<PlanRow> {
    let mut out = Vec::new();
    for (oid, table, relname, tcol, tatt) in managed(c) {
        for k in key_changes(c, oid, &table, &relname, &tcol, tatt, false) {
            out.push(PlanRow {
                table: table.clone(),
                change: format!(
                    "unique constraint {} ({}) becomes per tenant: ({}, {})",
                    quote_ident(&k.con),
                    k.columns.join(", "),
                    tcol,
                    k.columns.join(", ")
                ),
                index: Some((k.index, k.index_ddl)),
                ddl: Some(k.swap_ddl),
            });
        }
        // Unique indexes that back no constraint: reported, recreated by the DBA.
        let plain: Vec<String> = c
            .select(
                "SELECT i.indexrelid::pg_catalog.regclass::text FROM pg_catalog.pg_index i
                  WHERE i.indrelid = $1 AND i.indisunique AND NOT ($2 = ANY (i.indkey::int2[]))
                    AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint k WHERE k.conindid = i.indexrelid)
                  ORDER BY 1",
                None,
                &[oid.into(), tatt.into()],
            )
            .or_raise("reading unique indexes")
            .filter_map(|r| r.get::<String>(1).ok().flatten())
            .collect();
        for ix in plain {
            out.push(PlanRow {
                table: table.clone(),
                change: format!("unique index {ix} does not include {tcol}: recreate it with {tcol} first (not done automatically)"),
                index: None,
                ddl: None,
            });
        }
    }
    // References between managed tables, single-column, without their guard yet. The
    // trigger DDL is built by PostgreSQL (format %I/%L).
    let refs = c
        .select(
            "SELECT k.conrelid::pg_catalog.regclass::text,
                    pg_catalog.format('reference %I (%I) -> %s (%I): the parent must belong to the row''s tenant or to Platform',
                                      k.conname, ca.attname, k.confrelid::pg_catalog.regclass, pa.attname),
                    pg_catalog.format('CREATE OR REPLACE TRIGGER %I BEFORE INSERT OR UPDATE OF %I, %I ON %s FOR EACH ROW EXECUTE FUNCTION vital_tenancy.tenant_reference_check(%L, %L, %L, %L, %L)',
                                      t.name, ca.attname, cr.tenant_column, k.conrelid::pg_catalog.regclass,
                                      k.confrelid::pg_catalog.regclass::text, ca.attname, pa.attname, cr.tenant_column, pr.tenant_column)
               FROM pg_catalog.pg_constraint k
               JOIN vital_tenancy.rls_tables cr ON cr.tbl = k.conrelid
               JOIN vital_tenancy.rls_tables pr ON pr.tbl = k.confrelid
               JOIN pg_catalog.pg_attribute ca ON ca.attrelid = k.conrelid AND ca.attnum = k.conkey[1]
               JOIN pg_catalog.pg_attribute pa ON pa.attrelid = k.confrelid AND pa.attnum = k.confkey[1]
               CROSS JOIN LATERAL (SELECT pg_catalog.left('vt_tenant_ref_' || k.conname, 63) AS name) t
              WHERE k.contype = 'f' AND pg_catalog.cardinality(k.conkey) = 1 AND ca.attname <> cr.tenant_column
                AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger g WHERE g.tgrelid = k.conrelid AND g.tgname = t.name)
              ORDER BY 1, 2",
            None,
            &[],
        )
        .or_raise("reading references between tenant tables");
    for r in refs {
        out.push(PlanRow {
            table: r.get::<String>(1).ok().flatten().unwrap_or_default(),
            change: r.get::<String>(2).ok().flatten().unwrap_or_default(),
            index: None,
            ddl: r.get::<String>(3).ok().flatten(),
        });
    }
    out
}

/// What the keys step will do on the tables under tenant RLS: each unique key made per
/// tenant (the index DDL to run first with `\gexec`, then the constraint swap) and each
/// reference given its tenant guard. Empty once done. Writes nothing.
#[pg_extern(stable)]
#[search_path(pg_catalog, pg_temp)]
fn tenant_keys_plan() -> TableIterator<
    'static,
    (
        name!(table_name, String),
        name!(change, String),
        name!(index_ddl, Option<String>),
        name!(ddl, Option<String>),
    ),
> {
    TableIterator::new(Spi::connect(|c| {
        plan(c)
            .into_iter()
            .map(|r| (r.table, r.change, r.index.map(|i| i.1), r.ddl))
            .collect::<Vec<_>>()
    }))
}

/// Apply the keys step: swap each unique constraint onto its per-tenant index (which
/// must exist: run the plan's index DDL with `\gexec` first) and create each reference
/// guard, every statement under `lock_timeout` with retries. Idempotent.
#[pg_extern(volatile)]
#[search_path(pg_catalog, pg_temp)]
fn apply_tenant_keys(
    lock_timeout_ms: default!(i32, 2000),
    retries: default!(i32, 5),
) -> TableIterator<'static, (name!(table_name, String), name!(change, String))> {
    let mut done = Vec::new();
    Spi::connect_mut(|c| {
        let rows = plan(c);
        // Every index first, so that nothing is half done when one is missing.
        for r in &rows {
            let Some((ix, _)) = &r.index else { continue };
            let valid = crate::catalog::value::<bool>(
                c,
                "SELECT i.indisvalid FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class x ON x.oid = i.indexrelid
                  WHERE x.relname = $1 AND i.indrelid = $2::pg_catalog.regclass",
                &[ix.as_str().into(), r.table.as_str().into()],
            );
            if valid != Some(true) {
                raise_full(
                    PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                    format!(
                        "{}: {}, but its index {} does not exist or is not valid",
                        r.table,
                        r.change,
                        quote_ident(ix)
                    ),
                    None,
                    Some("Run the index_ddl of vital_tenancy.tenant_keys_plan() first, outside a transaction (psql \\gexec), as migration 007 does.".into()),
                );
            }
        }
        for PlanRow {
            table, change, ddl, ..
        } in rows
        {
            let Some(ddl) = ddl else { continue };
            c.update(
                "SELECT vital_tenancy.run_ddl($1, $2, $3, $4, $5)",
                None,
                &[
                    ddl.as_str().into(),
                    "tenant keys".into(),
                    table.as_str().into(),
                    lock_timeout_ms.into(),
                    retries.into(),
                ],
            )
            .or_raise("applying a tenant key change");
            done.push((table, change));
        }
    });
    TableIterator::new(done)
}

/// The reference a guard trigger was created for, as the catalog records it.
struct Reference {
    /// The parent table (regclass text) and its key and tenant columns (quoted).
    parent: String,
    parent_column: String,
    parent_tenant_column: String,
    /// Whether the parent table is shared (Platform's rows readable by every tenant).
    parent_shared: bool,
    child_column: String,
    child_attnum: i16,
    child_type: pg_sys::Oid,
    child_tenant_attnum: i16,
}

/// The reference trigger `tgname` on `relid` guards: a single-column foreign key from a
/// permanent managed table to a permanent managed table (or that key with the tenant
/// column added, as `prepare_for_citus()` rewrites it), the trigger named after it
/// and calling this function, its arguments exactly that reference. `None` for any
/// other trigger (one a role attached to a temp table with arguments of its choosing).
fn recorded_reference(relid: pg_sys::Oid, tgname: &str, args: &[String]) -> Option<Reference> {
    if args.len() != 5 {
        return None;
    }
    Spi::connect(|c| {
        let rows = c
            .select(
                "SELECT k.confrelid::pg_catalog.regclass::pg_catalog.text, pg_catalog.quote_ident(pa.attname),
                        pg_catalog.quote_ident(pr.tenant_column), pr.shared, ca.attname::pg_catalog.text,
                        ca.attnum, ca.atttypid, ct.attnum
                   FROM pg_catalog.pg_trigger g
                   JOIN pg_catalog.pg_class c ON c.oid = g.tgrelid
                   JOIN pg_catalog.pg_constraint k ON k.conrelid = g.tgrelid AND k.contype = 'f'
                        AND g.tgname = pg_catalog.left('vt_tenant_ref_' || k.conname, 63)
                   JOIN pg_catalog.pg_class p ON p.oid = k.confrelid
                   JOIN vital_tenancy.rls_tables cr ON cr.tbl = k.conrelid
                   JOIN vital_tenancy.rls_tables pr ON pr.tbl = k.confrelid
                   JOIN pg_catalog.pg_attribute ca ON ca.attrelid = k.conrelid AND ca.attnum = ANY (k.conkey)
                   JOIN pg_catalog.pg_attribute pa ON pa.attrelid = k.confrelid
                        AND pa.attnum = k.confkey[pg_catalog.array_position(k.conkey, ca.attnum)]
                   JOIN pg_catalog.pg_attribute ct ON ct.attrelid = k.conrelid AND ct.attname = cr.tenant_column
                        AND ct.attnum > 0 AND NOT ct.attisdropped AND ct.atttypid = 'pg_catalog.uuid'::pg_catalog.regtype
                  WHERE g.tgrelid = $1 AND g.tgname = $2 AND NOT g.tgisinternal
                    AND g.tgfoid = 'vital_tenancy.tenant_reference_check()'::pg_catalog.regprocedure
                    AND c.relpersistence = 'p' AND p.relpersistence = 'p' AND p.relkind IN ('r', 'p')
                    -- the key as 007 found it, or with the tenant column added by prepare_for_citus()
                    AND (pg_catalog.cardinality(k.conkey) = 1
                         OR (pg_catalog.cardinality(k.conkey) = 2 AND ct.attnum = ANY (k.conkey) AND ca.attnum <> ct.attnum))
                    AND pg_catalog.to_regclass($3) = k.confrelid AND ca.attname = $4 AND pa.attname = $5
                    AND cr.tenant_column = $6 AND pr.tenant_column = $7",
                Some(1),
                &[
                    relid.into(),
                    tgname.into(),
                    args[0].as_str().into(),
                    args[1].as_str().into(),
                    args[2].as_str().into(),
                    args[3].as_str().into(),
                    args[4].as_str().into(),
                ],
            )
            .or_raise("reading the reference of a tenant guard");
        if rows.is_empty() {
            return None;
        }
        let r = rows.first();
        Some(Reference {
            parent: r
                .get::<String>(1)
                .or_raise("reading a reference")
                .unwrap_or_default(),
            parent_column: r
                .get::<String>(2)
                .or_raise("reading a reference")
                .unwrap_or_default(),
            parent_tenant_column: r
                .get::<String>(3)
                .or_raise("reading a reference")
                .unwrap_or_default(),
            parent_shared: r
                .get::<bool>(4)
                .or_raise("reading a reference")
                .unwrap_or(false),
            child_column: r
                .get::<String>(5)
                .or_raise("reading a reference")
                .unwrap_or_default(),
            child_attnum: r
                .get::<i16>(6)
                .or_raise("reading a reference")
                .unwrap_or_default(),
            child_type: r
                .get::<pg_sys::Oid>(7)
                .or_raise("reading a reference")
                .unwrap_or(pg_sys::InvalidOid),
            child_tenant_attnum: r
                .get::<i16>(8)
                .or_raise("reading a reference")
                .unwrap_or_default(),
        })
    })
}

fn refuse_trigger(table: &str, trigger: &str) -> ! {
    raise_full(
        PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
        format!(
            "vital_tenancy.tenant_reference_check() runs only as the reference guards vital_tenancy creates: trigger {} on {table} is not one",
            quote_ident(trigger)
        ),
        Some("A guard is a BEFORE INSERT OR UPDATE ... FOR EACH ROW trigger named vt_tenant_ref_<foreign key> on a permanent table under tenant RLS, for a single-column foreign key to another such table, with exactly that reference as its arguments.".into()),
        Some("If a table, column or foreign key was renamed since migration 007, drop the trigger and run SELECT * FROM vital_tenancy.apply_tenant_keys() again.".into()),
    )
}

/// The guard of a reference between tenant tables (a BEFORE INSERT OR UPDATE row
/// trigger created by `apply_tenant_keys()`): the parent must belong to the row's
/// tenant, or to Platform where the parent table is shared. A writer under row level
/// security that may not write the row's tenant is left to the policies' one error;
/// otherwise the parent is looked up as the extension's owner and a missing parent and
/// another tenant's parent give the same 23503.
#[pg_trigger(sql = false)]
fn tenant_reference_check<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, PgHeapTupleError> {
    let relid = trigger.relid().unwrap_or(pg_sys::InvalidOid);
    let table = Spi::connect(|c| crate::catalog::table_name(c, relid));
    let tgname = trigger.name().unwrap_or("?").to_string();
    let row_before = matches!(trigger.when(), Ok(PgTriggerWhen::Before))
        && matches!(trigger.level(), PgTriggerLevel::Row)
        && matches!(
            trigger.op(),
            Ok(PgTriggerOperation::Insert | PgTriggerOperation::Update)
        );
    if !row_before {
        refuse_trigger(&table, &tgname);
    }
    let args = trigger.extra_args().unwrap_or_default();
    // As the writer, before any switch of user: is it under the child table's row level
    // security, and which tenants may it write there?
    // SAFETY: a catalog check of the current user's RLS on an existing relation.
    let under_rls = unsafe { pg_sys::check_enable_rls(relid, pg_sys::InvalidOid, true) }
        == pg_sys::CheckEnableRlsResult::RLS_ENABLED as i32;
    let writable = if under_rls {
        crate::context::writable_tenants()
    } else {
        Vec::new()
    };
    let Some(reference) =
        crate::context::as_extension_owner(|| recorded_reference(relid, &tgname, &args))
    else {
        refuse_trigger(&table, &tgname)
    };
    let data = trigger.trigger_data();
    let tuple = if matches!(trigger.op(), Ok(PgTriggerOperation::Update)) {
        data.tg_newtuple
    } else {
        data.tg_trigtuple
    };
    let attr = |attnum: i16| -> Option<pg_sys::Datum> {
        let n = NonZeroUsize::new(usize::try_from(attnum).ok()?)?;
        // SAFETY: the trigger's tuple of its own relation, whose descriptor describes it;
        // attnum is a live column of that relation (read from pg_attribute above).
        unsafe { pgrx::heap_getattr_raw(tuple, n, (*data.tg_relation).rd_att) }
    };
    let Some(key) = attr(reference.child_attnum) else {
        return Ok(trigger.new());
    };
    // SAFETY: the tenant column is of type uuid (checked in recorded_reference).
    let child_tenant = attr(reference.child_tenant_attnum)
        .and_then(|d| unsafe { pgrx::Uuid::from_datum(d, false) })
        .map(|u| *u.as_bytes());
    let tenants = match guard_check(
        child_tenant,
        under_rls,
        &writable,
        reference.parent_shared,
        crate::context::platform_bytes(),
    ) {
        GuardCheck::LeaveToRowSecurity => return Ok(trigger.new()),
        GuardCheck::ParentAmong(t) => t,
    };
    let Reference {
        parent,
        parent_column,
        parent_tenant_column,
        parent_shared,
        child_column,
        child_type,
        ..
    } = reference;
    let ids: Vec<pgrx::Uuid> = tenants.iter().map(|t| pgrx::Uuid::from_bytes(*t)).collect();
    let (found, key_text) = crate::context::as_extension_owner(|| {
        Spi::connect(|c| {
            // SAFETY: the datum is the row's own value of the column typed child_type.
            let key_arg = unsafe { DatumWithOid::new(key, child_type) };
            let rows = c
                .select(
                    &format!(
                        "SELECT EXISTS (SELECT 1 FROM {parent} p WHERE p.{parent_column} OPERATOR(pg_catalog.=) $1
                                           AND p.{parent_tenant_column} OPERATOR(pg_catalog.=) ANY ($2)),
                                $1::pg_catalog.text"
                    ),
                    Some(1),
                    &[key_arg, ids.into()],
                )
                .or_raise("looking up the parent of a tenant reference");
            let r = rows.first();
            (
                r.get::<bool>(1)
                    .or_raise("looking up a parent")
                    .unwrap_or(false),
                r.get::<String>(2)
                    .or_raise("looking up a parent")
                    .unwrap_or_default(),
            )
        })
    });
    if found {
        return Ok(trigger.new());
    }
    let tenant = child_tenant
        .map(|t| crate::logic::context::format_uuid(&t))
        .unwrap_or_else(|| "(none)".into());
    raise_full(
        PgSqlErrorCode::ERRCODE_FOREIGN_KEY_VIOLATION,
        format!(
            "insert or update on table {table} violates a tenant reference: key ({child_column})=({key_text}) is not present in table {parent} for tenant {tenant}{}",
            if parent_shared { " or Platform" } else { "" }
        ),
        Some(if parent_shared {
            "A row may reference only rows of its own tenant or of Platform.".into()
        } else {
            format!("{parent} is not shared: a row may reference only rows of its own tenant.")
        }),
        None,
    )
}
