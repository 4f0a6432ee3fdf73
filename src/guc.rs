//! Server settings the tenant context depends on: the extension's own GUCs
//! (`vital.tenant_id`, `vital_tenancy.session_context`), who may set a tenant, and
//! whether a setting's current value was set inside the current transaction.
//!
//! PostgreSQL keeps, per setting, a stack of the values a transaction changed
//! (`config_generic.stack`): `SET LOCAL` and `set_config(..., true)` push an entry in
//! state `GUC_LOCAL` (or `GUC_SET_LOCAL` after a plain `SET` in the same transaction),
//! a function's `SET` clause one in state `GUC_SAVE`, a plain `SET` one in `GUC_SET`.
//! At the end of the transaction the stack is emptied; a value with no entry, or whose
//! newest entry is `GUC_SET`, outlives the transaction: it is a session value, a role
//! or database default, a startup option, or what an earlier client left on a pooled
//! server connection. The record is found with `find_option()` on PostgreSQL 16 and
//! later, and by the same binary search over the exported array on 15.

use crate::logic::rls::SERVICE_ROLE;
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::ffi::{c_char, c_void, CStr, CString};

/// The role whose members (as login role, `session_user`) may establish a tenant context.
pub const CONTEXT_ROLE: &str = "vital_tenancy_context";

/// `vital_tenancy.session_context`: honour context values that outlive a transaction.
pub static SESSION_CONTEXT: GucSetting<bool> = GucSetting::<bool>::new(false);

/// `vital_tenancy.track_activity`: collect per-tenant activity (when preloaded).
pub static TRACK_ACTIVITY: GucSetting<bool> = GucSetting::<bool>::new(true);

/// Storage of `vital.tenant_id` (owned by the GUC machinery).
static mut TENANT_SETTING_VALUE: *mut c_char = std::ptr::null_mut();

/// Define the extension's settings. Called once per backend from `_PG_init`.
pub fn init() {
    GucRegistry::define_bool_guc(
        c"vital_tenancy.session_context",
        c"Honour tenant context values set outside the current transaction.",
        c"Off (the default): vital.tenant_id, request.jwt.claims and request.headers count only when set inside the current transaction (SET LOCAL, set_config(..., true)), so a pooled server connection never hands one client's tenant to the next. Turn on only for a login role with a dedicated connection per tenant (ALTER ROLE ... SET).",
        &SESSION_CONTEXT,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"vital_tenancy.track_activity",
        c"Collect per-tenant statements, rows and time for vital_tenancy.tenant_activity().",
        c"On by default; takes effect only when vital_tenancy is in shared_preload_libraries. Superusers may turn it off per database, role or session (ALTER DATABASE ... SET) without a restart.",
        &TRACK_ACTIVITY,
        GucContext::Suset,
        GucFlags::default(),
    );
    // SAFETY: the name, descriptions and the storage are 'static; the check hook is a
    // plain function. Called from _PG_init, before any SET of this backend can run
    // through the definition.
    unsafe {
        pg_sys::DefineCustomStringVariable(
            c"vital.tenant_id".as_ptr(),
            c"Tenant of the current request (set with SET LOCAL or vital_tenancy.set_tenant()).".as_ptr(),
            c"Only sessions whose login role is a member of vital_tenancy_context may set it; it counts only when set inside the current transaction unless vital_tenancy.session_context is on.".as_ptr(),
            std::ptr::addr_of_mut!(TENANT_SETTING_VALUE),
            c"".as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            0,
            Some(check_tenant_setting),
            None,
            None,
        );
    }
}

/// The oid of the named role and of `user()`, both valid, inside a transaction (role
/// lookups read the catalog caches); `None` otherwise.
fn role_and_user(
    name: &str,
    user: impl FnOnce() -> pg_sys::Oid,
) -> Option<(pg_sys::Oid, pg_sys::Oid)> {
    let cname = CString::new(name).ok()?;
    // SAFETY: a plain query of the transaction state, then a missing_ok role lookup.
    let role = unsafe {
        if !pg_sys::IsTransactionState() {
            return None;
        }
        pg_sys::get_role_oid(cname.as_ptr(), true)
    };
    let user = user();
    (role != pg_sys::InvalidOid && user != pg_sys::InvalidOid).then_some((role, user))
}

/// Whether the session's login role may establish a tenant context.
pub fn session_is_trusted() -> bool {
    // SAFETY: GetSessionUserId is this backend's login role.
    role_is_trusted(unsafe { pg_sys::GetSessionUserId() })
}

