//! Tenant context: which tenant the current request acts for.
//!
//! The sources are `vital.tenant_id`, then `request.jwt.claims`, then a
//! membership-checked `x-tenant-id` in `request.headers` (see `logic::context`). Before
//! any of them counts: the session's login role must be a member of
//! `vital_tenancy_context`, and the value must have been set inside the current
//! transaction (unless `vital_tenancy.session_context` is on); see `guc`.
//!
//! One resolution, two faces. `current_tenant_id()`, `pre_request()` and `set_tenant()`
//! raise a clear ERROR for a bad context (malformed, unknown tenant, spoofed header,
//! untrusted session). The functions the policies call, `visible_tenant_ids()` and
//! `writable_tenant_ids()`, never raise for the context: a bad context is no context
//! there (nothing visible, no writes). PostgreSQL evaluates a policy's InitPlan only
//! once some row has passed the caller's own leakproof filters, so an error raised
//! there would tell the caller whether rows it cannot see exist.
//!
//! The answer is cached per statement: keyed on the observed settings, the statement's
//! start, its snapshot and the subtransaction, so a column DEFAULT that calls
//! `current_tenant_id()` for every inserted row costs a few setting reads and
//! comparisons, not a query, while the next statement (or a rolled-back savepoint)
//! recomputes. Lookups of the tenants and membership tables run as the extension's
//! owner (the application's roles need no privilege on them).

use crate::errors::{raise, raise_full, OrRaise};
use crate::guc::{self, CONTEXT_ROLE};
use crate::logic::context::{
    format_uuid, honoured, own_only, resolve_as, ContextError, Honoured, IgnoreReason, Observed,
    Setting, Source, CLAIMS_SETTING, HEADERS_SETTING, TENANT_SETTING,
};
use crate::logic::ident::display_ident;
use crate::logic::lifecycle::{access_for, Access};
use crate::logic::rls::ADMIN_ROLE;
use pgrx::prelude::*;
use pgrx::Uuid;
use std::cell::RefCell;
use std::ffi::CString;

/// A bad tenant context: raised where the caller asked for the context, no context
/// inside policies.
#[derive(Debug, Clone)]
struct Problem {
    code: PgSqlErrorCode,
    message: String,
    detail: Option<String>,
    hint: Option<String>,
}

impl Problem {
    fn new(code: PgSqlErrorCode, message: String) -> Problem {
        Problem {
            code,
            message,
            detail: None,
            hint: None,
        }
    }
    fn raise(self) -> ! {
        raise_full(self.code, self.message, self.detail, self.hint)
    }
}

/// A valid context: the tenant, whether the request asked to read only its own
/// tenant's rows (`x-tenant-scope: own`), and what the tenant's status and Platform's
/// allow (read-only statuses write nothing; Platform's rows are shared only while
/// Platform's own status lets it be read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Context {
    tenant: [u8; 16],
    own_only: bool,
    writes: bool,
    platform_visible: bool,
}

type Outcome = Result<Option<Context>, Problem>;

/// What a cached answer is valid for.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Key {
    observed: Observed,
    /// Start of the current client statement.
    statement: i64,
    /// The active snapshot (xmin, xmax, command id, completed-transactions count):
    /// a new snapshot that could see other data recomputes.
    snapshot: Option<(u32, u32, u32, u64)>,
    subxact: u32,
}

struct Cached {
    key: Key,
    outcome: Outcome,
}

thread_local! {
    static CONTEXT_CACHE: RefCell<Option<Cached>> = const { RefCell::new(None) };
}

fn clear_cache() {
    CONTEXT_CACHE.with(|c| {
        if let Ok(mut c) = c.try_borrow_mut() {
            *c = None;
        }
    });
}

