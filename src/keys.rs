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
                    pg_catalog.format('reference %I (%I) -> %s (%I): the parent must belong to the row''s tenant, or to Platform where the parent table is shared',
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
    // Every referenced tenant table, without its parent guard yet.
    let parents = c
        .select(
            "SELECT p.tbl::pg_catalog.regclass::pg_catalog.text,
                    pg_catalog.format('parent guard %I: a row that other tenants'' rows reference keeps its tenant, and a delete never reaches another tenant''s rows', $1::text),
                    pg_catalog.format('CREATE OR REPLACE TRIGGER %I BEFORE UPDATE OF %I OR DELETE ON %s FOR EACH ROW EXECUTE FUNCTION vital_tenancy.tenant_parent_check()',
                                      $1::text, p.tenant_column, p.tbl::pg_catalog.regclass)
               FROM vital_tenancy.rls_tables p
              WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_constraint k JOIN vital_tenancy.rls_tables cr ON cr.tbl = k.conrelid
                             WHERE k.contype = 'f' AND k.confrelid = p.tbl)
                AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger g WHERE g.tgrelid = p.tbl AND g.tgname = $1)
                -- an extension not yet updated to 0.3.0 (this library, older SQL) has no parent guard
                AND pg_catalog.to_regprocedure('vital_tenancy.tenant_parent_check()') IS NOT NULL
              ORDER BY 1",
            None,
            &[PARENT_GUARD.into()],
        )
        .or_raise("reading the referenced tenant tables");
    for r in parents {
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
    let limits = crate::ddl::limits(lock_timeout_ms, retries);
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
            crate::ddl::run(c, &table, "tenant keys", &ddl, limits);
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

/// ERROR 42501: a guard function (`function`, which runs only as `guard`) fired by a
/// trigger that is not that guard.
fn refuse_guard(
    function: &str,
    guard: &str,
    table: &str,
    trigger: &str,
    detail: String,
    hint: Option<String>,
) -> ! {
    raise_full(
        PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
        format!(
            "vital_tenancy.{function}() runs only as the {guard} vital_tenancy creates: trigger {} on {table} is not one",
            quote_ident(trigger)
        ),
        Some(detail),
        hint,
    )
}

fn refuse_trigger(table: &str, trigger: &str) -> ! {
    refuse_guard(
        "tenant_reference_check",
        "reference guards",
        table,
        trigger,
        "A guard is a BEFORE INSERT OR UPDATE ... FOR EACH ROW trigger named vt_tenant_ref_<foreign key> on a permanent table under tenant RLS, for a single-column foreign key to another such table, with exactly that reference as its arguments.".into(),
        Some("If a table, column or foreign key was renamed since migration 007, drop the trigger and run SELECT * FROM vital_tenancy.apply_tenant_keys() again.".into()),
    )
}

/// Whether a trigger fires BEFORE, FOR EACH ROW: both guards are such triggers.
fn before_row(trigger: &PgTrigger<'_>) -> bool {
    matches!(trigger.when(), Ok(PgTriggerWhen::Before))
        && matches!(trigger.level(), PgTriggerLevel::Row)
}

/// What identifies the current statement, for the guards' per-statement caches: the
/// transaction's and the statement's start and the command id (a DDL between two
/// statements of one query string moves it on).
fn statement_key() -> (i64, i64, u32) {
    // SAFETY: reads this backend's transaction and statement clocks and command id.
    unsafe {
        (
            pg_sys::GetCurrentTransactionStartTimestamp(),
            pg_sys::GetCurrentStatementStartTimestamp(),
            pg_sys::GetCurrentCommandId(false),
        )
    }
}

/// One value per key, kept for the current statement: what a guard reads from the
/// catalog and prepares, once for all the rows a statement writes.
type StatementCache<K, V> = std::cell::RefCell<Option<(K, (i64, i64, u32), std::rc::Rc<V>)>>;

/// The cached value for `key` in this statement, or `make()`'s, kept.
fn per_statement<K: PartialEq, V>(
    cache: &'static std::thread::LocalKey<StatementCache<K, V>>,
    key: K,
    make: impl FnOnce() -> V,
) -> std::rc::Rc<V> {
    let statement = statement_key();
    let hit = cache.with(|c| {
        c.borrow()
            .as_ref()
            .filter(|(k, s, _)| *k == key && *s == statement)
            .map(|(_, _, v)| v.clone())
    });
    if let Some(hit) = hit {
        return hit;
    }
    let value = std::rc::Rc::new(make());
    cache.with(|c| *c.borrow_mut() = Some((key, statement, value.clone())));
    value
}

/// What the reference guard of one trigger reads from the catalog: the recorded
/// reference (`None`: not a guard) and the parent look-up, prepared once.
struct ReferenceGuard {
    owner: Option<pg_sys::Oid>,
    reference: Option<Reference>,
    lookup: Option<pgrx::spi::OwnedPreparedStatement>,
}

thread_local! {
    static REFERENCE_GUARDS: StatementCache<(pg_sys::Oid, String, Vec<String>), ReferenceGuard> =
        const { std::cell::RefCell::new(None) };
}

fn reference_guard(
    relid: pg_sys::Oid,
    tgname: &str,
    args: &[String],
) -> std::rc::Rc<ReferenceGuard> {
    per_statement(
        &REFERENCE_GUARDS,
        (relid, tgname.to_string(), args.to_vec()),
        || {
            let owner = crate::context::extension_owner();
            crate::context::as_role(owner, || {
                let reference = recorded_reference(relid, tgname, args);
                let lookup = reference.as_ref().map(|r| {
                    Spi::connect(|c| {
                        c.prepare(
                            &format!(
                            "SELECT EXISTS (SELECT 1 FROM {} p WHERE p.{} OPERATOR(pg_catalog.=) $1
                                               AND p.{} OPERATOR(pg_catalog.=) ANY ($2)),
                                    $1::pg_catalog.text",
                            r.parent, r.parent_column, r.parent_tenant_column
                        ),
                            &[
                                pgrx::pg_sys::PgOid::from(r.child_type),
                                pgrx::pg_sys::PgOid::from(pg_sys::UUIDARRAYOID),
                            ],
                        )
                        .or_raise("preparing the parent look-up of a tenant reference")
                        .keep()
                    })
                });
                ReferenceGuard {
                    owner,
                    reference,
                    lookup,
                }
            })
        },
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
    let table = || Spi::connect(|c| crate::catalog::table_name(c, relid));
    let tgname = trigger.name().unwrap_or("?").to_string();
    let row_before = before_row(trigger)
        && matches!(
            trigger.op(),
            Ok(PgTriggerOperation::Insert | PgTriggerOperation::Update)
        );
    if !row_before {
        refuse_trigger(&table(), &tgname);
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
    let guard = reference_guard(relid, &tgname, &args);
    let (Some(reference), Some(lookup)) = (&guard.reference, &guard.lookup) else {
        refuse_trigger(&table(), &tgname)
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
    let ids: Vec<pgrx::Uuid> = tenants.iter().map(|t| pgrx::Uuid::from_bytes(*t)).collect();
    let (found, key_text) = crate::context::as_role(guard.owner, || {
        Spi::connect(|c| {
            // SAFETY: the datum is the row's own value of the column typed child_type.
            let key_arg = unsafe { DatumWithOid::new(key, reference.child_type) };
            let rows = c
                .select(lookup, Some(1), &[key_arg, ids.into()])
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
    let Reference {
        parent,
        parent_shared,
        child_column,
        ..
    } = reference;
    let tenant = child_tenant
        .map(|t| crate::logic::context::format_uuid(&t))
        .unwrap_or_else(|| "(none)".into());
    let table = table();
    raise_full(
        PgSqlErrorCode::ERRCODE_FOREIGN_KEY_VIOLATION,
        format!(
            "insert or update on table {table} violates a tenant reference: key ({child_column})=({key_text}) is not present in table {parent} for tenant {tenant}{}",
            if *parent_shared { " or Platform" } else { "" }
        ),
        Some(if *parent_shared {
            "A row may reference only rows of its own tenant or of Platform.".into()
        } else {
            format!("{parent} is not shared: a row may reference only rows of its own tenant.")
        }),
        None,
    )
}

/// The trigger every referenced tenant table gets from the keys step.
pub(crate) const PARENT_GUARD: &str = "vt_tenant_parent_guard";

/// The tenant column of a permanent managed table whose trigger `tgname` is the parent
/// guard calling `tenant_parent_check()`: (its attnum, whether the table is shared).
fn recorded_parent(relid: pg_sys::Oid, tgname: &str) -> Option<(i16, bool)> {
    if tgname != PARENT_GUARD {
        return None;
    }
    Spi::connect(|c| {
        let rows = c
            .select(
                "SELECT a.attnum, r.shared
                   FROM pg_catalog.pg_trigger g
                   JOIN pg_catalog.pg_class c ON c.oid = g.tgrelid
                   JOIN vital_tenancy.rls_tables r ON r.tbl = g.tgrelid
                   JOIN pg_catalog.pg_attribute a ON a.attrelid = g.tgrelid AND a.attname = r.tenant_column
                        AND a.attnum > 0 AND NOT a.attisdropped AND a.atttypid = 'pg_catalog.uuid'::pg_catalog.regtype
                  WHERE g.tgrelid = $1 AND g.tgname = $2 AND NOT g.tgisinternal AND g.tgnargs = 0
                    AND g.tgfoid = 'vital_tenancy.tenant_parent_check()'::pg_catalog.regprocedure
                    AND c.relpersistence = 'p'",
                Some(1),
                &[relid.into(), tgname.into()],
            )
            .or_raise("reading the parent guard");
        if rows.is_empty() {
            return None;
        }
        let r = rows.first();
        Some((
            r.get::<i16>(1)
                .or_raise("reading the parent guard")
                .unwrap_or_default(),
            r.get::<bool>(2)
                .or_raise("reading the parent guard")
                .unwrap_or(false),
        ))
    })
}

/// A foreign key from a tenant table to the guarded one: the child table, the key's
/// name, its ON DELETE action, the SQL that finds a child row of another tenant
/// (`$1..$n` the parent's key values, `$n+1` the tenant the children may have), and
/// the parent's attribute numbers and types in that order.
struct Referencing {
    child: String,
    key: String,
    on_delete: char,
    exists_sql: String,
    parent_attnums: Vec<i16>,
    parent_types: Vec<pg_sys::Oid>,
}

fn referencing_keys(relid: pg_sys::Oid) -> Vec<Referencing> {
    Spi::connect(|c| {
        c.select(
            "SELECT k.conrelid::pg_catalog.regclass::pg_catalog.text, k.conname::pg_catalog.text, k.confdeltype::pg_catalog.text,
                    pg_catalog.format('SELECT EXISTS (SELECT 1 FROM %s ch WHERE %s AND ch.%I IS DISTINCT FROM $%s)',
                        k.conrelid::pg_catalog.regclass,
                        (SELECT pg_catalog.string_agg(pg_catalog.format('ch.%I OPERATOR(pg_catalog.=) $%s', ca.attname, u.i), ' AND ' ORDER BY u.i)
                           FROM unnest(k.conkey) WITH ORDINALITY u(ck, i)
                           JOIN pg_catalog.pg_attribute ca ON ca.attrelid = k.conrelid AND ca.attnum = u.ck),
                        cr.tenant_column, pg_catalog.cardinality(k.conkey) + 1),
                    k.confkey,
                    ARRAY(SELECT pa.atttypid FROM unnest(k.confkey) WITH ORDINALITY u(pk, i)
                            JOIN pg_catalog.pg_attribute pa ON pa.attrelid = k.confrelid AND pa.attnum = u.pk ORDER BY u.i)
               FROM pg_catalog.pg_constraint k
               JOIN vital_tenancy.rls_tables cr ON cr.tbl = k.conrelid
              WHERE k.contype = 'f' AND k.confrelid = $1
              ORDER BY 1, 2",
            None,
            &[relid.into()],
        )
        .or_raise("reading the foreign keys to a tenant table")
        .map(|r| Referencing {
            child: r.get::<String>(1).ok().flatten().unwrap_or_default(),
            key: r.get::<String>(2).ok().flatten().unwrap_or_default(),
            on_delete: r
                .get::<String>(3)
                .ok()
                .flatten()
                .and_then(|s| s.chars().next())
                .unwrap_or('a'),
            exists_sql: r.get::<String>(4).ok().flatten().unwrap_or_default(),
            parent_attnums: r.get::<Vec<i16>>(5).ok().flatten().unwrap_or_default(),
            parent_types: r.get::<Vec<pg_sys::Oid>>(6).ok().flatten().unwrap_or_default(),
        })
        .collect()
    })
}

fn refuse_parent_trigger(table: &str, trigger: &str) -> ! {
    refuse_guard(
        "tenant_parent_check",
        "parent guard",
        table,
        trigger,
        format!("The parent guard is the BEFORE UPDATE OR DELETE ... FOR EACH ROW trigger {PARENT_GUARD}, without arguments, on a permanent table under tenant RLS."),
        None,
    )
}

/// What the parent guard of one table reads from the catalog: its tenant column, whether
/// it is shared, and each referencing foreign key with its look-up, prepared once.
struct ParentGuard {
    owner: Option<pg_sys::Oid>,
    tenant_attnum: i16,
    shared: bool,
    keys: Vec<(Referencing, pgrx::spi::OwnedPreparedStatement)>,
}

thread_local! {
    static PARENT_GUARDS: StatementCache<(pg_sys::Oid, String), Option<ParentGuard>> =
        const { std::cell::RefCell::new(None) };
}

/// The parent guard of `relid` as the catalog records it (`None`: not a parent guard).
fn parent_guard(relid: pg_sys::Oid, tgname: &str) -> std::rc::Rc<Option<ParentGuard>> {
    per_statement(&PARENT_GUARDS, (relid, tgname.to_string()), || {
        let owner = crate::context::extension_owner();
        crate::context::as_role(owner, || {
            recorded_parent(relid, tgname).map(|(tenant_attnum, shared)| ParentGuard {
                owner,
                tenant_attnum,
                shared,
                keys: referencing_keys(relid)
                    .into_iter()
                    .map(|k| {
                        let mut types: Vec<pgrx::pg_sys::PgOid> = k
                            .parent_types
                            .iter()
                            .map(|t| pgrx::pg_sys::PgOid::from(*t))
                            .collect();
                        types.push(pgrx::pg_sys::PgOid::from(pg_sys::UUIDOID));
                        let plan = Spi::connect(|c| {
                            c.prepare(&k.exists_sql, &types)
                                .or_raise("preparing the look-up of a parent guard")
                                .keep()
                        });
                        (k, plan)
                    })
                    .collect(),
            })
        })
    })
}

/// The parent side of the references between tenant tables (a BEFORE UPDATE OF the
/// tenant column OR DELETE row trigger, created by `apply_tenant_keys()` on every
/// referenced tenant table): a row that rows of other tenants reference does not
/// change tenant (unless it becomes a Platform row of a shared table), and a delete
/// never reaches rows of another tenant through ON DELETE CASCADE, SET NULL or SET
/// DEFAULT. Either is 23503, nothing changed. The children are looked up as the
/// extension's owner, as PostgreSQL's own foreign-key checks do.
#[pg_trigger(sql = false)]
fn tenant_parent_check<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, PgHeapTupleError> {
    let relid = trigger.relid().unwrap_or(pg_sys::InvalidOid);
    let tgname = trigger.name().unwrap_or("?").to_string();
    let op = trigger.op();
    let row_before = before_row(trigger)
        && matches!(
            op,
            Ok(PgTriggerOperation::Update | PgTriggerOperation::Delete)
        );
    let table = || Spi::connect(|c| crate::catalog::table_name(c, relid));
    if !row_before {
        refuse_parent_trigger(&table(), &tgname);
    }
    let deleting = matches!(op, Ok(PgTriggerOperation::Delete));
    let cached = parent_guard(relid, &tgname);
    let Some(guard) = cached.as_ref() else {
        refuse_parent_trigger(&table(), &tgname)
    };
    let ParentGuard {
        tenant_attnum,
        shared,
        keys,
        ..
    } = guard;
    let (tenant_attnum, shared) = (*tenant_attnum, *shared);
    let data = trigger.trigger_data();
    let (old, new) = (data.tg_trigtuple, data.tg_newtuple);
    let rd_att = {
        // SAFETY: the trigger's relation, open for the trigger call.
        unsafe { (*data.tg_relation).rd_att }
    };
    let attr = |tuple: *mut pg_sys::HeapTupleData, attnum: i16| -> Option<pg_sys::Datum> {
        let n = NonZeroUsize::new(usize::try_from(attnum).ok()?)?;
        // SAFETY: a tuple of the trigger's relation and a live column of it.
        unsafe { pgrx::heap_getattr_raw(tuple, n, rd_att) }
    };
    // SAFETY: the tenant column is of type uuid (checked in recorded_parent).
    let tenant_of = |tuple| {
        attr(tuple, tenant_attnum)
            .and_then(|d| unsafe { pgrx::Uuid::from_datum(d, false) })
            .map(|u| *u.as_bytes())
    };
    let keep = || {
        Ok(if deleting {
            trigger.old()
        } else {
            trigger.new()
        })
    };
    let old_tenant = tenant_of(old);
    // The tenant the children may have: a delete reaches children of other tenants
    // than the row's; a move strands children of other tenants than the new one.
    let allowed = if deleting {
        old_tenant
    } else {
        let new_tenant = tenant_of(new);
        if new_tenant == old_tenant
            || (shared && new_tenant == Some(crate::context::platform_bytes()))
        {
            return keep();
        }
        new_tenant
    };
    for (k, plan) in keys
        .iter()
        .filter(|(k, _)| !deleting || matches!(k.on_delete, 'c' | 'n' | 'd'))
    {
        let values: Vec<Option<pg_sys::Datum>> =
            k.parent_attnums.iter().map(|a| attr(old, *a)).collect();
        if values.iter().any(Option::is_none) {
            continue; // a NULL key is referenced by nothing
        }
        let found = crate::context::as_role(guard.owner, || {
            Spi::connect(|c| {
                let mut args: Vec<DatumWithOid> = values
                    .iter()
                    .zip(&k.parent_types)
                    // SAFETY: each datum is the row's own value of a column of that type.
                    .map(|(v, t)| unsafe {
                        DatumWithOid::new(v.unwrap_or(pg_sys::Datum::from(0)), *t)
                    })
                    .collect();
                args.push(allowed.map(pgrx::Uuid::from_bytes).into());
                c.select(plan, Some(1), &args)
                    .and_then(|t| t.first().get_one::<bool>())
                    .or_raise("looking up the rows that reference a tenant row")
                    .unwrap_or(false)
            })
        });
        if !found {
            continue;
        }
        let table = table();
        let (message, detail) = if deleting {
            let effect = match k.on_delete {
                'c' => "delete",
                _ => "change",
            };
            (
                format!(
                    "delete on table {table} would {effect} rows of another tenant in table {} (foreign key {} ON DELETE {})",
                    k.child,
                    quote_ident(&k.key),
                    match k.on_delete {
                        'c' => "CASCADE",
                        'n' => "SET NULL",
                        _ => "SET DEFAULT",
                    }
                ),
                "A tenant's delete never reaches another tenant's rows: delete or re-point those rows first.",
            )
        } else {
            (
                format!(
                    "update on table {table} would move a row to another tenant while rows of other tenants in table {} reference it (foreign key {})",
                    k.child,
                    quote_ident(&k.key)
                ),
                "A row that other tenants' rows reference keeps its tenant: re-point or delete those rows first.",
            )
        };
        raise_full(
            PgSqlErrorCode::ERRCODE_FOREIGN_KEY_VIOLATION,
            message,
            Some(detail.into()),
            Some("vital_tenancy.cross_tenant_references() lists references across tenants.".into()),
        );
    }
    keep()
}