/// Whether the request's current role (as `SET ROLE` left it, outside any SECURITY
/// DEFINER switch) has the privileges of `vital_tenancy_service`. Superusers have every
/// role's privileges but are not the service path.
pub fn current_role_is_service() -> bool {
    // SAFETY: GetOuterUserId is the role SET ROLE chose; the checks read role caches.
    role_and_user(SERVICE_ROLE, || unsafe { pg_sys::GetOuterUserId() }).is_some_and(
        |(role, user)| unsafe {
            !pg_sys::superuser_arg(user) && pg_sys::has_privs_of_role(user, role)
        },
    )
}

/// A setting's current value (`None` when it does not exist).
pub fn value(name: &str) -> Option<String> {
    let cname = CString::new(name).ok()?;
    // SAFETY: GetConfigOption with missing_ok returns NULL or a valid C string owned by
    // the GUC machinery, which is copied at once.
    unsafe {
        let p = pg_sys::GetConfigOption(cname.as_ptr(), true, false);
        if p.is_null() {
            None
        } else {
            Some(CStr::from_ptr(p).to_string_lossy().into_owned())
        }
    }
}

/// PostgreSQL's `guc_name_compare`: ASCII case-insensitive, byte-wise.
#[cfg(feature = "pg15")]
fn guc_name_cmp(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    let fold = |c: u8| c.to_ascii_lowercase();
    a.iter().map(|&c| fold(c)).cmp(b.iter().map(|&c| fold(c)))
}

/// Where the current value of a setting came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    /// Set inside the current transaction (see the module comment).
    pub local: bool,
    /// The role that set it (`config_generic.srole`: the current user at the time, so
    /// the extension's owner inside its SECURITY DEFINER functions; the bootstrap
    /// superuser for configuration files and role or database defaults).
    pub setter: pg_sys::Oid,
}

/// The backend's record of setting `name` (NULL when there is none). PostgreSQL 15
/// exports only the sorted array of settings, which `find_option()` binary-searches:
/// the same search here. PostgreSQL 16 and later export `find_option()` itself.
#[cfg(feature = "pg15")]
unsafe fn find_setting(name: &str) -> *mut pg_sys::config_generic {
    // SAFETY: get_guc_variables()/GetNumConfigOptions() describe the backend's sorted
    // array of settings; it is only read here, within this call, and no setting is
    // created meanwhile.
    unsafe {
        let vars = pg_sys::get_guc_variables();
        let n = pg_sys::GetNumConfigOptions();
        if vars.is_null() || n <= 0 {
            return std::ptr::null_mut();
        }
        let slice = std::slice::from_raw_parts(vars, n as usize);
        let found = slice.binary_search_by(|&g| {
            if g.is_null() || (*g).name.is_null() {
                return std::cmp::Ordering::Less;
            }
            guc_name_cmp(CStr::from_ptr((*g).name).to_bytes(), name.as_bytes())
        });
        found.map(|i| slice[i]).unwrap_or(std::ptr::null_mut())
    }
}

#[cfg(not(feature = "pg15"))]
unsafe fn find_setting(name: &str) -> *mut pg_sys::config_generic {
    let Ok(cname) = CString::new(name) else {
        return std::ptr::null_mut();
    };
    // SAFETY: find_option without creating placeholders and without reporting errors
    // returns the setting's record or NULL.
    unsafe { pg_sys::find_option(cname.as_ptr(), false, true, pg_sys::WARNING as i32) }
}

/// Where the current value of setting `name` came from; `None` for a setting that
/// does not exist.
pub fn origin(name: &str) -> Option<Origin> {
    // SAFETY: find_setting returns the backend's record of the setting or NULL; its
    // stack (the values this transaction changed) and setter are only read here.
    unsafe {
        let g = find_setting(name);
        if g.is_null() {
            return None;
        }
        let stack = (*g).stack;
        use pg_sys::GucStackState::*;
        let local =
            !stack.is_null() && matches!((*stack).state, GUC_LOCAL | GUC_SET_LOCAL | GUC_SAVE);
        Some(Origin {
            local,
            setter: (*g).srole,
        })
    }
}

/// Whether `role` may choose a tenant by itself: a member of `vital_tenancy_context`
/// (superusers are members of every role). Inside a transaction only (role lookups
/// read the caches).
fn role_is_trusted(role: pg_sys::Oid) -> bool {
    // SAFETY: is_member_of_role reads the role membership cache, inside the
    // transaction role_and_user checked.
    role_and_user(CONTEXT_ROLE, || role)
        .is_some_and(|(context, r)| unsafe { pg_sys::is_member_of_role(r, context) })
}