#[pg_guard]
unsafe extern "C-unwind" fn xact_callback(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::XactEvent::*;
    if matches!(
        event,
        XACT_EVENT_COMMIT
            | XACT_EVENT_ABORT
            | XACT_EVENT_PREPARE
            | XACT_EVENT_PARALLEL_COMMIT
            | XACT_EVENT_PARALLEL_ABORT
    ) {
        clear_cache();
        clear_seal(None);
        crate::activity::end_of_transaction();
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn subxact_callback(
    event: pg_sys::SubXactEvent::Type,
    my: pg_sys::SubTransactionId,
    _parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    // What a rolled-back savepoint cached may rest on rows it wrote.
    if event == pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB {
        clear_cache();
        clear_seal(Some(my));
    }
}

/// Register the cache resets. Called once per backend from `_PG_init`.
pub fn init() {
    // SAFETY: static callbacks that only reset thread-local state of this backend.
    unsafe {
        pg_sys::RegisterXactCallback(Some(xact_callback), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(subxact_callback), std::ptr::null_mut());
    }
}

fn setting(name: &str) -> Setting {
    let value = guc::value(name);
    let set = value.as_deref().is_some_and(|v| !v.trim().is_empty());
    let origin = if set { guc::origin(name) } else { None };
    Setting {
        local: set && origin.is_some_and(|o| o.local),
        by_confined: set && origin.is_some_and(|o| guc::is_confined(o.setter)),
        value,
    }
}

/// What `pre_request()` saw when it fixed the request's context: the current role and
/// the three settings' values. Kept until the transaction ends.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seal {
    role: pg_sys::Oid,
    values: [Option<String>; 3],
}

thread_local! {
    /// The seal and the subtransaction that took it: rolling that one back (or one it
    /// is nested in) undoes the seal, as it undoes the settings.
    static SEAL: RefCell<Option<(Seal, pg_sys::SubTransactionId)>> = const { RefCell::new(None) };
}

fn current_seal() -> Seal {
    Seal {
        role: guc::outer_role(),
        values: [
            guc::value(TENANT_SETTING),
            guc::value(CLAIMS_SETTING),
            guc::value(HEADERS_SETTING),
        ],
    }
}

/// Forget the seal; with `rolled_back`, only if it was taken inside that (aborting)
/// subtransaction: while it is active, every later subtransaction id is nested in it.
fn clear_seal(rolled_back: Option<pg_sys::SubTransactionId>) {
    SEAL.with(|s| {
        if let Ok(mut s) = s.try_borrow_mut() {
            if rolled_back.is_none_or(|sub| s.as_ref().is_some_and(|(_, at)| *at >= sub)) {
                *s = None;
            }
        }
    });
}

/// Everything the context depends on, read without a query.
pub(crate) fn observe() -> Observed {
    let sealed = SEAL.with(|s| s.borrow().as_ref().map(|(seal, _)| *seal == current_seal()));
    Observed {
        tenant_setting: setting(TENANT_SETTING),
        claims: setting(CLAIMS_SETTING),
        headers: setting(HEADERS_SETTING),
        trusted: guc::session_is_trusted(),
        session_context: guc::SESSION_CONTEXT.get(),
        service: guc::current_role_is_service(),
        sealed,
    }
}

fn current_key(observed: Observed) -> Key {
    // SAFETY: reads of this backend's statement clock, active snapshot (only when one
    // is set) and subtransaction id.
    unsafe {
        let snapshot = if pg_sys::ActiveSnapshotSet() {
            let s = pg_sys::GetActiveSnapshot();
            (!s.is_null()).then(|| {
                (
                    (*s).xmin.into_inner(),
                    (*s).xmax.into_inner(),
                    (*s).curcid,
                    (*s).snapXactCompletionCount,
                )
            })
        } else {
            None
        };
        Key {
            observed,
            statement: pg_sys::GetCurrentStatementStartTimestamp(),
            snapshot,
            subxact: pg_sys::GetCurrentSubTransactionId(),
        }
    }
}

/// Run `f` with the extension owner's rights (as PostgreSQL's own foreign-key checks
/// do), so that the tenants and membership tables need not be readable by the caller.
/// An error inside `f` aborts the (sub)transaction, which restores the user id.
pub(crate) fn as_extension_owner<R>(f: impl FnOnce() -> R) -> R {
    as_role(extension_owner(), f)
}

/// The role that owns the extension (`None` before CREATE EXTENSION has finished).
pub(crate) fn extension_owner() -> Option<pg_sys::Oid> {
    Spi::connect(|c| {
        crate::catalog::value::<pg_sys::Oid>(
            c,
            "SELECT extowner FROM pg_catalog.pg_extension WHERE extname = 'vital_tenancy'",
            &[],
        )
    })
}

/// Run `f` as `role` (see `as_extension_owner`); as the current user when `None`.
pub(crate) fn as_role<R>(role: Option<pg_sys::Oid>, f: impl FnOnce() -> R) -> R {
    let Some(owner) = role else { return f() };
    let mut user = pg_sys::InvalidOid;
    let mut sec = 0;
    // SAFETY: save and restore of this backend's current user id and security context.
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut user, &mut sec);
        pg_sys::SetUserIdAndSecContext(owner, sec | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32);
    }
    let out = f();
    // SAFETY: as above.
    unsafe { pg_sys::SetUserIdAndSecContext(user, sec) };
    out
}

/// The application's tenants table as SQL text (regclass output), or an ERROR.
pub(crate) fn tenants_table_sql() -> String {
    Spi::connect(crate::catalog::require_tenants_table)
}

/// Where this node reads the registry from. On Citus the tenants table is a
/// reference table: a query on it from inside a shard query (a policy evaluated on a
/// worker) would be a nested distributed query, which Citus refuses; every node holds
/// a full placement of it, which is read directly instead.
pub(crate) fn registry_relation(table: &str) -> String {
    Spi::connect(|c| {
        let citus: bool = crate::catalog::value(
            c,
            "SELECT pg_catalog.to_regclass('pg_catalog.pg_dist_partition') IS NOT NULL",
            &[],
        )
        .unwrap_or(false);
        if !citus {
            return table.to_string();
        }
        let placement: Option<String> = crate::catalog::value(
            c,
            "SELECT shard_name(s.logicalrelid, s.shardid, false)
               FROM pg_catalog.pg_dist_shard s JOIN pg_catalog.pg_dist_placement p ON p.shardid = s.shardid
              WHERE s.logicalrelid = $1::pg_catalog.regclass
                AND p.groupid = (SELECT groupid FROM pg_catalog.pg_dist_local_group)
                AND pg_catalog.to_regclass(shard_name(s.logicalrelid, s.shardid, false)) IS NOT NULL
              LIMIT 1",
            &[table.into()],
        );
        placement.unwrap_or_else(|| table.to_string())
    })
}

