//! `EXPLAIN ANALYZE` under the tenant boundary.
//!
//! `EXPLAIN ANALYZE` runs the statement and prints, per plan node, how many rows each
//! filter removed: under row level security that counts the rows the policies hid, so
//! a role that may see one tenant learns how many rows the others hold, and with a
//! leakproof filter of its choosing (`content >= 'x' AND content < 'y'`) whether a
//! secret of theirs matches, one bit per statement.
//!
//! With `vital_tenancy.restrict_explain_analyze` on (the default), the utility hook
//! refuses `EXPLAIN (ANALYZE)` of a statement that reads a relation under row level
//! security for the current role (every tenant table and the registry among them),
//! before anything runs: the statement is planned once more to learn the relations it
//! would read (the plan's `relationOids`, views and sub-queries included). Superusers,
//! roles with `BYPASSRLS`, the tables' owners (row level security does not apply to
//! them) and platform admins (`vital_tenancy_admin`) are not affected; plain `EXPLAIN`
//! (estimates, no execution) is allowed. The hook is installed when the library loads:
//! in a backend that has not loaded it yet (no extension function called so far), the
//! first statement is not checked, so `session_preload_libraries = 'vital_tenancy'`
//! (or `shared_preload_libraries`) makes it hold from a connection's first statement;
//! PostgREST's `pre_request()` loads it before every request's query.

use crate::errors::raise_full;
use pgrx::prelude::*;
use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting, PgList};
use std::ffi::CStr;

/// `vital_tenancy.restrict_explain_analyze`.
pub static RESTRICT_EXPLAIN_ANALYZE: GucSetting<bool> = GucSetting::<bool>::new(true);

static mut PREV_UTILITY: pg_sys::ProcessUtility_hook_type = None;

/// Define the setting and install the utility hook. Called once per backend from
/// `_PG_init`.
pub fn init() {
    GucRegistry::define_bool_guc(
        c"vital_tenancy.restrict_explain_analyze",
        c"Refuse EXPLAIN ANALYZE of statements on tables under row level security for the current role.",
        c"On by default: EXPLAIN ANALYZE counts the rows the policies hid (Rows Removed by Filter), which tells a tenant about other tenants' rows. Superusers, BYPASSRLS roles, table owners and vital_tenancy_admin are not affected. Superuser-only: ALTER ROLE ... SET vital_tenancy.restrict_explain_analyze = off for a role that may see those counts.",
        &RESTRICT_EXPLAIN_ANALYZE,
        GucContext::Suset,
        GucFlags::default(),
    );
    // SAFETY: hooks are chained as PostgreSQL documents; this runs once per backend.
    unsafe {
        PREV_UTILITY = pg_sys::ProcessUtility_hook;
        pg_sys::ProcessUtility_hook = Some(process_utility);
    }
}

#[pg_guard]
#[allow(clippy::too_many_arguments)]
unsafe extern "C-unwind" fn process_utility(
    pstmt: *mut pg_sys::PlannedStmt,
    query_string: *const std::ffi::c_char,
    read_only_tree: bool,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    query_env: *mut pg_sys::QueryEnvironment,
    dest: *mut pg_sys::DestReceiver,
    qc: *mut pg_sys::QueryCompletion,
) {
    // SAFETY: the ProcessUtility_hook protocol: pstmt is the statement about to run.
    unsafe {
        if RESTRICT_EXPLAIN_ANALYZE.get() && !pstmt.is_null() {
            check_explain((*pstmt).utilityStmt, query_string, params);
        }
        crate::hooks::process_utility_next(
            PREV_UTILITY,
            pstmt,
            query_string,
            read_only_tree,
            context,
            params,
            query_env,
            dest,
            qc,
        );
    }
}

/// Whether an `EXPLAIN` statement's options ask for `ANALYZE`.
///
/// # Safety
/// `stmt` is an `ExplainStmt`.
unsafe fn analyzes(stmt: *mut pg_sys::ExplainStmt) -> bool {
    // SAFETY: the options are a List of DefElem (parse tree of EXPLAIN).
    unsafe {
        PgList::<pg_sys::DefElem>::from_pg((*stmt).options)
            .iter_ptr()
            .any(|opt| {
                !opt.is_null()
                    && !(*opt).defname.is_null()
                    && CStr::from_ptr((*opt).defname).to_bytes() == b"analyze"
                    && pg_sys::defGetBoolean(opt)
            })
    }
}

