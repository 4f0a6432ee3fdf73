//! Citus routing from the tenant context: a request reaches only the shards that can
//! hold rows it may see.
//!
//! The policies compare the distribution column with `visible_tenant_ids()` or
//! `writable_tenant_ids()`, STABLE functions Citus cannot prune by: every request
//! planned one task per shard. Before Citus plans a statement, the planner hook below
//! reads what each hash-distributed relation's row security quals require of its
//! distribution column, and adds that comparison with the arrays' values for the
//! current request as a constant (`tenant_id = ANY ('{…}'::uuid[])`) to the query,
//! where it filters the relation as the policies do: Citus prunes by it as by a literal
//! the application wrote. It only narrows what the policies allow: they stay, and the
//! shards apply their own with the context Citus propagates.
//!
//! A plan carrying such constants is right only for the context it was planned under.
//! Each is marked (an invalidation item no catalog change matches), and when the
//! context or the role changes ([`crate::logic::routing::RouteState`]) the marked plans
//! are invalidated in this backend's plan cache before a cached plan is used again; a
//! marked plan that starts under another context is refused (55000) rather than run.
//! Platform admins see every tenant: their statements are not routed.
//!
//! `vital_tenancy.citus_routing` (on by default) turns it off. Nothing happens where
//! Citus is not loaded.

use crate::context::{observe, policy_arrays, PolicyArrays};
use crate::errors::raise_full;
use crate::logic::context::request_context_without_pre_request;
use crate::logic::context::Observed;
use crate::logic::routing::{bound, Array, Qual, RouteState};
use pgrx::prelude::*;
use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting, PgList, PgSqlErrorCode};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;

static CITUS_ROUTING: GucSetting<bool> = GucSetting::<bool>::new(true);

static mut PREV_PLANNER: pg_sys::planner_hook_type = None;
static mut PREV_START: pg_sys::ExecutorStart_hook_type = None;
static mut PREV_END: pg_sys::ExecutorEnd_hook_type = None;
static mut PREV_UTILITY: pg_sys::ProcessUtility_hook_type = None;

/// What a routed plan was made for: the settings the context depends on, the role, and
/// the arrays they gave.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RouteKey {
    observed: Observed,
    role: pg_sys::Oid,
    arrays: PolicyArrays,
}

impl RouteKey {
    /// The key of the current request, with the arrays its context gives.
    fn now(arrays: PolicyArrays) -> RouteKey {
        RouteKey {
            observed: observe(),
            // SAFETY: reads the current user id.
            role: unsafe { pg_sys::GetUserId() },
            arrays,
        }
    }

    /// Whether the settings are unchanged (a check point: no query). Only asked of a
    /// statement that ends as the role the plans were routed for: statements run as
    /// another role (SECURITY DEFINER code, Citus's own catalog work) say nothing of
    /// the request's settings, and a changed role is planned afresh by the plan cache
    /// (plans under row security depend on the role) and refused by `may_run`.
    fn holds(&self) -> bool {
        // SAFETY: reads the current user id.
        self.role != unsafe { pg_sys::GetUserId() } || self.observed == observe()
    }

    /// Whether a plan routed under this key serves a request under `now`: the same
    /// settings and role, and arrays that hold no tenant the routed ones lack (a
    /// tenant's status may have narrowed them since; the policies still decide which
    /// rows of the routed shards it reads). One that widened them is not served.
    fn serves(&self, now: &RouteKey) -> bool {
        let within = |now: &[[u8; 16]], routed: &[[u8; 16]]| now.iter().all(|t| routed.contains(t));
        self.observed == now.observed
            && self.role == now.role
            && within(&now.arrays.visible_shared, &self.arrays.visible_shared)
            && within(&now.arrays.visible_own, &self.arrays.visible_own)
            && within(&now.arrays.writable, &self.arrays.writable)
    }