/// On a Citus coordinator inside a transaction block, `SET LOCAL` a setting so that
/// Citus (`citus.propagate_set_commands = 'local'`) sends it to the workers, where the
/// policies of the shards read it. `set_config()` is not propagated. No-op elsewhere.
pub(crate) fn propagate_to_workers(name: &str, value: &str) {
    // SAFETY: plain query of the transaction state.
    if !unsafe { pg_sys::IsTransactionBlock() } {
        return;
    }
    Spi::connect_mut(|c| {
        let command: Option<String> = crate::catalog::value(
            c,
            "SELECT pg_catalog.format('SET LOCAL %s = %L', $1, $2)
              WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'citus')
                AND pg_catalog.current_setting('citus.propagate_set_commands', true) = 'local'",
            &[name.into(), value.into()],
        );
        if let Some(command) = command {
            c.update(&command, None, &[])
                .or_raise("sending the tenant context to the workers");
        }
    });
}

pub(crate) fn tenant_exists(table: &str, id: [u8; 16]) -> bool {
    let table = registry_relation(table);
    Spi::connect(|c| {
        crate::catalog::select_kept(
            c,
            &format!("SELECT EXISTS (SELECT 1 FROM {table} WHERE id = $1)"),
            Some(1),
            &[Uuid::from_bytes(id).into()],
        )
        .and_then(|t| t.first().get_one::<bool>())
        .or_raise("checking a tenant")
        .unwrap_or(false)
    })
}

/// The tenants table's status column, quoted, when statuses are honoured and it has
/// the configured one (setting `status_column`, default `status`; an empty value turns
/// statuses off). Statuses are honoured from 0.2.0 on: a 0.1.0 schema not yet updated
/// (no `tenant_statuses` table) keeps 0.1.0's behaviour, every registered tenant works.
fn status_column_sql(c: &pgrx::spi::SpiClient<'_>, table: &str) -> Option<String> {
    crate::catalog::value::<String>(
        c,
        "SELECT pg_catalog.quote_ident(a.attname)
           FROM pg_catalog.pg_attribute a
          WHERE pg_catalog.to_regclass('vital_tenancy.tenant_statuses') IS NOT NULL
            AND a.attrelid = $1::pg_catalog.regclass AND a.attnum > 0 AND NOT a.attisdropped
            AND a.attname = COALESCE((SELECT value FROM vital_tenancy.settings WHERE name = 'status_column'), 'status')",
        &[table.into()],
    )
}

/// One tenant's status as the boundary sees it.
pub(crate) struct TenantAccess {
    pub(crate) id: [u8; 16],
    pub(crate) status: Option<String>,
    pub(crate) access: Access,
    /// Whether `tenant_statuses` overrides the status's built-in meaning.
    pub(crate) overridden: bool,
}

/// The status and access of the given tenants that exist in the registry (read from
/// this node's placement on Citus).
pub(crate) fn tenant_access(table: &str, ids: &[[u8; 16]]) -> Vec<TenantAccess> {
    let relation = registry_relation(table);
    let ids: Vec<Uuid> = ids.iter().map(|b| Uuid::from_bytes(*b)).collect();
    Spi::connect(|c| {
        let column = status_column_sql(c, table);
        let sql = match column {
            Some(col) => format!(
                "SELECT t.id, t.{col}::pg_catalog.text, o.access FROM {relation} t
                   LEFT JOIN vital_tenancy.tenant_statuses o ON o.status = t.{col}::pg_catalog.text
                  WHERE t.id = ANY ($1)"
            ),
            // No status column: every tenant in the registry works.
            None => format!(
                "SELECT t.id, NULL::pg_catalog.text, 'read-write'::pg_catalog.text FROM {relation} t WHERE t.id = ANY ($1)"
            ),
        };
        crate::catalog::select_kept(c, &sql, None, &[ids.into()])
            .or_raise("reading tenant statuses")
            .filter_map(|r| {
                let id = r.get::<Uuid>(1).ok().flatten()?;
                let status = r.get::<String>(2).ok().flatten();
                let over = r.get::<String>(3).ok().flatten();
                let access = access_for(status.as_deref(), over.as_deref());
                Some(TenantAccess {
                    id: *id.as_bytes(),
                    status,
                    overridden: over.is_some(),
                    access,
                })
            })
            .collect()
    })
}

pub(crate) fn platform_bytes() -> [u8; 16] {
    crate::logic::tenants::uuid_bytes(crate::logic::tenants::PLATFORM.id).unwrap_or_default()
}