/// ERROR 42501 when an `EXPLAIN ANALYZE` would run a statement that reads a relation
/// under row level security for the current role.
///
/// # Safety
/// `node` is the utility statement of the PlannedStmt about to be run, `params` its
/// parameters.
unsafe fn check_explain(
    node: *mut pg_sys::Node,
    query_string: *const std::ffi::c_char,
    params: pg_sys::ParamListInfo,
) {
    // SAFETY: node tags identify the statement types; every pointer read is part of
    // the statement's tree.
    unsafe {
        if node.is_null() || (*node).type_ != pg_sys::NodeTag::T_ExplainStmt {
            return;
        }
        let stmt = node as *mut pg_sys::ExplainStmt;
        // Platform admins see every tenant's rows anyway; RLS does not apply to
        // superusers, BYPASSRLS roles and owners (checked per relation below).
        if !analyzes(stmt) || crate::context::current_user_is_admin() {
            return;
        }
        let mut relations = Vec::new();
        collect_relations((*stmt).query, query_string, params, &mut relations);
        for oid in relations {
            let rls = pg_sys::check_enable_rls(oid, pg_sys::InvalidOid, true);
            if rls == pg_sys::CheckEnableRlsResult::RLS_ENABLED as i32 {
                let table = Spi::connect(|c| crate::catalog::table_name(c, oid));
                raise_full(
                    PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                    format!(
                        "permission denied for EXPLAIN ANALYZE: the statement reads {table}, which is under row level security for role \"{}\"",
                        crate::guc::role_name(pg_sys::GetUserId())
                    ),
                    Some("EXPLAIN ANALYZE counts the rows the policies hide (Rows Removed by Filter): it would tell this role about rows it cannot see.".into()),
                    Some("EXPLAIN without ANALYZE shows the plan. A superuser can turn vital_tenancy.restrict_explain_analyze off for a role that may see those counts.".into()),
                );
            }
        }
    }
}

/// The relations an explained statement would read: it is rewritten (views and rules
/// expanded) and planned, as EXPLAIN would, and each plan's `relationOids` collected;
/// `EXECUTE` of a prepared statement contributes its cached plan source's.
///
/// # Safety
/// `node` is the (analyzed, not yet rewritten) statement of an `ExplainStmt`.
unsafe fn collect_relations(
    node: *mut pg_sys::Node,
    query_string: *const std::ffi::c_char,
    params: pg_sys::ParamListInfo,
    out: &mut Vec<pg_sys::Oid>,
) {
    // SAFETY: as in check_explain; the query is copied before rewriting and planning,
    // which scribble on their input, so EXPLAIN itself gets the statement untouched.
    unsafe {
        if node.is_null() || (*node).type_ != pg_sys::NodeTag::T_Query {
            return;
        }
        let query = node as *mut pg_sys::Query;
        if (*query).commandType == pg_sys::CmdType::CMD_UTILITY {
            utility_relations((*query).utilityStmt, query_string, params, out);
            return;
        }
        let copy = pg_sys::copyObjectImpl(query as *const std::ffi::c_void) as *mut pg_sys::Query;
        let rewritten = PgList::<pg_sys::Query>::from_pg(pg_sys::QueryRewrite(copy));
        for q in rewritten.iter_ptr() {
            if q.is_null() {
                continue;
            }
            if (*q).commandType == pg_sys::CmdType::CMD_UTILITY {
                utility_relations((*q).utilityStmt, query_string, params, out);
                continue;
            }
            let plan = pg_sys::pg_plan_query(
                q,
                query_string,
                pg_sys::CURSOR_OPT_PARALLEL_OK as i32,
                params,
            );
            if !plan.is_null() {
                out.extend(PgList::<pg_sys::Oid>::from_pg((*plan).relationOids).iter_oid());
            }
        }
    }
}

/// The relations of the utility statements EXPLAIN accepts: `EXECUTE` (the prepared
/// statement's dependencies), `CREATE TABLE AS` / `CREATE MATERIALIZED VIEW` and
/// `DECLARE CURSOR` (their query).
///
/// # Safety
/// `node` is a utility statement inside an explained Query.
unsafe fn utility_relations(
    node: *mut pg_sys::Node,
    query_string: *const std::ffi::c_char,
    params: pg_sys::ParamListInfo,
    out: &mut Vec<pg_sys::Oid>,
) {
    // SAFETY: node tags identify the statement types.
    unsafe {
        if node.is_null() {
            return;
        }
        match (*node).type_ {
            pg_sys::NodeTag::T_ExecuteStmt => {
                let e = node as *mut pg_sys::ExecuteStmt;
                let prepared = pg_sys::FetchPreparedStatement((*e).name, false);
                if !prepared.is_null() && !(*prepared).plansource.is_null() {
                    out.extend(
                        PgList::<pg_sys::Oid>::from_pg((*(*prepared).plansource).relationOids)
                            .iter_oid(),
                    );
                }
            }
            pg_sys::NodeTag::T_CreateTableAsStmt => {
                let c = node as *mut pg_sys::CreateTableAsStmt;
                collect_relations((*c).query, query_string, params, out);
            }
            pg_sys::NodeTag::T_DeclareCursorStmt => {
                let d = node as *mut pg_sys::DeclareCursorStmt;
                collect_relations((*d).query, query_string, params, out);
            }
            _ => {}
        }
    }
}