    /// Whether the key outlives the transaction: no setting it rests on is
    /// transaction-local and `pre_request()` did not seal it.
    fn outlives_transaction(&self) -> bool {
        let o = &self.observed;
        o.sealed.is_none()
            && ![&o.tenant_setting, &o.claims, &o.headers]
                .iter()
                .any(|s| s.local && s.value.is_some())
    }
}

thread_local! {
    static STATE: RefCell<RouteState<RouteKey>> = const { RefCell::new(RouteState::new()) };
    /// Inside one of the hooks' own work (catalog reads, the context's queries).
    static BUSY: Cell<bool> = const { Cell::new(false) };
    /// Hash-distributed relations and their distribution column (`None`: not one).
    static DISTRIBUTED: RefCell<HashMap<pg_sys::Oid, Option<i16>>> = RefCell::new(HashMap::new());
}

/// Set while the hooks do their own work; reset on unwind too.
struct Busy;

impl Busy {
    fn enter() -> Option<Busy> {
        (!BUSY.with(|b| b.replace(true))).then_some(Busy)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        BUSY.with(|b| b.set(false));
    }
}

/// Define the setting and install the hooks. Called once per backend from `_PG_init`.
pub fn init() {
    GucRegistry::define_bool_guc(
        c"vital_tenancy.citus_routing",
        c"On Citus, route a request with a tenant context to the shards of its tenants only.",
        c"Adds the tenant ids of the context as a constant where the policies filter each hash-distributed table (the query's WHERE or an outer join's ON clause), which Citus prunes shards by. It only narrows what the policies allow. Off: every request plans one task per shard.",
        &CITUS_ROUTING,
        GucContext::Userset,
        GucFlags::default(),
    );
    // SAFETY: hooks are chained as PostgreSQL documents; this runs once per backend.
    // The callbacks only touch this backend's state.
    unsafe {
        PREV_PLANNER = pg_sys::planner_hook;
        pg_sys::planner_hook = Some(planner);
        PREV_START = pg_sys::ExecutorStart_hook;
        pg_sys::ExecutorStart_hook = Some(executor_start);
        PREV_END = pg_sys::ExecutorEnd_hook;
        pg_sys::ExecutorEnd_hook = Some(executor_end);
        PREV_UTILITY = pg_sys::ProcessUtility_hook;
        pg_sys::ProcessUtility_hook = Some(process_utility);
        pg_sys::CacheRegisterRelcacheCallback(Some(relcache_callback), pg_sys::Datum::from(0));
        pg_sys::RegisterXactCallback(Some(xact_callback), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(subxact_callback), std::ptr::null_mut());
    }
}

const PROCOID: i32 = pg_sys::SysCacheIdentifier::PROCOID as i32;

thread_local! {
    static MARK_HASH: Cell<Option<u32>> = const { Cell::new(None) };
}

/// The hash of the marker: function OID 0, which no function has (computed once).
fn mark_hash() -> u32 {
    if let Some(h) = MARK_HASH.with(|h| h.get()) {
        return h;
    }
    // SAFETY: a hash computation on the syscache's key types.
    let h = unsafe {
        pg_sys::GetSysCacheHashValue(
            PROCOID,
            pg_sys::Datum::from(0),
            0.into(),
            0.into(),
            0.into(),
        )
    };
    MARK_HASH.with(|c| c.set(Some(h)));
    h
}

/// Invalidate every plan marked as routed in this backend's plan cache.
fn invalidate() {
    // SAFETY: runs the backend's syscache callbacks for pg_proc with the marker's hash;
    // the plan cache marks the plans that carry the marker invalid.
    unsafe { pg_sys::CallSyscacheCallbacks(PROCOID, mark_hash()) }
}

/// Whether `stmt` carries the marker.
///
/// # Safety
/// `stmt` is a valid PlannedStmt.
unsafe fn is_routed(stmt: *mut pg_sys::PlannedStmt) -> bool {
    let hash = mark_hash();
    // SAFETY: invalItems is a List of PlanInvalItem.
    unsafe {
        PgList::<pg_sys::PlanInvalItem>::from_pg((*stmt).invalItems)
            .iter_ptr()
            .any(|i| (*i).cacheId == PROCOID && (*i).hashValue == hash)
    }
}