/// The tenant must exist and its status must give access: (writes, Platform's rows
/// visible).
fn check_tenant(id: [u8; 16], source: &str) -> Result<(bool, bool), Problem> {
    let Some(table) = Spi::connect(crate::catalog::tenants_table) else {
        return Err(Problem {
            hint: Some("Run vital_tenancy.ensure_tenants() first.".into()),
            ..Problem::new(
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                "no tenants table is known to vital_tenancy".into(),
            )
        });
    };
    let platform = platform_bytes();
    let found = tenant_access(&table, &[id, platform]);
    let Some(TenantAccess { status, access, .. }) = found.iter().find(|t| t.id == id) else {
        return Err(Problem::new(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!(
                "tenant {} from {source} does not exist in {table}",
                format_uuid(&id)
            ),
        ));
    };
    if !access.reads() {
        return Err(Problem {
            detail: Some("vital_tenancy.tenant_status() lists what each status allows.".into()),
            hint: Some(
                "A platform admin changes the tenant's status; vital_tenancy.set_status_access() changes what a status allows."
                    .into(),
            ),
            ..Problem::new(
                PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                format!(
                    "tenant {} from {source} has status {}, which gives no access",
                    format_uuid(&id),
                    status
                        .as_deref()
                        .map(|s| format!("\"{s}\""))
                        .unwrap_or_else(|| "NULL".into())
                ),
            )
        });
    }
    let platform_visible = found.iter().any(|t| t.id == platform && t.access.reads());
    Ok((access.writes(), platform_visible))
}

