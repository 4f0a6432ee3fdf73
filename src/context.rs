//! Tenant context: which tenant the current request acts for.
//!
//! `current_tenant_id()` reads `vital.tenant_id`, then `request.jwt.claims`, then a
//! membership-checked `x-tenant-id` in `request.headers` (see `logic::context`). It is
//! SECURITY DEFINER (the tenants and membership tables need not be readable by the
//! application's roles) with a pinned search_path, and caches its answer keyed on the
//! raw settings and the command id, so a column DEFAULT that calls it for every
//! inserted row costs a setting read and a string compare, not a query.

use crate::errors::{raise, raise_full, OrRaise};
use crate::logic::context::{
    format_uuid, resolve, ContextError, RawContext, Source, TENANT_SETTING,
};
use crate::logic::ident::display_ident;
use crate::logic::rls::ADMIN_ROLE;
use pgrx::prelude::*;
use pgrx::{PgRelation, Uuid};
use std::cell::RefCell;
use std::ffi::{CStr, CString};

/// The last answer of `current_tenant_id()` in this transaction.
struct Cached {
    raw: RawContext,
    command: u32,
    tenant: Option<[u8; 16]>,
}

thread_local! {
    static CONTEXT_CACHE: RefCell<Option<Cached>> = const { RefCell::new(None) };
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
        CONTEXT_CACHE.with(|c| {
            if let Ok(mut c) = c.try_borrow_mut() {
                *c = None;
            }
        });
    }
}

/// Register the end-of-transaction cache reset. Called once per backend from `_PG_init`.
pub fn init() {
    // SAFETY: a static callback that only resets thread-local state of this backend.
    unsafe { pg_sys::RegisterXactCallback(Some(xact_callback), std::ptr::null_mut()) };
}

fn guc(name: &str) -> Option<String> {
    let cname = CString::new(name).ok()?;
    // SAFETY: GetConfigOption with missing_ok returns NULL or a valid C string owned by
    // the GUC machinery, which we copy at once.
    unsafe {
        let p = pg_sys::GetConfigOption(cname.as_ptr(), true, false);
        if p.is_null() {
            None
        } else {
            Some(CStr::from_ptr(p).to_string_lossy().into_owned())
        }
    }
}

fn raw_context() -> RawContext {
    RawContext {
        tenant_setting: guc(TENANT_SETTING),
        claims: guc(crate::logic::context::CLAIMS_SETTING),
        headers: guc(crate::logic::context::HEADERS_SETTING),
    }
}

/// The application's tenants table as SQL text (regclass output), or an ERROR.
pub(crate) fn tenants_table_sql() -> String {
    Spi::connect(crate::catalog::require_tenants_table)
}

pub(crate) fn tenant_exists(table: &str, id: [u8; 16]) -> bool {
    Spi::connect(|c| {
        c.select(
            &format!("SELECT EXISTS (SELECT 1 FROM {table} WHERE id = $1)"),
            Some(1),
            &[Uuid::from_bytes(id).into()],
        )
        .and_then(|t| t.first().get_one::<bool>())
        .or_raise("checking a tenant")
        .unwrap_or(false)
    })
}

fn require_tenant(id: [u8; 16], source: &str) {
    let table = tenants_table_sql();
    if !tenant_exists(&table, id) {
        raise(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!(
                "tenant {} from {source} does not exist in {table}",
                format_uuid(&id)
            ),
        );
    }
}

/// The membership table and its user and tenant columns, quoted for SQL.
fn membership_sql() -> (String, String, String) {
    let row = Spi::connect(|c| {
        let t = c
            .select(
                "SELECT pg_catalog.to_regclass(COALESCE(
                        (SELECT value FROM vital_tenancy.settings WHERE name = 'membership_table'),
                        'vital_tenancy.tenant_members'))::pg_catalog.text,
                        COALESCE((SELECT value FROM vital_tenancy.settings WHERE name = 'membership_user_column'), 'user_id'),
                        COALESCE((SELECT value FROM vital_tenancy.settings WHERE name = 'membership_tenant_column'), 'tenant_id')",
                Some(1),
                &[],
            )
            .or_raise("reading the membership settings");
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
        (Some(t), Some(u), Some(c)) => (
            t,
            crate::logic::ident::quote_ident(&u),
            crate::logic::ident::quote_ident(&c),
        ),
        _ => raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "the tenant membership table configured for vital_tenancy does not exist",
        ),
    }
}