/// Add the marker to `stmt`, in the current (planner's) memory.
///
/// # Safety
/// `stmt` is a valid PlannedStmt.
unsafe fn mark(stmt: *mut pg_sys::PlannedStmt) {
    // SAFETY: a new node appended to the statement's list.
    unsafe {
        let item = pg_sys::palloc0(std::mem::size_of::<pg_sys::PlanInvalItem>())
            .cast::<pg_sys::PlanInvalItem>();
        (*item).type_ = pg_sys::NodeTag::T_PlanInvalItem;
        (*item).cacheId = PROCOID;
        (*item).hashValue = mark_hash();
        (*stmt).invalItems = pg_sys::lappend((*stmt).invalItems, item.cast());
    }
}

fn citus_loaded() -> bool {
    // SAFETY: a missing_ok look-up of a setting by name.
    !unsafe { pg_sys::GetConfigOption(c"citus.version".as_ptr(), true, false) }.is_null()
}

#[pg_guard]
unsafe extern "C-unwind" fn planner(
    parse: *mut pg_sys::Query,
    query_string: *const std::ffi::c_char,
    cursor_options: i32,
    bound_params: pg_sys::ParamListInfo,
) -> *mut pg_sys::PlannedStmt {
    let routed = if citus_loaded() {
        match Busy::enter() {
            // SAFETY: parse is the rewritten query about to be planned.
            Some(_busy) => unsafe { route(parse, CITUS_ROUTING.get()) },
            None => false,
        }
    } else {
        false
    };
    // SAFETY: the planner_hook protocol.
    unsafe {
        let stmt = match PREV_PLANNER {
            Some(prev) => prev(parse, query_string, cursor_options, bound_params),
            None => pg_sys::standard_planner(parse, query_string, cursor_options, bound_params),
        };
        if routed && !stmt.is_null() {
            mark(stmt);
        }
        stmt
    }
}

/// A relation under row security, its query, and where in that query's range table
/// it is.
struct Candidate {
    query: *mut pg_sys::Query,
    rte: *mut pg_sys::RangeTblEntry,
    index: i32,
}

/// Route the relations of `parse` (and of its sub-queries and CTEs) when `routing`;
/// true when any was routed. Whether or not, a request whose context would not reach
/// the workers is refused before it reads nothing there.
///
/// # Safety
/// `parse` is a valid, rewritten Query.
unsafe fn route(parse: *mut pg_sys::Query, routing: bool) -> bool {
    let mut found = Vec::new();
    // SAFETY: the walk only reads the tree.
    unsafe { collect(parse, &mut found) };
    if found.is_empty() {
        return false;
    }
    let mut arrays: Option<Option<PolicyArrays>> = None;
    let mut routed = false;
    for c in found {
        // SAFETY: the candidates point into `parse`.
        let relid = unsafe { (*c.rte).relid };
        let Some(column) = distribution_column(relid) else {
            continue;
        };
        // SAFETY: securityQuals is a List of expressions of this relation.
        let (quals, template) = unsafe { shapes((*c.rte).securityQuals, c.index, column) };
        let Some(template) = template else { continue };
        let arrays = arrays.get_or_insert_with(|| {
            let a = policy_arrays();
            if a.is_some() && request_context_without_pre_request(&observe()) {
                refuse_context_without_pre_request();
            }
            a
        });
        let Some(a) = arrays.as_ref() else {
            return false; // a platform admin: every tenant
        };
        if !routing {
            return false;
        }
        let ids = |x: Array| match x {
            Array::Visible { shared: true } => a.visible_shared.clone(),
            Array::Visible { shared: false } => a.visible_own.clone(),
            Array::Writable => a.writable.clone(),
        };
        if let Some(tenants) = bound(&quals, &ids) {
            // SAFETY: the candidate's query and a new qual built from the policy's own
            // comparison.
            routed |= unsafe { add_route(c.query, c.index, template, &tenants) };
        }
    }
    if routed {
        let key = RouteKey::now(arrays.flatten().unwrap_or_default());
        if STATE.with(|s| s.borrow_mut().planned(&key)) {
            invalidate();
        }
    }
    routed
}