/// The membership table and its user and tenant columns, quoted for SQL; `None` when
/// the configured table or one of its columns does not exist.
fn membership_sql() -> Option<(String, String, String)> {
    let row = Spi::connect(|c| {
        let t = crate::catalog::select_kept(
                c,
                "SELECT m.t::pg_catalog.text, m.u, m.c
                   FROM (SELECT pg_catalog.to_regclass(COALESCE(
                        (SELECT value FROM vital_tenancy.settings WHERE name = 'membership_table'),
                        'vital_tenancy.tenant_members')) AS t,
                        COALESCE((SELECT value FROM vital_tenancy.settings WHERE name = 'membership_user_column'), 'user_id') AS u,
                        COALESCE((SELECT value FROM vital_tenancy.settings WHERE name = 'membership_tenant_column'), 'tenant_id') AS c) m
                  WHERE m.t IS NOT NULL
                    -- never a temporary table (a bare name stored by 0.1.0 could resolve to
                    -- the calling session's own pg_temp table)
                    AND (SELECT c.relpersistence <> 't' FROM pg_catalog.pg_class c WHERE c.oid = m.t)
                    AND (SELECT pg_catalog.count(*) FROM pg_catalog.pg_attribute a
                          WHERE a.attrelid = m.t AND a.attname IN (m.u, m.c) AND a.attnum > 0 AND NOT a.attisdropped) = 2",
                Some(1),
                &[],
            )
            .or_raise("reading the membership settings");
        if t.is_empty() {
            return (None, None, None);
        }
        let r = t.first();
        (
            r.get::<String>(1).or_raise("reading membership_table"),
            r.get::<String>(2)
                .or_raise("reading membership_user_column"),
            r.get::<String>(3)
                .or_raise("reading membership_tenant_column"),
        )
    });
    match row {
        (Some(t), Some(u), Some(c)) => Some((
            t,
            crate::logic::ident::quote_ident(&u),
            crate::logic::ident::quote_ident(&c),
        )),
        _ => None,
    }
}

fn check_member(user: [u8; 16], tenant: [u8; 16]) -> Result<(), Problem> {
    let Some((table, ucol, tcol)) = membership_sql() else {
        return Err(Problem {
            hint: Some("Point vital_tenancy.set_membership_table() at a table with uuid user and tenant columns.".into()),
            ..Problem::new(
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                "the tenant membership table configured for vital_tenancy does not exist, lacks its user or tenant column, or is temporary".into(),
            )
        });
    };
    let member = Spi::connect(|c| {
        crate::catalog::select_kept(
            c,
            &format!("SELECT EXISTS (SELECT 1 FROM {table} WHERE {ucol} = $1 AND {tcol} = $2)"),
            Some(1),
            &[
                Uuid::from_bytes(user).into(),
                Uuid::from_bytes(tenant).into(),
            ],
        )
        .and_then(|t| t.first().get_one::<bool>())
        .or_raise("checking tenant membership")
        .unwrap_or(false)
    });
    if member {
        return Ok(());
    }
    Err(Problem {
        code: PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
        message: format!(
            "user {} is not a member of tenant {} requested by header x-tenant-id",
            format_uuid(&user),
            format_uuid(&tenant)
        ),
        detail: Some("A tenant header is only honoured for members of that tenant.".into()),
        hint: Some(format!(
            "Add the membership to {table}, or put the tenant in the JWT claims."
        )),
    })
}

fn context_problem(e: ContextError) -> Problem {
    let code = match e {
        ContextError::MalformedUuid { .. } | ContextError::MalformedJson { .. } => {
            PgSqlErrorCode::ERRCODE_INVALID_TEXT_REPRESENTATION
        }
        ContextError::HeaderWithoutUser { .. } => PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
        ContextError::MalformedScope { .. } => PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
    };
    Problem::new(code, e.to_string())
}

/// A context the request's own SQL tried to choose: raised where the context is asked
/// for (in policies it is no context).
fn inside_request_problem(h: &Honoured) -> Option<Problem> {
    let names = |reason: IgnoreReason| -> Vec<&str> {
        h.ignored
            .iter()
            .filter(|(_, r)| *r == reason)
            .map(|(n, _)| *n)
            .collect()
    };
    let changed = names(IgnoreReason::ChangedAfterPreRequest);
    if !changed.is_empty() {
        return Some(Problem {
            detail: Some(format!(
                "Settings that hold a value: {}. Once vital_tenancy.pre_request() has fixed a request's context, a change of a context setting or of the current role gives no context.",
                changed.join(", ")
            )),
            ..Problem::new(
                PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                "tenant context refused: the request changed its context or its role after vital_tenancy.pre_request()".into(),
            )
        });
    }
    let inside = names(IgnoreReason::SetInsideRequest);
    if inside.is_empty() {
        return None;
    }
    Some(Problem {
        detail: Some("A request running as a role that is neither the login role nor a member of vital_tenancy_context does not choose its own tenant: what PostgREST sets counts once vital_tenancy.pre_request() has fixed it.".into()),
        hint: Some("Configure db-pre-request = vital_tenancy.pre_request (PostgREST), or set the context before switching roles (set_tenant(), then SET LOCAL ROLE).".into()),
        ..Problem::new(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!(
                "tenant context refused: {} set by role \"{}\" inside the request",
                inside.join(", "),
                guc::role_name(guc::outer_role())
            ),
        )
    })
}

fn untrusted_problem(h: &Honoured) -> Option<Problem> {
    let refused: Vec<&str> = h
        .ignored
        .iter()
        .filter(|(_, r)| *r == IgnoreReason::UntrustedSession)
        .map(|(n, _)| *n)
        .collect();
    if refused.is_empty() {
        return None;
    }
    Some(Problem {
        code: PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
        message: format!(
            "tenant context refused: login role \"{}\" is not a member of {CONTEXT_ROLE} ({} ignored)",
            guc::session_user_name(),
            refused.join(", ")
        ),
        detail: Some("Only a trusted login role (PostgREST's authenticator, an application backend) may establish a tenant context.".into()),
        hint: Some(format!("GRANT {CONTEXT_ROLE} TO <login role>;")),
    })
}

/// Resolve and validate the tenant context (uncached).
fn resolve_outcome(observed: &Observed) -> Outcome {
    // A parallel worker cannot see which settings the leader set in its transaction;
    // the context functions are PARALLEL RESTRICTED, and fail closed here regardless.
    // SAFETY: reads a backend global.
    if unsafe { pg_sys::ParallelWorkerNumber } >= 0 {
        return Ok(None);
    }
    let h = honoured(observed);
    if let Some(p) = untrusted_problem(&h).or_else(|| inside_request_problem(&h)) {
        return Err(p);
    }
    let source = resolve_as(&h.raw, observed.service).map_err(context_problem)?;
    let own = own_only(&h.raw).map_err(context_problem)?;
    let checked = |t: [u8; 16], source: &str| {
        check_tenant(t, source).map(|(writes, platform_visible)| {
            Some(Context {
                tenant: t,
                own_only: own,
                writes,
                platform_visible,
            })
        })
    };
    as_extension_owner(|| match source {
        Source::Setting(t) => checked(t, "setting vital.tenant_id"),
        Source::Claims(t) => checked(t, "tenant_id in request.jwt.claims"),
        Source::Header { tenant, user } => {
            check_member(user, tenant)?;
            checked(tenant, "header x-tenant-id")
        }
        Source::Service(t) => checked(t, "header x-tenant-id"),
        Source::None => Ok(None),
    })
}

/// The context of the current statement, from the cache when still valid.
fn outcome() -> Outcome {
    outcome_of(observe())
}

/// `outcome()` for settings already observed.
fn outcome_of(observed: Observed) -> Outcome {
    let key = current_key(observed);
    let hit = CONTEXT_CACHE.with(|c| {
        c.borrow()
            .as_ref()
            .and_then(|c| (c.key == key).then(|| c.outcome.clone()))
    });
    if let Some(o) = hit {
        crate::activity::note_tenant(o.as_ref().ok().and_then(|c| c.map(|c| c.tenant)));
        return o;
    }
    let o = resolve_outcome(&key.observed);
    crate::activity::note_tenant(o.as_ref().ok().and_then(|c| c.map(|c| c.tenant)));
    CONTEXT_CACHE.with(|c| {
        *c.borrow_mut() = Some(Cached {
            key,
            outcome: o.clone(),
        })
    });
    o
}

/// One WARNING naming the settings that hold a value set outside this transaction.
fn warn_leftovers(h: &Honoured, who: &str) {
    let left: Vec<&str> = h
        .ignored
        .iter()
        .filter(|(_, r)| *r == IgnoreReason::NotThisTransaction)
        .map(|(n, _)| *n)
        .collect();
    if left.is_empty() {
        return;
    }
    ereport!(
        WARNING,
        PgSqlErrorCode::ERRCODE_WARNING,
        format!(
            "{who}: {} set outside the current transaction, ignored as tenant context",
            left.join(", ")
        ),
        "A session-level SET, set_config(..., false), ALTER ROLE/DATABASE ... SET, a startup option or an earlier client on a pooled connection left it; only SET LOCAL / set_config(..., true) count (or turn on vital_tenancy.session_context for a dedicated connection per tenant)."
    );
}

/// ERROR 55000 when the connection holds session state an earlier transaction left
/// behind: a `WITH HOLD` cursor or a temporary relation (table, sequence, view, type)
/// made before the current transaction. Both outlive a transaction on a pooled server
/// connection, filled (or, for a view in `pg_temp`, shadowing a table) under an
/// earlier client's tenant; a request that starts on such a connection fails closed.
/// Not checked with `vital_tenancy.session_context` on (a dedicated connection per
/// tenant, whose state is its own).
fn refuse_leftover_session_state(who: &str) {
    if guc::SESSION_CONTEXT.get() {
        return;
    }
    let left: Option<String> = Spi::connect(|c| {
        crate::catalog::value::<String>(
            c,
            "SELECT NULLIF(pg_catalog.concat_ws(', ',
                      (SELECT pg_catalog.string_agg('WITH HOLD cursor ' || pg_catalog.quote_ident(name), ', ' ORDER BY name)
                         FROM pg_catalog.pg_cursors
                        WHERE is_holdable AND creation_time < pg_catalog.transaction_timestamp()),
                      (SELECT pg_catalog.string_agg('temporary ' || CASE relkind WHEN 'S' THEN 'sequence' WHEN 'v' THEN 'view'
                                                                      WHEN 'c' THEN 'type' ELSE 'table' END
                                                    || ' ' || pg_catalog.quote_ident(relname), ', ' ORDER BY relname)
                         FROM pg_catalog.pg_class
                        -- (a session that never made a temporary object has no temporary
                        -- schema: the first condition, free of columns, skips the scan)
                        WHERE pg_catalog.pg_my_temp_schema() <> 0
                          AND relnamespace = pg_catalog.pg_my_temp_schema() AND relkind NOT IN ('i', 'I', 't')
                          AND pg_catalog.age(xmin) > 0)), '')",
            &[],
        )
    });
    if let Some(left) = left {
        raise_full(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("{who}: this connection holds session state from an earlier transaction ({left})"),
            Some("On a pooled server connection it was made under an earlier client's tenant; a request must not start on it.".into()),
            Some("Reset server connections between clients (PgBouncer: server_reset_query = DISCARD ALL with server_reset_query_always = 1), or CLOSE the cursor / DROP the relation before the transaction ends; a dedicated connection per tenant sets vital_tenancy.session_context = on.".into()),
        );
    }
}

