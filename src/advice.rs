//! Index advice from what the application runs: `query_advice()` reads its statements
//! from pg_stat_statements, plans each one as the role that ran it (under its tables'
//! policies, and again without them), proposes tenant-leading (or, for a page of the
//! newest rows, order-leading) indexes where a plan scans a tenant table or sorts it,
//! and verifies each with hypopg's hypothetical indexes. `query_coverage()` is the share
//! of those statements' calls that no sequential scan of a tenant table serves.
//!
//! Statements are only parsed and planned here, never executed: as their own role,
//! with `SECURITY_RESTRICTED_OPERATION` (what the planner may evaluate runs with that
//! role's rights only), inside a subtransaction that is always rolled back. The
//! decisions are in `logic::advice`.

use crate::catalog::value;
use crate::errors::{catching, raise_full, OrRaise};
use crate::logic::advice::{
    candidates, coverage, create_ddl, definition, index_name, lost_under_rls, merge_all,
    needs_help, scan_counts, verified, Candidate, Chosen, KeyColumn, PlanFacts, Shape, Use,
};
use crate::logic::ident::quote_ident;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::{JsonB, PgList};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::ffi::{CStr, CString};

/// The statements read: the busiest by total time.
const MAX_STATEMENTS: i64 = 500;

/// A statement of pg_stat_statements.
struct Statement {
    queryid: i64,
    role: pg_sys::Oid,
    role_name: String,
    calls: i64,
    mean_ms: f64,
    query: String,
}

impl Statement {
    fn json(&self) -> Value {
        let text: String = self.query.chars().take(300).collect();
        json!({"queryid": self.queryid, "role": self.role_name, "calls": self.calls,
               "mean_ms": (self.mean_ms * 100.0).round() / 100.0, "query": text})
    }
}

/// A table with a tenant column.
struct Table {
    /// regclass text.
    name: String,
    /// Schema-qualified and quoted, whatever the search_path (for DDL).
    qualified: String,
    relname: String,
    /// The schema as named in the catalog, and quoted for SQL.
    schema: String,
    namespace: String,
    column: String,
    /// (name, OID) of each of its indexes.
    indexes: Vec<(String, u32)>,
    /// Read whole by PostgreSQL whatever its indexes (`logic::advice::scan_counts`).
    small: bool,
}

/// What planning one statement found.
struct Analysis {
    /// (table OID, what the statement asks of it), one per reference of a tenant table.
    uses: Vec<(u32, Use)>,
    /// (table OID, a function of a condition on it that is not LEAKPROOF).
    leaky: Vec<(u32, String)>,
    with_rls: PlanFacts,
    without_rls: PlanFacts,
}

/// One row of `query_advice()`.
struct Row {
    kind: &'static str,
    table: Option<String>,
    definition: Option<String>,
    statements: Vec<Value>,
    cost_before: Option<f64>,
    cost_after: Option<f64>,
    why: String,
    ddl: Option<String>,
}

fn schema_of_extension(c: &SpiClient<'_>, name: &str) -> Option<String> {
    value::<String>(
        c,
        "SELECT pg_catalog.quote_ident(n.nspname) FROM pg_catalog.pg_extension e
           JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) e.extnamespace
          WHERE e.extname OPERATOR(pg_catalog.=) $1",
        &[name.into()],
    )
}

/// pg_stat_statements' schema, or ERROR 55000 saying how to get it.
fn stat_statements_schema(c: &SpiClient<'_>) -> String {
    schema_of_extension(c, "pg_stat_statements").unwrap_or_else(|| {
        raise_full(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "vital_tenancy reads the application's statements from pg_stat_statements, which is not installed in this database",
            None,
            Some("Add pg_stat_statements to shared_preload_libraries, restart, run CREATE EXTENSION pg_stat_statements, and let the application run.".into()),
        )
    })
}

/// The application's statements in the current database, busiest first: those of
/// roles that are not superusers (the DBA's own and the migration's are not the
/// application's); with the number of statements of other roles whose text the caller
/// may not read.
fn statements(c: &SpiClient<'_>, schema: &str) -> (Vec<Statement>, i64) {
    let sql = format!(
        "SELECT s.queryid, s.userid, COALESCE(r.rolname::text, s.userid::text), s.calls, s.mean_exec_time, s.query
           FROM {schema}.pg_stat_statements s LEFT JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) s.userid
          WHERE s.dbid OPERATOR(pg_catalog.=) (SELECT oid FROM pg_catalog.pg_database WHERE datname OPERATOR(pg_catalog.=) pg_catalog.current_database())
            AND s.calls OPERATOR(pg_catalog.>) 0 AND NOT COALESCE(r.rolsuper, false)
          ORDER BY s.total_exec_time DESC LIMIT {MAX_STATEMENTS}"
    );
    let mut out = Vec::new();
    let mut hidden = 0;
    for row in c
        .select(&sql, None, &[])
        .or_raise("reading pg_stat_statements")
    {
        let query: Option<String> = row.get(6).ok().flatten();
        let Some(query) = query.filter(|q| q != "<insufficient privilege>") else {
            hidden += 1;
            continue;
        };
        out.push(Statement {
            queryid: row.get(1).ok().flatten().unwrap_or(0),
            role: row.get(2).ok().flatten().unwrap_or(pg_sys::InvalidOid),
            role_name: row.get(3).ok().flatten().unwrap_or_default(),
            calls: row.get(4).ok().flatten().unwrap_or(0),
            mean_ms: row.get(5).ok().flatten().unwrap_or(0.0),
            query,
        });
    }
    (out, hidden)
}