fn is_member(user: [u8; 16], tenant: [u8; 16]) -> bool {
    let (table, ucol, tcol) = membership_sql();
    Spi::connect(|c| {
        c.select(
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
    })
}

fn context_error(e: ContextError) -> ! {
    let code = match e {
        ContextError::MalformedUuid { .. } | ContextError::MalformedJson { .. } => {
            PgSqlErrorCode::ERRCODE_INVALID_TEXT_REPRESENTATION
        }
        ContextError::HeaderWithoutUser { .. } => PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
    };
    raise(code, e.to_string())
}

/// Resolve and validate the tenant context (uncached).
fn resolve_tenant(raw: &RawContext) -> Option<[u8; 16]> {
    match resolve(raw).unwrap_or_else(|e| context_error(e)) {
        Source::Setting(t) => {
            require_tenant(t, "setting vital.tenant_id");
            Some(t)
        }
        Source::Claims(t) => {
            require_tenant(t, "tenant_id in request.jwt.claims");
            Some(t)
        }
        Source::Header { tenant, user } => {
            if !is_member(user, tenant) {
                raise_full(
                    PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                    format!(
                        "user {} is not a member of tenant {} requested by header x-tenant-id",
                        format_uuid(&user),
                        format_uuid(&tenant)
                    ),
                    Some("A tenant header is only honoured for members of that tenant.".into()),
                    Some(format!(
                        "Add the membership to {}, or put the tenant in the JWT claims.",
                        membership_sql().0
                    )),
                );
            }
            require_tenant(tenant, "header x-tenant-id");
            Some(tenant)
        }
        Source::None => None,
    }
}

/// The tenant the current request acts for, or NULL (nothing visible, no writes).
#[pg_extern(stable, parallel_safe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
pub fn current_tenant_id() -> Option<Uuid> {
    let raw = raw_context();
    // Within one command (e.g. the column DEFAULT for every row of an INSERT) the
    // answer cannot change; a later command may see changed tenants or memberships.
    // SAFETY: reads the current command id of this backend's transaction.
    let command = unsafe { pg_sys::GetCurrentCommandId(false) };
    let cached = CONTEXT_CACHE.with(|c| {
        c.borrow()
            .as_ref()
            .and_then(|c| (c.raw == raw && c.command == command).then_some(c.tenant))
    });
    let tenant = match cached {
        Some(t) => t,
        None => {
            let t = resolve_tenant(&raw);
            CONTEXT_CACHE.with(|c| {
                *c.borrow_mut() = Some(Cached {
                    raw,
                    command,
                    tenant: t,
                })
            });
            t
        }
    };
    tenant.map(Uuid::from_bytes)
}

/// Set the tenant for the rest of the current transaction (`vital.tenant_id`, local).
/// For trusted application backends on pooled connections. NULL clears it.
#[pg_extern(volatile, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn set_tenant(tenant: Option<Uuid>) -> Option<Uuid> {
    if let Some(t) = tenant {
        require_tenant(*t.as_bytes(), "set_tenant()");
    }
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
            &[text.into()],
        )
        .map(|_| ())
        .or_raise("setting vital.tenant_id")
    });
    tenant
}

fn admin_role_oid() -> pg_sys::Oid {
    let name = CString::new(ADMIN_ROLE).unwrap_or_default();
    // SAFETY: missing_ok lookup of a role by name.
    unsafe { pg_sys::get_role_oid(name.as_ptr(), true) }
}

/// Whether the current role has the privileges of the platform-admin role.
fn current_user_is_admin() -> bool {
    let admin = admin_role_oid();
    // SAFETY: GetUserId is the current (invoker) role; has_privs_of_role only reads
    // the role membership cache.
    admin != pg_sys::InvalidOid && unsafe { pg_sys::has_privs_of_role(pg_sys::GetUserId(), admin) }
}

fn query_uuid_array(sql: &str) -> Vec<Uuid> {
    Spi::connect(|c| {
        c.select(sql, Some(1), &[])
            .and_then(|t| t.first().get_one::<Vec<Option<Uuid>>>())
            .or_raise("reading tenant ids")
            .unwrap_or_default()
            .into_iter()
            .flatten()
            .collect()
    })
}

/// Every tenant id (for platform admins). SECURITY DEFINER: the tenants table need
/// not be readable by the caller.
#[pg_extern(stable, parallel_safe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn all_tenant_ids() -> Vec<Uuid> {
    let table = tenants_table_sql();
    query_uuid_array(&format!(
        "SELECT COALESCE(pg_catalog.array_agg(id ORDER BY id), '{{}}') FROM {table}"
    ))
}

fn context_tenant() -> Option<Uuid> {
    // Through SQL, so that current_tenant_id() runs with its definer's rights.
    Spi::connect(|c| {
        c.select("SELECT vital_tenancy.current_tenant_id()", Some(1), &[])
            .and_then(|t| t.first().get_one::<Uuid>())
            .or_raise("reading the tenant context")
    })
}

/// The tenant ids the current request may read: its tenant plus Platform (only its
/// tenant when `shared` is false); every tenant for platform admins; none without a
/// tenant context.
#[pg_extern(stable, parallel_safe)]
#[search_path(pg_catalog, pg_temp)]
fn visible_tenant_ids(shared: default!(bool, true)) -> Vec<Uuid> {
    if current_user_is_admin() {
        return query_uuid_array("SELECT vital_tenancy.all_tenant_ids()");
    }
    let Some(t) = context_tenant() else {
        return Vec::new();
    };
    let platform = Uuid::from_bytes(
        crate::logic::tenants::uuid_bytes(crate::logic::tenants::PLATFORM.id).unwrap_or_default(),
    );
    if shared && t != platform {
        vec![t, platform]
    } else {
        vec![t]
    }
}

/// The tenant ids the current request may write: its own tenant (Platform rows are
/// read-only to other tenants); every tenant for platform admins.
#[pg_extern(stable, parallel_safe)]
#[search_path(pg_catalog, pg_temp)]
fn writable_tenant_ids() -> Vec<Uuid> {
    if current_user_is_admin() {
        return query_uuid_array("SELECT vital_tenancy.all_tenant_ids()");
    }
    context_tenant().into_iter().collect()
}

/// Use another table for the membership check of the x-tenant-id header.
#[pg_extern(volatile)]
#[search_path(pg_catalog, pg_temp)]
fn set_membership_table(
    tbl: PgRelation,
    user_column: default!(&str, "'user_id'"),
    tenant_column: default!(&str, "'tenant_id'"),
) {
    let oid = tbl.oid();
    let name: String = Spi::connect(|c| {
        c.select(
            "SELECT $1::pg_catalog.regclass::pg_catalog.text",
            Some(1),
            &[oid.into()],
        )
        .and_then(|t| t.first().get_one())
        .or_raise("naming the membership table")
        .unwrap_or_default()
    });
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
