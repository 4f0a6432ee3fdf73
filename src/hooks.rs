//! Calling on down a chain of PostgreSQL hooks: the previous hook if another library
//! installed one before this one, else PostgreSQL's standard function.

use pgrx::prelude::*;

/// The rest of the ProcessUtility chain after one of this library's hooks.
///
/// # Safety
/// The arguments are those the hook received (the ProcessUtility_hook protocol).
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn process_utility_next(
    prev: pg_sys::ProcessUtility_hook_type,
    pstmt: *mut pg_sys::PlannedStmt,
    query_string: *const std::ffi::c_char,
    read_only_tree: bool,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    query_env: *mut pg_sys::QueryEnvironment,
    dest: *mut pg_sys::DestReceiver,
    qc: *mut pg_sys::QueryCompletion,
) {
    // SAFETY: forwarded unchanged, as the protocol requires.
    unsafe {
        match prev {
            Some(prev) => prev(
                pstmt,
                query_string,
                read_only_tree,
                context,
                params,
                query_env,
                dest,
                qc,
            ),
            None => pg_sys::standard_ProcessUtility(
                pstmt,
                query_string,
                read_only_tree,
                context,
                params,
                query_env,
                dest,
                qc,
            ),
        }
    }
}