/// ERROR 55000: the request's claims or headers hold its tenant, but only
/// `pre_request()` carries them to the workers (PostgREST's `set_config()` is not
/// propagated by Citus), where the policies would see no context and return nothing.
fn refuse_context_without_pre_request() -> ! {
    raise_full(
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        "on Citus, a tenant context from request.jwt.claims or request.headers reaches the workers only through vital_tenancy.pre_request()",
        Some("Citus does not propagate set_config(); without pre_request() the shards would see no tenant context and return no rows.".into()),
        Some("Configure PostgREST with db-pre-request = vital_tenancy.pre_request (or call it after setting the claims).".into()),
    )
}

/// # Safety
/// `q` is a valid Query.
unsafe fn collect(q: *mut pg_sys::Query, out: &mut Vec<Candidate>) {
    // SAFETY: rtable is a List of RangeTblEntry; the walker visits sub-queries (range
    // table, CTEs, sub-links) and calls back here for each.
    unsafe {
        for (i, rte) in PgList::<pg_sys::RangeTblEntry>::from_pg((*q).rtable)
            .iter_ptr()
            .enumerate()
        {
            if (*rte).rtekind == pg_sys::RTEKind::RTE_RELATION && !(*rte).securityQuals.is_null() {
                out.push(Candidate {
                    query: q,
                    rte,
                    index: i as i32 + 1,
                });
            }
        }
        pg_sys::query_tree_walker(q, Some(walker), (out as *mut Vec<Candidate>).cast(), 0);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn walker(
    node: *mut pg_sys::Node,
    context: *mut std::ffi::c_void,
) -> bool {
    if node.is_null() {
        return false;
    }
    // SAFETY: context is the Vec passed by `collect`; node is a node of the tree.
    unsafe {
        if (*node).type_ == pg_sys::NodeTag::T_Query {
            collect(node.cast(), &mut *context.cast::<Vec<Candidate>>());
            return false;
        }
        pg_sys::expression_tree_walker(node, Some(walker), context)
    }
}

/// What a relation's security quals require of its distribution column (attribute
/// `column` of range table entry `index`), and one of the policies' comparisons.
///
/// # Safety
/// `quals` is a List of expressions.
unsafe fn shapes(
    quals: *mut pg_sys::List,
    index: i32,
    column: i16,
) -> (Vec<Qual>, Option<*mut pg_sys::ScalarArrayOpExpr>) {
    let mut template = None;
    // SAFETY: each element is an expression node.
    let quals = unsafe {
        PgList::<pg_sys::Node>::from_pg(quals)
            .iter_ptr()
            .map(|n| shape(n, index, column, &mut template))
            .collect()
    };
    (quals, template)
}

/// # Safety
/// `n` is an expression node or null.
unsafe fn shape(
    n: *mut pg_sys::Node,
    index: i32,
    column: i16,
    template: &mut Option<*mut pg_sys::ScalarArrayOpExpr>,
) -> Qual {
    if n.is_null() {
        return Qual::Other;
    }
    // SAFETY: the node tags say what each node is.
    unsafe {
        match (*n).type_ {
            pg_sys::NodeTag::T_BoolExpr => {
                let b = n.cast::<pg_sys::BoolExpr>();
                let mut args = || {
                    PgList::<pg_sys::Node>::from_pg((*b).args)
                        .iter_ptr()
                        .map(|a| shape(a, index, column, template))
                        .collect()
                };
                match (*b).boolop {
                    pg_sys::BoolExprType::AND_EXPR => Qual::And(args()),
                    pg_sys::BoolExprType::OR_EXPR => Qual::Or(args()),
                    _ => Qual::Other,
                }
            }
            pg_sys::NodeTag::T_ScalarArrayOpExpr => {
                let s = n.cast::<pg_sys::ScalarArrayOpExpr>();
                match policy_array(s, index, column) {
                    Some(a) => {
                        template.get_or_insert(s);
                        Qual::Array(a)
                    }
                    None => Qual::Other,
                }
            }
            _ => Qual::Other,
        }
    }
}

/// `<column> = ANY (vital_tenancy.visible_tenant_ids(<const>) | writable_tenant_ids())`
/// with uuid equality: which array, else `None`.
///
/// # Safety
/// `s` is a valid ScalarArrayOpExpr.
unsafe fn policy_array(
    s: *mut pg_sys::ScalarArrayOpExpr,
    index: i32,
    column: i16,
) -> Option<Array> {
    // SAFETY: reads the node and its arguments; syscache look-ups of the function.
    unsafe {
        if !(*s).useOr || pg_sys::get_opcode((*s).opno) != pg_sys::Oid::from(pg_sys::F_UUID_EQ) {
            return None;
        }
        let args = PgList::<pg_sys::Node>::from_pg((*s).args);
        let (var, call) = (args.get_ptr(0)?, args.get_ptr(1)?);
        if (*var).type_ != pg_sys::NodeTag::T_Var || (*call).type_ != pg_sys::NodeTag::T_FuncExpr {
            return None;
        }
        let var = var.cast::<pg_sys::Var>();
        if (*var).varno != index || (*var).varattno != column || (*var).varlevelsup != 0 {
            return None;
        }
        let call = call.cast::<pg_sys::FuncExpr>();
        let schema = pg_sys::get_namespace_name(pg_sys::get_func_namespace((*call).funcid));
        if schema.is_null() || std::ffi::CStr::from_ptr(schema).to_bytes() != b"vital_tenancy" {
            return None;
        }
        let name = pg_sys::get_func_name((*call).funcid);
        if name.is_null() {
            return None;
        }
        let fargs = PgList::<pg_sys::Node>::from_pg((*call).args);
        match std::ffi::CStr::from_ptr(name).to_bytes() {
            b"writable_tenant_ids" if fargs.is_empty() => Some(Array::Writable),
            b"visible_tenant_ids" if fargs.len() == 1 => {
                let c = fargs.get_ptr(0)?;
                if (*c).type_ != pg_sys::NodeTag::T_Const {
                    return None;
                }
                let c = c.cast::<pg_sys::Const>();
                if (*c).constisnull {
                    return None;
                }
                Some(Array::Visible {
                    shared: (*c).constvalue.value() != 0,
                })
            }
            _ => None,
        }
    }
}

/// Add `<column> = ANY ('{tenants}'::uuid[])`, built from the policy's comparison
/// `template`, where it filters relation `index` of `q` as its row security does: the
/// query's WHERE, or the ON clause of the outer join whose nullable side it is on
/// (never above it, which would change the join). False where there is no such place
/// (the relation is not in the join tree, or on a side of a FULL JOIN).
///
/// Citus prunes by the query's own clauses (its logical planner reads the join tree,
/// not the row security quals), and deparses them into the shard queries: the workers
/// see the constant too, besides their own policies.
///
/// # Safety
/// `q` and `template` are valid nodes of the query being planned.
unsafe fn add_route(
    q: *mut pg_sys::Query,
    index: i32,
    template: *mut pg_sys::ScalarArrayOpExpr,
    tenants: &[[u8; 16]],
) -> bool {
    // SAFETY: the join tree of `q`; the slot found points into it.
    let slot = unsafe {
        let from = (*q).jointree;
        if from.is_null() || (*q).commandType == pg_sys::CmdType::CMD_MERGE {
            return false;
        }
        match place(from.cast(), index, &raw mut (*from).quals) {
            Some(Some(slot)) => slot,
            _ => return false,
        }
    };
    if tenants.is_empty() {
        // No tenant (no context): Citus prunes every shard for a constant false, not
        // for an empty array.
        // SAFETY: a new Const in the planner's memory.
        unsafe { *slot = pg_sys::make_and_qual(*slot, pg_sys::makeBoolConst(false, false)) };
        return true;
    }
    let ids: Vec<pgrx::Uuid> = tenants.iter().map(|t| pgrx::Uuid::from_bytes(*t)).collect();
    // SAFETY: copies of the template's nodes, a new Const in the planner's memory.
    unsafe {
        let datum = ids.into_datum().unwrap_or(pg_sys::Datum::from(0));
        let array = pg_sys::makeConst(
            pg_sys::UUIDARRAYOID,
            -1,
            pg_sys::InvalidOid,
            -1,
            datum,
            false,
            false,
        );
        let copy = pg_sys::copyObjectImpl(template.cast()).cast::<pg_sys::ScalarArrayOpExpr>();
        let var = PgList::<pg_sys::Node>::from_pg((*copy).args)
            .get_ptr(0)
            .unwrap_or(std::ptr::null_mut());
        let mut args = PgList::<pg_sys::Node>::new();
        args.push(var);
        args.push(array.cast());
        (*copy).args = args.into_pg();
        *slot = pg_sys::make_and_qual(*slot, copy.cast());
    }
    true
}

/// Where in the join tree `node` a qual filtering range table entry `index` goes:
/// `None` when it is not under `node`, `Some(None)` when it is but no qual may go
/// (a side of a FULL JOIN), else the quals to AND it into. `slot` is the place that
/// filters `node` itself.
///
/// # Safety
/// `node` is a join tree node (RangeTblRef, FromExpr, JoinExpr).
unsafe fn place(
    node: *mut pg_sys::Node,
    index: i32,
    slot: *mut *mut pg_sys::Node,
) -> Option<Option<*mut *mut pg_sys::Node>> {
    if node.is_null() {
        return None;
    }
    // SAFETY: the node tags say what each node is.
    unsafe {
        match (*node).type_ {
            pg_sys::NodeTag::T_RangeTblRef => {
                ((*node.cast::<pg_sys::RangeTblRef>()).rtindex == index).then_some(Some(slot))
            }
            pg_sys::NodeTag::T_FromExpr => {
                let f = node.cast::<pg_sys::FromExpr>();
                PgList::<pg_sys::Node>::from_pg((*f).fromlist)
                    .iter_ptr()
                    .find_map(|item| place(item, index, &raw mut (*f).quals))
            }
            pg_sys::NodeTag::T_JoinExpr => {
                let j = node.cast::<pg_sys::JoinExpr>();
                let on = &raw mut (*j).quals;
                use pg_sys::JoinType::*;
                let (left, right) = match (*j).jointype {
                    JOIN_INNER => (on, on),
                    JOIN_LEFT => (slot, on),
                    JOIN_RIGHT => (on, slot),
                    _ => {
                        return (place((*j).larg, index, slot).is_some()
                            || place((*j).rarg, index, slot).is_some())
                        .then_some(None)
                    }
                };
                place((*j).larg, index, left).or_else(|| place((*j).rarg, index, right))
            }
            _ => None,
        }
    }
}

/// The distribution column of a hash-distributed relation (cached per backend until
/// the relation's relcache entry is invalidated).
fn distribution_column(relid: pg_sys::Oid) -> Option<i16> {
    if let Some(hit) = DISTRIBUTED.with(|d| d.borrow().get(&relid).copied()) {
        return hit;
    }
    // SAFETY: a catalog look-up by name.
    let catalog = unsafe {
        pg_sys::get_relname_relid(
            c"pg_dist_partition".as_ptr(),
            pg_sys::Oid::from(pg_sys::PG_CATALOG_NAMESPACE),
        )
    };
    let column = if catalog == pg_sys::InvalidOid {
        None
    } else {
        Spi::connect(|c| {
            crate::catalog::value::<i16>(
                c,
                "SELECT a.attnum FROM pg_catalog.pg_dist_partition p
                   JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) p.logicalrelid
                    AND a.attname OPERATOR(pg_catalog.=) pg_catalog.column_to_column_name(p.logicalrelid, p.partkey)
                  WHERE p.logicalrelid OPERATOR(pg_catalog.=) $1 AND p.partmethod OPERATOR(pg_catalog.=) 'h'",
                &[relid.into()],
            )
        })
    };
    DISTRIBUTED.with(|d| d.borrow_mut().insert(relid, column));
    column
}

#[pg_guard]
unsafe extern "C-unwind" fn relcache_callback(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    DISTRIBUTED.with(|d| {
        if let Ok(mut d) = d.try_borrow_mut() {
            if relid == pg_sys::InvalidOid {
                d.clear();
            } else {
                d.remove(&relid);
            }
        }
    });
}

/// A check point: invalidate the routed plans when the settings or the role changed.
fn checkpoint() {
    if !STATE.with(|s| s.borrow().any()) {
        return;
    }
    let Some(_busy) = Busy::enter() else { return };
    if STATE.with(|s| s.borrow_mut().checkpoint(RouteKey::holds)) {
        invalidate();
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn executor_start(query: *mut pg_sys::QueryDesc, eflags: i32) {
    // SAFETY: the ExecutorStart_hook protocol; plannedstmt is the plan about to start.
    unsafe {
        if !BUSY.with(|b| b.get()) && is_routed((*query).plannedstmt) {
            refuse_if_stale();
        }
        match PREV_START {
            Some(prev) => prev(query, eflags),
            None => pg_sys::standard_ExecutorStart(query, eflags),
        }
    }
}

/// A routed plan starts: it must have been routed for the current settings and role,
/// and for arrays that include the current ones (checked with the context's resolution
/// for this statement).
fn refuse_if_stale() {
    let ok = {
        let Some(_busy) = Busy::enter() else { return };
        let now = RouteKey::now(policy_arrays().unwrap_or_default());
        STATE.with(|s| s.borrow_mut().may_run(|k| k.serves(&now)))
    };
    if !ok {
        invalidate();
        raise_full(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "a plan routed to the shards of another tenant context was refused",
            Some("The tenant context, the role or a tenant's status changed since the statement was planned, with no statement boundary between.".into()),
            Some("Run the statement again: it is planned afresh for the current context.".into()),
        );
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn executor_end(query: *mut pg_sys::QueryDesc) {
    // SAFETY: the ExecutorEnd_hook protocol.
    unsafe {
        match PREV_END {
            Some(prev) => prev(query),
            None => pg_sys::standard_ExecutorEnd(query),
        }
    }
    checkpoint();
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
    // SAFETY: the ProcessUtility_hook protocol.
    unsafe {
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
    checkpoint();
}

#[pg_guard]
unsafe extern "C-unwind" fn xact_callback(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::XactEvent::*;
    BUSY.with(|b| b.set(false));
    let ends = match event {
        XACT_EVENT_COMMIT | XACT_EVENT_PREPARE => STATE.with(|s| {
            s.borrow_mut()
                .transaction_end(RouteKey::outlives_transaction)
        }),
        XACT_EVENT_ABORT => STATE.with(|s| {
            let mut s = s.borrow_mut();
            let any = s.any();
            s.forget();
            any
        }),
        _ => false,
    };
    if ends {
        invalidate();
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn subxact_callback(
    event: pg_sys::SubXactEvent::Type,
    _my: pg_sys::SubTransactionId,
    _parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    // A rolled-back savepoint undoes the settings made inside it.
    if event == pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB {
        BUSY.with(|b| b.set(false));
        let any = STATE.with(|s| {
            let mut s = s.borrow_mut();
            let any = s.any();
            s.forget();
            any
        });
        if any {
            invalidate();
        }
    }
}