/// The tenant the current request acts for, or NULL (nothing visible, no writes).
/// A bad context is an ERROR here (it is asked for explicitly, or by a row DEFAULT).
#[pg_extern(stable, parallel_restricted, security_definer)]
#[search_path(pg_catalog, pg_temp)]
pub fn current_tenant_id() -> Option<Uuid> {
    match outcome() {
        Ok(t) => t.map(|c| Uuid::from_bytes(c.tenant)),
        Err(p) => p.raise(),
    }
}

/// PostgREST's `db-pre-request` hook: resolve and validate the request's tenant
/// context once, before the request's query reads any row. A bad context is an ERROR
/// here (the same for every request carrying it); leftovers are one WARNING.
#[pg_extern(volatile, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn pre_request() {
    refuse_leftover_session_state("vital_tenancy.pre_request()");
    // The first call of a transaction fixes the request's context: from here on, the
    // request's own SQL cannot change it (a changed setting or role is no context).
    let now = current_seal();
    let earlier = SEAL.with(|s| s.borrow().as_ref().map(|(seal, _)| seal.clone()));
    match earlier {
        None => {
            // SAFETY: reads this backend's current subtransaction id.
            let sub = unsafe { pg_sys::GetCurrentSubTransactionId() };
            SEAL.with(|s| *s.borrow_mut() = Some((now, sub)));
        }
        Some(seal) if seal == now => {}
        Some(_) => raise_full(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "tenant context refused: vital_tenancy.pre_request() already fixed this request's context, and a setting or the role has changed since".to_string(),
            Some("pre_request() runs once per request, before its query; the request's own SQL does not choose its tenant.".into()),
            None,
        ),
    }
    let observed = observe();
    warn_leftovers(&honoured(&observed), "vital_tenancy.pre_request()");
    match outcome_of(observed.clone()) {
        Err(p) => p.raise(),
        // On Citus the workers evaluate the shards' policies: give them the context as
        // resolved here (and the claims and headers the application's own policies
        // read), as SET LOCAL, which Citus propagates.
        Ok(ctx) => {
            let tenant = ctx.map(|c| format_uuid(&c.tenant)).unwrap_or_default();
            propagate_to_workers(TENANT_SETTING, &tenant);
            for (name, s) in [
                (CLAIMS_SETTING, &observed.claims),
                (HEADERS_SETTING, &observed.headers),
            ] {
                if let (true, Some(v)) = (s.local, s.value.as_deref()) {
                    propagate_to_workers(name, v);
                }
            }
            // What pre_request() itself set (the resolved tenant, on Citus) is part of
            // what it fixed.
            SEAL.with(|s| {
                if let Some((seal, _)) = s.borrow_mut().as_mut() {
                    *seal = current_seal();
                }
            });
        }
    }
}