/// The tables with a tenant column, by OID, with their indexes.
fn tables(c: &SpiClient<'_>) -> HashMap<u32, Table> {
    let list = crate::catalog::tenant_tables(c, &None);
    let names: Vec<String> = list.iter().map(|t| t.table.clone()).collect();
    let rows = c
        .select(
            "SELECT t.n, x.oid, x.relname::text, n.nspname::text, pg_catalog.quote_ident(n.nspname),
                    ARRAY(SELECT i.indexrelid FROM pg_catalog.pg_index i
                           WHERE i.indrelid OPERATOR(pg_catalog.=) x.oid ORDER BY i.indexrelid),
                    ARRAY(SELECT ic.relname::text FROM pg_catalog.pg_index i
                            JOIN pg_catalog.pg_class ic ON ic.oid OPERATOR(pg_catalog.=) i.indexrelid
                           WHERE i.indrelid OPERATOR(pg_catalog.=) x.oid ORDER BY i.indexrelid),
                    (pg_catalog.pg_relation_size(x.oid) OPERATOR(pg_catalog./) pg_catalog.current_setting('block_size')::pg_catalog.int8)
               FROM pg_catalog.unnest($1::text[]) WITH ORDINALITY t(name, n)
               JOIN pg_catalog.pg_class x ON x.oid OPERATOR(pg_catalog.=) t.name::pg_catalog.regclass
               JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) x.relnamespace",
            None,
            &[names.into()],
        )
        .or_raise("reading the tenant tables");
    let mut out = HashMap::new();
    for r in rows {
        let Some(t) = r
            .get::<i64>(1)
            .ok()
            .flatten()
            .and_then(|n| list.get((n - 1) as usize))
        else {
            continue;
        };
        let oid: pg_sys::Oid = r.get(2).ok().flatten().unwrap_or(pg_sys::InvalidOid);
        let relname: String = r.get(3).ok().flatten().unwrap_or_default();
        let schema: String = r.get(4).ok().flatten().unwrap_or_default();
        let namespace: String = r.get(5).ok().flatten().unwrap_or_default();
        let indexes: Vec<pg_sys::Oid> = r.get(6).ok().flatten().unwrap_or_default();
        let index_names: Vec<String> = r.get(7).ok().flatten().unwrap_or_default();
        out.insert(
            oid.to_u32(),
            Table {
                name: t.table.clone(),
                qualified: format!("{namespace}.{}", quote_ident(&relname)),
                relname,
                schema,
                namespace,
                column: t.raw_column.clone(),
                indexes: index_names
                    .into_iter()
                    .zip(indexes.into_iter().map(|o| o.to_u32()))
                    .collect(),
                small: !scan_counts(r.get::<i64>(8).ok().flatten().unwrap_or(0)),
            },
        );
    }
    out
}

/// Why `role` cannot be planned as by the caller, if it cannot.
fn cannot_act_as(role: pg_sys::Oid) -> Option<String> {
    // SAFETY: catalog lookups by OID.
    unsafe {
        let name = pg_sys::GetUserNameFromId(role, true);
        if name.is_null() {
            return Some(format!(
                "the role (OID {}) that ran it no longer exists",
                role.to_u32()
            ));
        }
        if !pg_sys::has_privs_of_role(pg_sys::GetUserId(), role) {
            let name = CStr::from_ptr(name).to_string_lossy();
            return Some(format!(
                "it ran as role {}, whose privileges you do not have: it is planned only by a member of that role or a superuser",
                quote_ident(&name)
            ));
        }
    }
    None
}

/// Parse and plan `st` as its role (see the module comment); the planner sees the
/// hypothetical indexes hypopg holds at the time. `None`: a statement that touches no
/// tenant table or is no query.
fn analyze(
    st: &Statement,
    tables: &HashMap<u32, Table>,
) -> Result<Option<Analysis>, (PgSqlErrorCode, String)> {
    let query = CString::new(st.query.as_str()).map_err(|_| {
        (
            PgSqlErrorCode::ERRCODE_CHARACTER_NOT_IN_REPERTOIRE,
            "its text holds a NUL byte".to_string(),
        )
    })?;
    catching(|| {
        as_role(st.role, |local| {
            restrict(st.role, local);
            // SAFETY: the statement is parsed, analyzed and planned as PostgreSQL's own
            // PREPARE would, never executed.
            unsafe { plan_statement(query.as_ptr(), tables) }
        })
    })
}

/// Run `f` as `role` the way ANALYZE runs code as a table's owner
/// (`SECURITY_LOCAL_USERID_CHANGE`: no SET ROLE or SET SESSION AUTHORIZATION inside),
/// with the session's default search_path (what `RESET` gives, not the one this
/// extension's functions pin: the application's unqualified names resolve as they do
/// for it); `f` gets that security context, to `restrict` further. The user id is
/// restored on both paths; call it inside `catching`, whose rollback undoes the setting.
fn as_role<T>(role: pg_sys::Oid, f: impl FnOnce(i32) -> T) -> T {
    // SAFETY: the user id and security context are saved, set and restored around `f`;
    // the search_path is set at the subtransaction's level.
    unsafe {
        let mut saved_user = pg_sys::InvalidOid;
        let mut saved_context = 0;
        pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_context);
        let local = saved_context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32;
        pg_sys::SetUserIdAndSecContext(role, local);
        PgTryBuilder::new(std::panic::AssertUnwindSafe(|| {
            let path = CStr::from_ptr(pg_sys::GetConfigOptionResetString(c"search_path".as_ptr()))
                .to_owned();
            set_option(c"search_path", &path);
            f(local)
        }))
        .finally(|| pg_sys::SetUserIdAndSecContext(saved_user, saved_context))
        .execute()
    }
}

/// From here on, as in `as_role`, also a security-restricted operation: what the
/// planner evaluates (an IMMUTABLE function it folds) cannot create objects in the
/// caller's session or leave it with state.
fn restrict(role: pg_sys::Oid, local: i32) {
    // SAFETY: tightens the context `as_role` set; `as_role` restores the caller's.
    unsafe {
        pg_sys::SetUserIdAndSecContext(role, local | pg_sys::SECURITY_RESTRICTED_OPERATION as i32)
    }
}

/// A setting for the current subtransaction (undone by its rollback).
fn set_option(name: &CStr, value: &CStr) {
    // SAFETY: a user-settable setting, set as SET would.
    unsafe {
        pg_sys::SetConfigOption(
            name.as_ptr(),
            value.as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
        )
    }
}

/// # Safety
/// `query` is a NUL-terminated statement; called inside `analyze`.
unsafe fn plan_statement(
    query: *const std::ffi::c_char,
    tables: &HashMap<u32, Table>,
) -> Option<Analysis> {
    // SAFETY: PostgreSQL's own parse, analysis and planning of one statement.
    unsafe {
        let raw = PgList::<pg_sys::RawStmt>::from_pg(pg_sys::raw_parser(
            query,
            pg_sys::RawParseMode::RAW_PARSE_DEFAULT,
        ));
        if raw.len() != 1 {
            return None;
        }
        let mut types: *mut pg_sys::Oid = std::ptr::null_mut();
        let mut n: std::ffi::c_int = 0;
        let queries = PgList::<pg_sys::Query>::from_pg(pg_sys::pg_analyze_and_rewrite_varparams(
            raw.get_ptr(0)?,
            query,
            &mut types,
            &mut n,
            std::ptr::null_mut(),
        ));
        let q = queries.iter_ptr().find(|q| (**q).canSetTag)?;
        if !matches!(
            (*q).commandType,
            pg_sys::CmdType::CMD_SELECT | pg_sys::CmdType::CMD_UPDATE | pg_sys::CmdType::CMD_DELETE
        ) || !(*q).utilityStmt.is_null()
        {
            return None;
        }
        let mut walk = Walk {
            tables,
            uses: Vec::new(),
            leaky: Vec::new(),
        };
        collect(q, &mut walk);
        if walk.uses.is_empty() {
            return None;
        }
        let copy = || pg_sys::copyObjectImpl(q.cast()).cast::<pg_sys::Query>();
        let plan = |q: *mut pg_sys::Query| {
            let stmt = pg_sys::pg_plan_query(
                q,
                query,
                pg_sys::CURSOR_OPT_PARALLEL_OK as i32,
                std::ptr::null_mut(),
            );
            facts(stmt, tables)
        };
        let with_rls = plan(copy());
        let bare = copy();
        strip_policies(bare);
        let without_rls = plan(bare);
        Some(Analysis {
            uses: walk.uses,
            leaky: walk.leaky,
            with_rls,
            without_rls,
        })
    }
}