/// A role that runs inside a request and must not choose its tenant: neither the
/// login role (`session_user`) nor trusted itself (PostgREST's `anon` and
/// `authenticated`, `vital_tenancy_service`, an application role after `SET ROLE`).
pub fn is_confined(role: pg_sys::Oid) -> bool {
    // SAFETY: GetSessionUserId is this backend's login role; superuser_arg reads the
    // role cache (the common setters, the login role and the extension's owner, are
    // answered without a membership check).
    role != pg_sys::InvalidOid
        && role != unsafe { pg_sys::GetSessionUserId() }
        && !unsafe { pg_sys::IsTransactionState() && pg_sys::superuser_arg(role) }
        && !role_is_trusted(role)
}

/// The current role as `SET ROLE` left it (outside any SECURITY DEFINER switch).
pub fn outer_role() -> pg_sys::Oid {
    // SAFETY: reads a backend global.
    unsafe { pg_sys::GetOuterUserId() }
}

/// Whether the request currently runs as a confined role.
pub fn request_is_confined() -> bool {
    is_confined(outer_role())
}

fn check_error(code: PgSqlErrorCode, msg: String, hint: Option<&str>) -> bool {
    // SAFETY: the GUC check-hook error protocol: an error code and palloc'd message
    // strings that the caller reports when the hook returns false.
    unsafe {
        pg_sys::GUC_check_errcode(code as i32);
        if let Ok(m) = CString::new(msg) {
            pg_sys::GUC_check_errmsg_string = pg_sys::pstrdup(m.as_ptr());
        }
        if let Some(h) = hint.and_then(|h| CString::new(h).ok()) {
            pg_sys::GUC_check_errhint_string = pg_sys::pstrdup(h.as_ptr());
        }
    }
    false
}

/// Check hook of `vital.tenant_id`: an empty value (no tenant) is always allowed; a
/// tenant must be a uuid, and a session whose login role is not a member of
/// `vital_tenancy_context` may not set one (ERROR 42501 at SET time).
#[pg_guard]
unsafe extern "C-unwind" fn check_tenant_setting(
    newval: *mut *mut c_char,
    _extra: *mut *mut c_void,
    source: pg_sys::GucSource::Type,
) -> bool {
    // SAFETY: newval points at the proposed value (a C string or NULL).
    let v = unsafe {
        if newval.is_null() || (*newval).is_null() {
            return true;
        }
        CStr::from_ptr(*newval).to_string_lossy().into_owned()
    };
    let v = v.trim();
    if v.is_empty() {
        return true;
    }
    if crate::logic::tenants::uuid_bytes(&v.to_ascii_lowercase()).is_none() {
        return check_error(
            PgSqlErrorCode::ERRCODE_INVALID_TEXT_REPRESENTATION,
            format!(
                "invalid tenant context: setting vital.tenant_id is not a valid uuid: \"{}\"",
                v.chars().take(60).collect::<String>()
            ),
            None,
        );
    }
    // Values from configuration files and role/database defaults are the DBA's; they
    // are checked again (and by default ignored) when the context is read.
    use pg_sys::GucSource::*;
    let interactive = source == PGC_S_SESSION || source == PGC_S_CLIENT;
    // SAFETY: plain query of the transaction state.
    if interactive && unsafe { pg_sys::IsTransactionState() } && !session_is_trusted() {
        return check_error(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!(
                "permission denied to set vital.tenant_id: login role \"{}\" is not a member of {CONTEXT_ROLE}",
                session_user_name()
            ),
            Some("Only trusted application backends choose a tenant: GRANT vital_tenancy_context TO <login role>;"),
        );
    }
    // SQL running inside a request as a confined role (an RPC body, an injection) does
    // not choose its tenant; set_tenant() runs as the extension's owner and passes.
    // SAFETY: GetUserId is the current user; plain query of the transaction state.
    if interactive
        && unsafe { pg_sys::IsTransactionState() }
        && is_confined(unsafe { pg_sys::GetUserId() })
    {
        return check_error(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!(
                "permission denied to set vital.tenant_id: role \"{}\" runs inside a request and may not choose its tenant",
                role_name(unsafe { pg_sys::GetUserId() })
            ),
            Some("Choose the tenant before switching roles: SELECT vital_tenancy.set_tenant(...); then SET LOCAL ROLE ...; PostgREST requests take it from the JWT claims through vital_tenancy.pre_request()."),
        );
    }
    true
}

/// The login role's name (for messages).
pub fn session_user_name() -> String {
    // SAFETY: reads a backend global.
    role_name(unsafe { pg_sys::GetSessionUserId() })
}

/// A role's name (for messages).
pub fn role_name(role: pg_sys::Oid) -> String {
    // SAFETY: GetUserNameFromId with noerr returns NULL or a palloc'd name.
    unsafe {
        let p = pg_sys::GetUserNameFromId(role, true);
        if p.is_null() {
            "?".into()
        } else {
            CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    }
}