/// Set the tenant for the rest of the current transaction (`vital.tenant_id`, local).
/// For trusted application backends on pooled connections. NULL clears it.
#[pg_extern(volatile, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn set_tenant(tenant: Option<Uuid>) -> Option<Uuid> {
    let observed = observe();
    if tenant.is_some() && guc::request_is_confined() {
        raise_full(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!(
                "permission denied to set a tenant: role \"{}\" runs inside a request and may not choose its tenant",
                guc::role_name(guc::outer_role())
            ),
            None,
            Some("A trusted backend calls set_tenant() before switching roles: SELECT vital_tenancy.set_tenant(...); SET LOCAL ROLE ...;".into()),
        );
    }
    if tenant.is_some() && !observed.trusted {
        raise_full(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!(
                "permission denied to set a tenant: login role \"{}\" is not a member of {CONTEXT_ROLE}",
                guc::session_user_name()
            ),
            None,
            Some(format!("Only trusted application backends choose a tenant: GRANT {CONTEXT_ROLE} TO <login role>;")),
        );
    }
    if let Some(t) = tenant {
        refuse_leftover_session_state("vital_tenancy.set_tenant()");
        if let Err(p) = as_extension_owner(|| check_tenant(*t.as_bytes(), "set_tenant()")) {
            p.raise();
        }
    }
    warn_leftovers(&honoured(&observed), "vital_tenancy.set_tenant()");
    // SAFETY: plain query of the transaction state.
    if !unsafe { pg_sys::IsTransactionBlock() } {
        ereport!(
            WARNING,
            PgSqlErrorCode::ERRCODE_WARNING,
            "set_tenant() outside a transaction block lasts only for this statement",
            "Call it after BEGIN; the setting ends with the transaction, so a pooled connection never carries it to the next client."
        );
    }
    let text = tenant
        .map(|t| format_uuid(t.as_bytes()))
        .unwrap_or_default();
    Spi::connect(|c| {
        c.select(
            "SELECT pg_catalog.set_config('vital.tenant_id', $1, true)",
            Some(1),
            &[text.clone().into()],
        )
        .map(|_| ())
        .or_raise("setting vital.tenant_id")
    });
    propagate_to_workers(TENANT_SETTING, &text);
    tenant
}

fn admin_role_oid() -> pg_sys::Oid {
    let name = CString::new(ADMIN_ROLE).unwrap_or_default();
    // SAFETY: missing_ok lookup of a role by name.
    unsafe { pg_sys::get_role_oid(name.as_ptr(), true) }
}

/// Whether the current role has the privileges of the platform-admin role.
pub(crate) fn current_user_is_admin() -> bool {
    let admin = admin_role_oid();
    // SAFETY: GetUserId is the current (invoker) role; has_privs_of_role only reads
    // the role membership cache.
    admin != pg_sys::InvalidOid && unsafe { pg_sys::has_privs_of_role(pg_sys::GetUserId(), admin) }
}

fn query_uuid_array(sql: &str) -> Vec<Uuid> {
    Spi::connect(|c| {
        crate::catalog::select_kept(c, sql, Some(1), &[])
            .and_then(|t| t.first().get_one::<Vec<Option<Uuid>>>())
            .or_raise("reading tenant ids")
            .unwrap_or_default()
            .into_iter()
            .flatten()
            .collect()
    })
}

/// Every tenant id, read as the extension's owner (the registry is not readable by
/// tenants).
fn every_tenant() -> Vec<Uuid> {
    as_extension_owner(|| {
        let table = registry_relation(&tenants_table_sql());
        query_uuid_array(&format!(
            "SELECT COALESCE(pg_catalog.array_agg(id ORDER BY id), '{{}}') FROM {table}"
        ))
    })
}

/// Every tenant id: for platform admins and the extension (EXECUTE is not granted to
/// PUBLIC: the list of tenants is not a tenant's business).
#[pg_extern(stable, parallel_restricted, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn all_tenant_ids() -> Vec<Uuid> {
    every_tenant()
}

/// The tenant inside a policy: a bad context is no context (never an ERROR, whose
/// firing would depend on rows the caller cannot see).
fn policy_context() -> Option<Context> {
    outcome().ok().flatten()
}

/// The tenant ids the current request may read: its tenant plus Platform (only its
/// tenant when `shared` is false); every tenant for platform admins; none without a
/// (valid) tenant context.
#[pg_extern(stable, parallel_restricted)]
#[search_path(pg_catalog, pg_temp)]
fn visible_tenant_ids(shared: default!(bool, true)) -> Vec<Uuid> {
    if current_user_is_admin() {
        return every_tenant();
    }
    visible_of(policy_context(), shared)
}