/// The walk over a statement's queries (sub-queries, CTEs, sub-links).
struct Walk<'a> {
    tables: &'a HashMap<u32, Table>,
    uses: Vec<(u32, Use)>,
    leaky: Vec<(u32, String)>,
}

/// Call `f` on `q` and on every query inside it (sub-queries of the range table,
/// CTEs, sub-links), each once.
///
/// # Safety
/// `q` is a valid Query.
unsafe fn for_each_query(q: *mut pg_sys::Query, f: &mut dyn FnMut(*mut pg_sys::Query)) {
    #[pg_guard]
    unsafe extern "C-unwind" fn walk(n: *mut pg_sys::Node, cx: *mut std::ffi::c_void) -> bool {
        if n.is_null() {
            return false;
        }
        // SAFETY: node tag checked; cx is the callback passed below.
        unsafe {
            if (*n).type_ == pg_sys::NodeTag::T_Query {
                let f = &mut *cx.cast::<&mut dyn FnMut(*mut pg_sys::Query)>();
                for_each_query(n.cast(), *f);
                return false;
            }
            pg_sys::expression_tree_walker(n, Some(walk), cx)
        }
    }
    f(q);
    let mut f = f;
    // SAFETY: the walker visits the tree and calls back through `f`.
    unsafe {
        pg_sys::query_tree_walker(
            q,
            Some(walk),
            (&mut f as *mut &mut dyn FnMut(*mut pg_sys::Query)).cast(),
            0,
        );
    }
}

/// What the statement's queries ask of each tenant table they read.
///
/// # Safety
/// `q` is a valid, analyzed Query.
unsafe fn collect(q: *mut pg_sys::Query, w: &mut Walk<'_>) {
    let mut each = |q: *mut pg_sys::Query| {
        // SAFETY: the range table of a valid Query.
        for (i, rte) in unsafe { PgList::<pg_sys::RangeTblEntry>::from_pg((*q).rtable) }
            .iter_ptr()
            .enumerate()
        {
            // SAFETY: an entry of that range table.
            let (kind, relid) = unsafe { ((*rte).rtekind, (*rte).relid) };
            if kind == pg_sys::RTEKind::RTE_RELATION && w.tables.contains_key(&relid.to_u32()) {
                // SAFETY: `q` and its entry `i + 1`.
                let (u, leaky) = unsafe { use_of(q, i as i32 + 1, relid) };
                w.uses.push((relid.to_u32(), u));
                w.leaky
                    .extend(leaky.into_iter().map(|f| (relid.to_u32(), f)));
            }
        }
    };
    // SAFETY: `q` is valid.
    unsafe { for_each_query(q, &mut each) };
}

/// The column of range table entry `rti` that `node` is (through a binary-compatible
/// relabelling), if it is one.
///
/// # Safety
/// `node` is an expression node or NULL.
unsafe fn column_of(
    node: *mut pg_sys::Node,
    rti: i32,
) -> Option<(pg_sys::AttrNumber, pg_sys::Oid)> {
    // SAFETY: node tags checked before each cast.
    unsafe {
        let mut n = node;
        while !n.is_null() && (*n).type_ == pg_sys::NodeTag::T_RelabelType {
            n = (*n.cast::<pg_sys::RelabelType>()).arg.cast();
        }
        if n.is_null() || (*n).type_ != pg_sys::NodeTag::T_Var {
            return None;
        }
        let v = n.cast::<pg_sys::Var>();
        ((*v).varno == rti && (*v).varlevelsup == 0 && (*v).varattno > 0)
            .then(|| ((*v).varattno, (*v).vartype))
    }
}

/// The btree strategy of operator `opno` for values of `type_` (0: not a btree operator).
fn btree_strategy(opno: pg_sys::Oid, type_: pg_sys::Oid) -> u32 {
    // SAFETY: catalog lookups.
    unsafe {
        let class = pg_sys::GetDefaultOpClass(type_, pg_sys::BTREE_AM_OID);
        if class == pg_sys::InvalidOid {
            return 0;
        }
        pg_sys::get_op_opfamily_strategy(opno, pg_sys::get_opclass_family(class)).max(0) as u32
    }
}

fn attname(relid: pg_sys::Oid, att: pg_sys::AttrNumber) -> String {
    // SAFETY: a catalog lookup; NULL for a missing attribute.
    unsafe {
        let p = pg_sys::get_attname(relid, att, true);
        if p.is_null() {
            String::new()
        } else {
            CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    }
}

/// What query `q` asks of its range table entry `rti` (relation `relid`): its
/// conditions, ORDER BY and LIMIT; and the functions of its conditions on it that
/// are not LEAKPROOF.
///
/// # Safety
/// `q` is a valid, analyzed Query and `rti` one of its relations.
unsafe fn use_of(q: *mut pg_sys::Query, rti: i32, relid: pg_sys::Oid) -> (Use, Vec<String>) {
    let mut u = Use::default();
    let mut leaky = Vec::new();
    // SAFETY: node tags checked before each cast; lists of the analyzed tree.
    unsafe {
        let quals = if (*q).jointree.is_null() {
            std::ptr::null_mut()
        } else {
            (*(*q).jointree).quals
        };
        let mut conjuncts = Vec::new();
        if !quals.is_null() {
            if (*quals).type_ == pg_sys::NodeTag::T_BoolExpr
                && (*quals.cast::<pg_sys::BoolExpr>()).boolop == pg_sys::BoolExprType::AND_EXPR
            {
                conjuncts.extend(
                    PgList::<pg_sys::Node>::from_pg((*quals.cast::<pg_sys::BoolExpr>()).args)
                        .iter_ptr(),
                );
            } else {
                conjuncts.push(quals);
            }
        }
        for c in conjuncts {
            condition(c, rti, relid, &mut u);
            if references(c, rti) {
                non_leakproof(c, &mut leaky);
            }
        }
        let targets = (*q).targetList;
        let mut order = Vec::new();
        for sgc in PgList::<pg_sys::SortGroupClause>::from_pg((*q).sortClause).iter_ptr() {
            let tle = pg_sys::get_sortgroupclause_tle(sgc, targets);
            match column_of((*tle).expr.cast(), rti) {
                Some((att, type_)) => order.push(KeyColumn {
                    name: attname(relid, att),
                    desc: btree_strategy((*sgc).sortop, type_) == pg_sys::BTGreaterStrategyNumber,
                    nulls_first: (*sgc).nulls_first,
                    ordered: true,
                }),
                None => {
                    order.clear();
                    break;
                }
            }
        }
        u.order = order;
        u.limited = !(*q).limitCount.is_null();
    }
    leaky.sort();
    leaky.dedup();
    (u, leaky)
}

/// Record what one top-level condition asks of range table entry `rti`.
///
/// # Safety
/// `c` is an expression node of the query.
unsafe fn condition(c: *mut pg_sys::Node, rti: i32, relid: pg_sys::Oid, u: &mut Use) {
    // SAFETY: node tags checked before each cast.
    unsafe {
        let free = |n: *mut pg_sys::Node| {
            !pg_sys::contain_vars_of_level(n, 0) && !pg_sys::contain_volatile_functions(n)
        };
        match (*c).type_ {
            pg_sys::NodeTag::T_OpExpr => {
                let op = c.cast::<pg_sys::OpExpr>();
                let args = PgList::<pg_sys::Node>::from_pg((*op).args);
                if args.len() != 2 {
                    return;
                }
                let (l, r) = (args.get_ptr(0).unwrap(), args.get_ptr(1).unwrap());
                let (att, opno, type_) = match (column_of(l, rti), column_of(r, rti)) {
                    (Some((att, _)), None) if free(r) => (att, (*op).opno, pg_sys::exprType(l)),
                    (None, Some((att, _))) if free(l) => {
                        (att, pg_sys::get_commutator((*op).opno), pg_sys::exprType(r))
                    }
                    _ => return,
                };
                match btree_strategy(opno, type_) {
                    s if s == pg_sys::BTEqualStrategyNumber => u.equal.push(attname(relid, att)),
                    1 | 2 | 4 | 5 => u.range.push(attname(relid, att)),
                    _ => {}
                }
            }
            pg_sys::NodeTag::T_ScalarArrayOpExpr => {
                let op = c.cast::<pg_sys::ScalarArrayOpExpr>();
                let args = PgList::<pg_sys::Node>::from_pg((*op).args);
                if !(*op).useOr || args.len() != 2 {
                    return;
                }
                let (l, r) = (args.get_ptr(0).unwrap(), args.get_ptr(1).unwrap());
                if let Some((att, _)) = column_of(l, rti) {
                    if free(r)
                        && btree_strategy((*op).opno, pg_sys::exprType(l))
                            == pg_sys::BTEqualStrategyNumber
                    {
                        u.equal.push(attname(relid, att));
                    }
                }
            }
            pg_sys::NodeTag::T_NullTest => {
                let t = c.cast::<pg_sys::NullTest>();
                if let (Some((att, _)), false) = (column_of((*t).arg.cast(), rti), (*t).argisrow) {
                    let not = if (*t).nulltesttype == pg_sys::NullTestType::IS_NOT_NULL {
                        " NOT"
                    } else {
                        ""
                    };
                    u.partial.push(format!(
                        "{} IS{not} NULL",
                        quote_ident(&attname(relid, att))
                    ));
                }
            }
            pg_sys::NodeTag::T_Var => {
                if let Some((att, pg_sys::BOOLOID)) = column_of(c, rti) {
                    u.partial.push(quote_ident(&attname(relid, att)));
                }
            }
            pg_sys::NodeTag::T_BoolExpr => {
                let b = c.cast::<pg_sys::BoolExpr>();
                let args = PgList::<pg_sys::Node>::from_pg((*b).args);
                if (*b).boolop == pg_sys::BoolExprType::NOT_EXPR && args.len() == 1 {
                    if let Some((att, pg_sys::BOOLOID)) = column_of(args.get_ptr(0).unwrap(), rti) {
                        u.partial
                            .push(format!("NOT {}", quote_ident(&attname(relid, att))));
                    }
                }
            }
            _ => {}
        }
    }
}

/// Whether expression `n` reads a column of range table entry `rti` of its own query.
///
/// # Safety
/// `n` is an expression node.
unsafe fn references(n: *mut pg_sys::Node, rti: i32) -> bool {
    #[pg_guard]
    unsafe extern "C-unwind" fn walk(n: *mut pg_sys::Node, rti: *mut std::ffi::c_void) -> bool {
        if n.is_null() {
            return false;
        }
        // SAFETY: node tag checked; rti points at the i32 passed below.
        unsafe {
            if (*n).type_ == pg_sys::NodeTag::T_Var {
                let v = n.cast::<pg_sys::Var>();
                return (*v).varlevelsup == 0 && (*v).varno == *rti.cast::<i32>();
            }
            pg_sys::expression_tree_walker(n, Some(walk), rti)
        }
    }
    let mut rti = rti;
    // SAFETY: the walker only reads.
    unsafe { walk(n, (&mut rti as *mut i32).cast()) }
}

/// The functions (operators by their function) in `n` that are not LEAKPROOF:
/// under RLS PostgreSQL applies the policies first and cannot use an index for them.
///
/// # Safety
/// `n` is an expression node.
unsafe fn non_leakproof(n: *mut pg_sys::Node, out: &mut Vec<String>) {
    #[pg_guard]
    unsafe extern "C-unwind" fn walk(n: *mut pg_sys::Node, out: *mut std::ffi::c_void) -> bool {
        if n.is_null() {
            return false;
        }
        // SAFETY: node tags checked; out is the Vec passed below.
        unsafe {
            let (func, op) = match (*n).type_ {
                pg_sys::NodeTag::T_OpExpr => {
                    let o = n.cast::<pg_sys::OpExpr>();
                    (pg_sys::get_opcode((*o).opno), Some((*o).opno))
                }
                pg_sys::NodeTag::T_ScalarArrayOpExpr => {
                    let o = n.cast::<pg_sys::ScalarArrayOpExpr>();
                    (pg_sys::get_opcode((*o).opno), Some((*o).opno))
                }
                pg_sys::NodeTag::T_FuncExpr => ((*n.cast::<pg_sys::FuncExpr>()).funcid, None),
                _ => (pg_sys::InvalidOid, None),
            };
            if func != pg_sys::InvalidOid && !pg_sys::get_func_leakproof(func) {
                let name = |p: *mut std::ffi::c_char| {
                    if p.is_null() {
                        String::from("?")
                    } else {
                        CStr::from_ptr(p).to_string_lossy().into_owned()
                    }
                };
                let f = name(pg_sys::get_func_name(func));
                let text = match op {
                    Some(op) => format!("operator {} (function {f})", name(pg_sys::get_opname(op))),
                    None => format!("function {f}"),
                };
                (*out.cast::<Vec<String>>()).push(text);
            }
            pg_sys::expression_tree_walker(n, Some(walk), out)
        }
    }
    // SAFETY: the walker only reads the tree.
    unsafe {
        walk(n, (out as *mut Vec<String>).cast());
    }
}

/// Remove every relation's policy conditions from a copy of a query that is only
/// planned: the plan the statement would get without RLS.
///
/// # Safety
/// `q` is a valid Query that is not executed.
unsafe fn strip_policies(q: *mut pg_sys::Query) {
    let mut strip = |q: *mut pg_sys::Query| {
        // SAFETY: the range table of a valid Query that is only planned.
        unsafe {
            for rte in PgList::<pg_sys::RangeTblEntry>::from_pg((*q).rtable).iter_ptr() {
                (*rte).securityQuals = std::ptr::null_mut();
            }
            (*q).hasRowSecurity = false;
        }
    };
    // SAFETY: `q` is valid.
    unsafe { for_each_query(q, &mut strip) };
}

/// What a plan reads: its cost, the tenant tables it scans sequentially, its sorts
/// and the indexes it uses.
///
/// # Safety
/// `stmt` is a planned statement.
unsafe fn facts(stmt: *mut pg_sys::PlannedStmt, tables: &HashMap<u32, Table>) -> PlanFacts {
    let mut f = PlanFacts::default();
    // SAFETY: the plan tree and the statement's lists.
    unsafe {
        f.total_cost = (*(*stmt).planTree).total_cost;
        let rtable = PgList::<pg_sys::RangeTblEntry>::from_pg((*stmt).rtable);
        let mut stack: Vec<*mut pg_sys::Plan> = vec![(*stmt).planTree];
        stack.extend(PgList::<pg_sys::Plan>::from_pg((*stmt).subplans).iter_ptr());
        while let Some(p) = stack.pop() {
            if p.is_null() {
                continue;
            }
            let list = |l: *mut pg_sys::List| {
                PgList::<pg_sys::Plan>::from_pg(l)
                    .iter_ptr()
                    .collect::<Vec<_>>()
            };
            match (*p).type_ {
                pg_sys::NodeTag::T_SeqScan => {
                    let rti = (*p.cast::<pg_sys::Scan>()).scanrelid as usize;
                    if let Some(rte) = rtable.get_ptr(rti.wrapping_sub(1)) {
                        let relid = (*rte).relid.to_u32();
                        if tables.get(&relid).is_some_and(|t| !t.small) {
                            f.seq_scans.push(relid);
                        }
                    }
                }
                pg_sys::NodeTag::T_IndexScan => {
                    let i = p.cast::<pg_sys::IndexScan>();
                    f.index((*i).indexid, (*i).indexqual);
                }
                pg_sys::NodeTag::T_IndexOnlyScan => {
                    let i = p.cast::<pg_sys::IndexOnlyScan>();
                    f.index((*i).indexid, (*i).indexqual);
                }
                pg_sys::NodeTag::T_BitmapIndexScan => {
                    let i = p.cast::<pg_sys::BitmapIndexScan>();
                    f.index((*i).indexid, (*i).indexqual);
                }
                pg_sys::NodeTag::T_Sort | pg_sys::NodeTag::T_IncrementalSort => f.sorts += 1,
                pg_sys::NodeTag::T_Append => {
                    stack.extend(list((*p.cast::<pg_sys::Append>()).appendplans))
                }
                pg_sys::NodeTag::T_MergeAppend => {
                    stack.extend(list((*p.cast::<pg_sys::MergeAppend>()).mergeplans))
                }
                pg_sys::NodeTag::T_BitmapAnd => {
                    stack.extend(list((*p.cast::<pg_sys::BitmapAnd>()).bitmapplans))
                }
                pg_sys::NodeTag::T_BitmapOr => {
                    stack.extend(list((*p.cast::<pg_sys::BitmapOr>()).bitmapplans))
                }
                pg_sys::NodeTag::T_SubqueryScan => {
                    stack.push((*p.cast::<pg_sys::SubqueryScan>()).subplan)
                }
                pg_sys::NodeTag::T_CustomScan => {
                    stack.extend(list((*p.cast::<pg_sys::CustomScan>()).custom_plans))
                }
                _ => {}
            }
            stack.push((*p).lefttree);
            stack.push((*p).righttree);
        }
    }
    f
}

trait Record {
    fn index(&mut self, oid: pg_sys::Oid, quals: *mut pg_sys::List);
}

impl Record for PlanFacts {
    fn index(&mut self, oid: pg_sys::Oid, quals: *mut pg_sys::List) {
        self.indexes.push(oid.to_u32());
        if !quals.is_null() {
            self.searched.push(oid.to_u32());
        }
    }
}

/// Names to OIDs for reading EXPLAIN: the tenant tables by (schema, table), their
/// indexes by name.
struct Names {
    relations: HashMap<(String, String), u32>,
    indexes: HashMap<String, u32>,
}

fn names(tables: &HashMap<u32, Table>) -> Names {
    let mut n = Names {
        relations: HashMap::new(),
        indexes: HashMap::new(),
    };
    for (oid, t) in tables {
        if !t.small {
            n.relations
                .insert((t.schema.clone(), t.relname.clone()), *oid);
        }
        n.indexes.extend(t.indexes.iter().cloned());
    }
    n
}

/// The plan `st` gets today with the hypothetical indexes hypopg holds (which it shows
/// to EXPLAIN only): PREPAREd as its role and explained as a generic plan, in a
/// subtransaction that is rolled back; the prepared statement is deallocated.
fn explained(st: &Statement, names: &Names) -> Option<PlanFacts> {
    let run = || {
        as_role(st.role, |local| {
            set_option(c"plan_cache_mode", c"force_generic_plan");
            // PREPARE (parse analysis only: nothing of the statement runs) is refused in
            // a security-restricted operation; the EXPLAIN that plans it runs in one.
            let prepared = PreparedGuard;
            utility(&format!(
                "PREPARE {} AS {}",
                PREPARED.to_string_lossy(),
                st.query
            ));
            restrict(st.role, local);
            let n = prepared.parameters();
            let args = if n > 0 {
                format!("({})", vec!["NULL"; n].join(", "))
            } else {
                String::new()
            };
            let plan = utility(&format!(
                "EXPLAIN (FORMAT JSON, VERBOSE) EXECUTE {}{args}",
                PREPARED.to_string_lossy()
            ));
            drop(prepared);
            plan.and_then(|p| serde_json::from_str::<Value>(&p).ok())
                .map(|p| crate::logic::advice::explain_facts(&p, &names.relations, &names.indexes))
        })
    };
    catching(run).ok().flatten()
}

/// The name of the statement `explained` prepares.
const PREPARED: &CStr = c"vital_tenancy_query_advice";

/// Deallocates the prepared statement when dropped, on the error path too.
struct PreparedGuard;

impl PreparedGuard {
    /// How many parameters the prepared statement takes (0 when it is not there).
    fn parameters(&self) -> usize {
        // SAFETY: a lookup in this backend's prepared statements.
        unsafe {
            let ps = pg_sys::FetchPreparedStatement(PREPARED.as_ptr(), false);
            if ps.is_null() {
                0
            } else {
                (*(*ps).plansource).num_params.max(0) as usize
            }
        }
    }
}

impl Drop for PreparedGuard {
    fn drop(&mut self) {
        // SAFETY: a lookup in this backend's prepared statements, then their removal.
        unsafe {
            if !pg_sys::FetchPreparedStatement(PREPARED.as_ptr(), false).is_null() {
                pg_sys::DropPreparedStatement(PREPARED.as_ptr(), false);
            }
        }
    }
}

/// Run a utility statement (PREPARE, EXPLAIN) on the current SPI connection, as SPI
/// runs statements of a volatile function (no transaction id is assigned); the first
/// column of its first row as text.
fn utility(sql: &str) -> Option<String> {
    let q = CString::new(sql).ok()?;
    // SAFETY: an SPI call on the open connection; its result read right after.
    unsafe {
        let rc = pg_sys::SPI_execute(q.as_ptr(), false, 0);
        if rc < 0 {
            crate::errors::raise(
                PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                format!("vital_tenancy internal error: SPI_execute returned {rc}"),
            );
        }
        let table = pg_sys::SPI_tuptable;
        if table.is_null() || pg_sys::SPI_processed == 0 {
            return None;
        }
        let v = pg_sys::SPI_getvalue(*(*table).vals, (*table).tupdesc, 1);
        (!v.is_null()).then(|| CStr::from_ptr(v).to_string_lossy().into_owned())
    }
}

/// A hypothetical index (hypopg), dropped when this goes out of scope.
struct Hypothetical<'a, 'c> {
    c: &'a SpiClient<'c>,
    schema: String,
    oid: u32,
}

impl<'a, 'c> Hypothetical<'a, 'c> {
    /// `None` when hypopg refuses it (a table kind or definition it cannot simulate):
    /// that candidate is then not verified, and the rest of the advice goes on.
    fn create(c: &'a SpiClient<'c>, schema: String, table: &str, cand: &Candidate) -> Option<Self> {
        let sql = format!("SELECT indexrelid FROM {schema}.hypopg_create_index($1)");
        let ddl = format!("CREATE INDEX ON {table} {}", definition(cand));
        let oid = catching(|| {
            c.select(&sql, Some(1), &[ddl.as_str().into()])
                .and_then(|t| t.first().get_one::<pg_sys::Oid>())
                .ok()
                .flatten()
        })
        .ok()
        .flatten()?;
        Some(Hypothetical {
            c,
            schema,
            oid: oid.to_u32(),
        })
    }
}

impl Drop for Hypothetical<'_, '_> {
    fn drop(&mut self) {
        // On the way out of an ERROR (a cancel, a timeout) no more SQL may run here; the
        // hypothetical index then stays in this session, where only EXPLAIN sees it.
        if std::thread::panicking() {
            return;
        }
        let _ = self.c.select(
            &format!("SELECT {}.hypopg_drop_index($1)", self.schema),
            None,
            &[pg_sys::Oid::from(self.oid).into()],
        );
    }
}

/// The name for `cand` on `table`, and whether an invalid index of that name (a build
/// that failed) must be dropped first; `None` when a valid index of that name exists
/// (built from this advice before: the name spells the columns), so that applying the
/// advice again never builds the same index twice.
fn free_name(c: &SpiClient<'_>, table: &Table, cand: &Candidate) -> Option<(String, bool)> {
    let name = index_name(&table.relname, cand);
    let valid = value::<bool>(
        c,
        "SELECT i.indisvalid FROM pg_catalog.pg_class x JOIN pg_catalog.pg_index i ON i.indexrelid OPERATOR(pg_catalog.=) x.oid
          WHERE x.relname OPERATOR(pg_catalog.=) $1 AND x.relnamespace OPERATOR(pg_catalog.=) $2::pg_catalog.regnamespace",
        &[name.as_str().into(), table.namespace.as_str().into()],
    );
    match valid {
        None => Some((name, false)),
        Some(false) => Some((name, true)),
        Some(true) => None,
    }
}

impl Row {
    fn new(kind: &'static str, table: Option<String>, why: String) -> Row {
        Row {
            kind,
            table,
            definition: None,
            statements: Vec::new(),
            cost_before: None,
            cost_after: None,
            why,
            ddl: None,
        }
    }
}

/// The advice's state: what was read, and each statement's plans.
struct Advisor<'a, 'c> {
    c: &'a SpiClient<'c>,
    hypopg: Option<String>,
    tables: HashMap<u32, Table>,
    names: Names,
    stmts: Vec<Statement>,
    /// (position in `stmts`, its analysis), for the statements that plan.
    planned: Vec<(usize, Analysis)>,
    /// The plan EXPLAIN shows today (with hypopg), per planned statement.
    base: Vec<Option<PlanFacts>>,
}

impl<'a, 'c> Advisor<'a, 'c> {
    /// Plan every statement as it runs today. One row per role the caller cannot act
    /// as; one per statement that no longer plans (a dropped table or column, a changed
    /// type), except the texts pg_stat_statements' normalization leaves without a type
    /// for a parameter (`SELECT $1`), which never ran as written.
    fn plan_all(&mut self, rows: &mut Vec<Row>) {
        let mut refused: Vec<(pg_sys::Oid, String, Vec<Value>)> = Vec::new();
        for (i, st) in self.stmts.iter().enumerate() {
            if let Some(why) = cannot_act_as(st.role) {
                match refused.iter_mut().find(|(r, _, _)| *r == st.role) {
                    Some((_, _, list)) => list.push(st.json()),
                    None => refused.push((st.role, why, vec![st.json()])),
                }
                continue;
            }
            match analyze(st, &self.tables) {
                Ok(Some(a)) => self.planned.push((i, a)),
                Ok(None) => {}
                Err((PgSqlErrorCode::ERRCODE_INDETERMINATE_DATATYPE, _)) => {}
                Err((_, e)) => {
                    let mut row = Row::new("not_planned", None, format!("no longer plans: {e}"));
                    row.statements = vec![st.json()];
                    rows.push(row);
                }
            }
        }
        for (_, why, list) in refused {
            let mut row = Row::new(
                "not_planned",
                None,
                format!("{} statements not planned: {why}", list.len()),
            );
            row.statements = list;
            rows.push(row);
        }
        self.base = (0..self.planned.len()).map(|k| self.explain(k)).collect();
    }

    /// The plan of planned statement `k` with the hypothetical indexes of the moment.
    fn explain(&self, k: usize) -> Option<PlanFacts> {
        self.hypopg.as_ref()?;
        explained(&self.stmts[self.planned[k].0], &self.names)
    }

    fn hypothetical(&self, table: u32, cand: &Candidate) -> Option<Hypothetical<'a, 'c>> {
        let h = self.hypopg.clone()?;
        Hypothetical::create(self.c, h, &self.tables[&table].qualified, cand)
    }

    /// For each use of a tenant table whose plan leaves work, its best candidate:
    /// verified one by one where hypopg is, else the tenant-leading one unverified.
    fn choose(&self) -> Vec<Chosen> {
        let mut chosen = Vec::new();
        for (k, (_, a)) in self.planned.iter().enumerate() {
            for (table, u) in &a.uses {
                if !needs_help(&a.with_rls, *table, !u.order.is_empty()) {
                    continue;
                }
                let cands = candidates(&self.tables[table].column, u);
                let best = if self.hypopg.is_none() {
                    cands.into_iter().next()
                } else {
                    let Some(today) = self.base[k].as_ref() else {
                        continue;
                    };
                    let mut best: Option<(f64, Candidate)> = None;
                    for cand in cands {
                        let Some(hypo) = self.hypothetical(*table, &cand) else {
                            continue;
                        };
                        let Some(after) = self.explain(k) else {
                            continue;
                        };
                        if verified(today, &after, hypo.oid)
                            && best.as_ref().is_none_or(|(c, _)| after.total_cost < *c)
                        {
                            best = Some((after.total_cost, cand));
                        }
                    }
                    best.map(|(_, cand)| cand)
                };
                if let Some(cand) = best {
                    chosen.push(Chosen {
                        table: *table,
                        cand,
                        statements: vec![k],
                    });
                }
            }
        }
        chosen
    }

    fn cost_today(&self, k: usize) -> f64 {
        self.base[k]
            .as_ref()
            .unwrap_or(&self.planned[k].1.with_rls)
            .total_cost
    }

    /// The rows of one proposal (a `rebuild` row first where a failed build left its
    /// index invalid); none when hypopg shows no statement using it (another proposal
    /// serves them better) or it was built before.
    fn proposal_rows(
        &self,
        p: &Chosen,
        used: Option<u32>,
        after: &[Option<PlanFacts>],
        rows: &mut Vec<Row>,
    ) {
        let t = &self.tables[&p.table];
        let served: Vec<usize> = p
            .statements
            .iter()
            .copied()
            .filter(|&k| {
                used.is_none_or(|oid| after[k].as_ref().is_some_and(|f| f.indexes.contains(&oid)))
            })
            .collect();
        if served.is_empty() {
            return;
        }
        let Some((name, rebuild)) = free_name(self.c, t, &p.cand) else {
            return;
        };
        let before: f64 = served.iter().map(|&k| self.cost_today(k)).sum();
        let cost_after: Option<f64> = used.map(|_| {
            served
                .iter()
                .filter_map(|&k| after[k].as_ref().map(|f| f.total_cost))
                .sum()
        });
        if rebuild {
            let mut row = Row::new(
                "rebuild",
                Some(t.name.clone()),
                format!("index {} was left invalid by a build that failed: dropped, then built again by the next row", quote_ident(&name)),
            );
            row.definition = Some(definition(&p.cand));
            row.ddl = Some(format!(
                "DROP INDEX CONCURRENTLY IF EXISTS {}.{}",
                t.namespace,
                quote_ident(&name)
            ));
            rows.push(row);
        }
        let shape = match p.cand.shape {
            Shape::TenantLeading => "tenant-leading: each tenant's rows together, found by the policy's tenant_id = ANY (…)",
            Shape::OrderLeading => "order-leading: the statements read the newest rows of every tenant they see, which a tenant-leading index cannot return in order across tenant_id = ANY (…); the tenant is checked from the index",
        };
        let verified = match cost_after {
            Some(a) => {
                format!("verified with hypopg: estimated cost {before:.0} before, {a:.0} after")
            }
            None => {
                "not verified: hypopg is not installed in this database (CREATE EXTENSION hypopg)"
                    .to_string()
            }
        };
        let mut row = Row::new(
            "index",
            Some(t.name.clone()),
            format!(
                "{} of the application's statements scan or sort {} without it; {shape}; {verified}",
                served.len(),
                t.name
            ),
        );
        row.definition = Some(definition(&p.cand));
        row.statements = served
            .iter()
            .map(|&k| {
                let mut v = self.stmts[self.planned[k].0].json();
                v["cost_before"] = json!(self.cost_today(k).round());
                v["cost_after"] = json!(after[k].as_ref().map(|f| f.total_cost.round()));
                v
            })
            .collect();
        row.cost_before = Some(before);
        row.cost_after = cost_after;
        row.ddl = Some(create_ddl(&t.qualified, &name, &p.cand));
        rows.push(row);
    }

    /// Conditions that lose an index only under RLS because they are not LEAKPROOF.
    fn leak_rows(&self, rows: &mut Vec<Row>) {
        for (i, a) in &self.planned {
            let mut seen: Vec<u32> = Vec::new();
            for (table, _) in &a.uses {
                if seen.contains(table) {
                    continue;
                }
                seen.push(*table);
                let t = &self.tables[table];
                let of_table: Vec<u32> = t.indexes.iter().map(|(_, o)| *o).collect();
                let lost = lost_under_rls(&a.without_rls, &a.with_rls, &of_table);
                let mut funcs: Vec<String> = a
                    .leaky
                    .iter()
                    .filter(|(x, _)| x == table)
                    .map(|(_, f)| f.clone())
                    .collect();
                funcs.sort();
                funcs.dedup();
                if lost.is_empty() || funcs.is_empty() {
                    continue;
                }
                let names: Vec<String> = lost.iter().map(|o| index_display(self.c, *o)).collect();
                let mut row = Row::new(
                    "rls_leakproof",
                    Some(t.name.clone()),
                    format!(
                        "without RLS the statement uses index {} of {}; under the policies it cannot, because its condition calls {}, which is not LEAKPROOF: PostgreSQL must apply the policy before such a condition. Rewrite the condition with leakproof operators (equality or range on a column, or on an expression with an index on that expression), or let a tenant-leading index narrow the rows first; do not mark the function LEAKPROOF (its errors and timing can reveal rows of other tenants)",
                        names.join(", "), t.name, funcs.join(", ")
                    ),
                );
                row.statements = vec![self.stmts[*i].json()];
                row.cost_before = Some(a.with_rls.total_cost);
                row.cost_after = Some(a.without_rls.total_cost);
                rows.push(row);
            }
        }
    }

    /// What still reads a tenant table sequentially with every proposal in place.
    fn seq_rows(&self, after: &[Option<PlanFacts>], rows: &mut Vec<Row>) {
        for (k, (i, a)) in self.planned.iter().enumerate() {
            let mut scanned = after[k].as_ref().unwrap_or(&a.with_rls).seq_scans.clone();
            scanned.sort_unstable();
            scanned.dedup();
            for table in scanned {
                let why = if self.hypopg.is_some() {
                    "still a sequential scan with every proposal in place: no index of the shapes advised makes the planner's estimate cheaper (it reads most of the rows its tenants see, or its conditions are not indexable)"
                } else {
                    "a sequential scan today; without hypopg the proposals are not checked against it"
                };
                let mut row = Row::new(
                    "seq_scan",
                    Some(self.tables[&table].name.clone()),
                    why.into(),
                );
                row.statements = vec![self.stmts[*i].json()];
                row.cost_before = Some(a.with_rls.total_cost);
                row.cost_after = after[k].as_ref().map(|f| f.total_cost);
                rows.push(row);
            }
        }
    }
}

fn advise(c: &SpiClient<'_>) -> Vec<Row> {
    let schema = stat_statements_schema(c);
    let tables = tables(c);
    let (stmts, hidden) = statements(c, &schema);
    let mut a = Advisor {
        c,
        hypopg: schema_of_extension(c, "hypopg"),
        names: names(&tables),
        tables,
        stmts,
        planned: Vec::new(),
        base: Vec::new(),
    };
    let mut rows = Vec::new();
    if hidden > 0 {
        rows.push(Row::new(
            "not_planned",
            None,
            format!("{hidden} statements of other roles are hidden from you: a member of pg_read_all_stats sees their text"),
        ));
    }
    a.plan_all(&mut rows);
    // Merged per table; then all of them at once, hypothetically, for the costs after.
    let proposals = merge_all(&a.choose());
    let hypos: Vec<Hypothetical<'_, '_>> = proposals
        .iter()
        .filter_map(|p| a.hypothetical(p.table, &p.cand))
        .collect();
    let after: Vec<Option<PlanFacts>> = (0..a.planned.len())
        .map(|k| (!hypos.is_empty()).then(|| a.explain(k)).flatten())
        .collect();
    for (n, p) in proposals.iter().enumerate() {
        a.proposal_rows(p, hypos.get(n).map(|h| h.oid), &after, &mut rows);
    }
    drop(hypos);
    a.leak_rows(&mut rows);
    a.seq_rows(&after, &mut rows);
    rows
}

fn index_display(c: &SpiClient<'_>, oid: u32) -> String {
    value::<String>(
        c,
        "SELECT $1::pg_catalog.oid::pg_catalog.regclass::text",
        &[pg_sys::Oid::from(oid).into()],
    )
    .unwrap_or_else(|| oid.to_string())
}

// pgrx needs the name!() tuple spelled out in the signature (it rejects a type alias).
#[allow(clippy::type_complexity)]
/// Index advice from the application's statements in pg_stat_statements, each proposal
/// checked with hypopg; apply with `SELECT ddl FROM vital_tenancy.query_advice() WHERE
/// ddl IS NOT NULL \gexec` or `scripts/migrate --apply-advice`.
#[pg_extern(volatile)]
#[search_path(pg_catalog, pg_temp)]
fn query_advice() -> TableIterator<
    'static,
    (
        name!(kind, String),
        name!(table_name, Option<String>),
        name!(index_definition, Option<String>),
        name!(statements, JsonB),
        name!(cost_before, Option<f64>),
        name!(cost_after, Option<f64>),
        name!(why, String),
        name!(ddl, Option<String>),
    ),
> {
    let rows = Spi::connect(advise);
    TableIterator::new(rows.into_iter().map(|r| {
        (
            r.kind.to_string(),
            r.table,
            r.definition,
            JsonB(Value::Array(r.statements)),
            r.cost_before.map(|v| v.round()),
            r.cost_after.map(|v| v.round()),
            r.why,
            r.ddl,
        )
    }))
}

/// The share of the application's calls on tenant tables (pg_stat_statements) whose
/// plan today reads no tenant table sequentially; `None` without such calls.
pub(crate) fn statement_coverage(c: &SpiClient<'_>, schema: &str) -> Option<f64> {
    let tables = tables(c);
    let (stmts, _) = statements(c, schema);
    let calls: Vec<(i64, bool)> = stmts
        .iter()
        .filter(|st| cannot_act_as(st.role).is_none())
        .filter_map(|st| {
            analyze(st, &tables)
                .ok()
                .flatten()
                .map(|a| (st.calls, a.with_rls.seq_scans.is_empty()))
        })
        .collect();
    coverage(&calls)
}

/// The share of scans of tenant tables served by an index since the statistics were
/// reset (pg_stat_user_tables): the fallback without pg_stat_statements.
pub(crate) fn scan_coverage(c: &SpiClient<'_>) -> Option<f64> {
    let names: Vec<String> = crate::catalog::tenant_tables(c, &None)
        .into_iter()
        .map(|t| t.table)
        .collect();
    value::<f64>(
        c,
        "SELECT (100.0 * sum(idx_scan) / NULLIF(sum(seq_scan + idx_scan), 0))::float8
           FROM pg_catalog.pg_stat_user_tables WHERE relid OPERATOR(pg_catalog.=) ANY (SELECT t::pg_catalog.regclass FROM pg_catalog.unnest($1::text[]) t)",
        &[names.into()],
    )
    .map(|v| (v * 100.0).round() / 100.0)
}

/// Index coverage as the plan means it: the percentage of the application's calls on
/// tenant tables (pg_stat_statements) that no sequential scan of a tenant table serves.
#[pg_extern(stable)]
#[search_path(pg_catalog, pg_temp)]
fn query_coverage() -> Option<f64> {
    Spi::connect(|c| {
        let schema = stat_statements_schema(c);
        statement_coverage(c, &schema)
    })
}

/// For `health()`: index coverage and where it was measured.
pub(crate) fn coverage_document(c: &SpiClient<'_>) -> Value {
    let (v, source) = match schema_of_extension(c, "pg_stat_statements") {
        Some(schema) => (
            statement_coverage(c, &schema),
            "pg_stat_statements: calls on tenant tables whose plan reads none sequentially",
        ),
        None => (
            scan_coverage(c),
            "pg_stat_user_tables: index scans of tenant tables over all their scans (pg_stat_statements is not installed)",
        ),
    };
    json!({"coverage_percent": v, "source": source, "target_percent": 95,
           "meets_target": v.is_none_or(|v| v >= 95.0)})
}