fn visible_of(ctx: Option<Context>, shared: bool) -> Vec<Uuid> {
    let Some(ctx) = ctx else {
        return Vec::new();
    };
    let t = Uuid::from_bytes(ctx.tenant);
    let platform = Uuid::from_bytes(platform_bytes());
    if shared && !ctx.own_only && t != platform && ctx.platform_visible {
        vec![t, platform]
    } else {
        vec![t]
    }
}

fn writable_of(ctx: Option<Context>) -> Vec<[u8; 16]> {
    ctx.filter(|c| c.writes)
        .map(|c| c.tenant)
        .into_iter()
        .collect()
}

/// What the policies' three arrays hold for the current request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PolicyArrays {
    pub visible_shared: Vec<[u8; 16]>,
    pub visible_own: Vec<[u8; 16]>,
    pub writable: Vec<[u8; 16]>,
}

/// The arrays `visible_tenant_ids(true)`, `visible_tenant_ids(false)` and
/// `writable_tenant_ids()` return for the current role and context, from one
/// resolution; `None` for platform admins (every tenant, nothing to route by).
pub(crate) fn policy_arrays() -> Option<PolicyArrays> {
    if current_user_is_admin() {
        return None;
    }
    let ctx = policy_context();
    let bytes = |v: Vec<Uuid>| v.iter().map(|u| *u.as_bytes()).collect();
    Some(PolicyArrays {
        visible_shared: bytes(visible_of(ctx, true)),
        visible_own: bytes(visible_of(ctx, false)),
        writable: writable_of(ctx),
    })
}

/// The tenant ids the current request may write: its own tenant (Platform rows are
/// read-only to other tenants); every tenant for platform admins; none without a
/// (valid) tenant context.
#[pg_extern(stable, parallel_restricted)]
#[search_path(pg_catalog, pg_temp)]
fn writable_tenant_ids() -> Vec<Uuid> {
    writable_tenants()
        .into_iter()
        .map(Uuid::from_bytes)
        .collect()
}

/// What `writable_tenant_ids()` returns, for the current role (call it before any
/// switch to the extension's owner).
pub(crate) fn writable_tenants() -> Vec<[u8; 16]> {
    if current_user_is_admin() {
        return every_tenant().iter().map(|u| *u.as_bytes()).collect();
    }
    writable_of(policy_context())
}

/// Use another table for the membership check of the x-tenant-id header.
#[pg_extern(volatile)]
#[search_path(pg_catalog, pg_temp)]
fn set_membership_table(
    tbl: crate::catalog::Regclass,
    user_column: default!(&str, "'user_id'"),
    tenant_column: default!(&str, "'tenant_id'"),
) {
    let oid = tbl.oid();
    // Always schema-qualified (a bare name would be resolved again at every look-up);
    // never a temporary table (another session's temp table of the same name would
    // then decide memberships).
    let (name, temporary): (String, bool) = Spi::connect(|c| {
        let t = c
            .select(
                "SELECT CASE WHEN c.relpersistence = 't' THEN 'pg_temp.' || pg_catalog.quote_ident(c.relname)
                            ELSE pg_catalog.format('%I.%I', n.nspname, c.relname) END, c.relpersistence = 't'
                   FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                  WHERE c.oid = $1",
                Some(1),
                &[oid.into()],
            )
            .or_raise("naming the membership table");
        let r = t.first();
        (
            r.get::<String>(1)
                .or_raise("naming the membership table")
                .unwrap_or_default(),
            r.get::<bool>(2)
                .or_raise("reading relpersistence")
                .unwrap_or(false),
        )
    });
    if temporary {
        raise(
            PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            format!("membership table {name} is a temporary table; memberships must live in a permanent table"),
        );
    }
    for col in [user_column, tenant_column] {
        let is_uuid: Option<bool> = Spi::connect(|c| {
            c.select(
                "SELECT a.atttypid = 'pg_catalog.uuid'::pg_catalog.regtype FROM pg_catalog.pg_attribute a
                  WHERE a.attrelid = $1 AND a.attname = $2 AND a.attnum > 0 AND NOT a.attisdropped",
                Some(1),
                &[oid.into(), col.into()],
            )
            .and_then(|t| if t.is_empty() { Ok(None) } else { t.first().get_one() })
            .or_raise("checking a membership column")
        });
        match is_uuid {
            None => raise(
                PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
                format!(
                    "column {} of membership table {name} does not exist",
                    display_ident(col)
                ),
            ),
            Some(false) => raise(
                PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
                format!(
                    "column {} of membership table {name} must be of type uuid",
                    display_ident(col)
                ),
            ),
            Some(true) => {}
        }
    }
    Spi::connect_mut(|c| {
        for (k, v) in [
            ("membership_table", name.as_str()),
            ("membership_user_column", user_column),
            ("membership_tenant_column", tenant_column),
        ] {
            c.update(
                "INSERT INTO vital_tenancy.settings (name, value) VALUES ($1, $2)
                 ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value, updated_at = pg_catalog.now()",
                None,
                &[k.into(), v.into()],
            )
            .or_raise("storing the membership settings");
        }
    });
}
