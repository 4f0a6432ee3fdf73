//! The tenant boundary in the shape that survives Citus: `citus_safe_policies()`,
//! `boundary_problems()` and `citus_boundary_status()`.
//!
//! Citus recreates every policy on every shard without `AS RESTRICTIVE` (its
//! `CreatePolicyCommandForPolicy` never emits it, on distribution, shard moves and
//! splits alike) and refuses sub-selects in policies on distributed tables. So on a
//! shard every policy is PERMISSIVE and they are OR-ed: the boundary holds only if
//! each policy by itself admits nothing outside it. The Citus shape therefore has no
//! restrictive policy and folds the boundary into every policy of the table (the
//! application's included, their originals kept in `vital_tenancy.originals`),
//! with the sub-select-free comparison `tenant_id = ANY (visible_tenant_ids(…))`.
//!
//! Whether a policy holds the boundary is read from its expression tree
//! (`pg_policy.polqual`, `polwithcheck`): a top-level conjunct comparing the tenant
//! column with the extension's visible/writable array, nothing else counts.

use crate::errors::{raise, raise_full, OrRaise};
use crate::logic::ident::quote_ident;
use crate::logic::rls::{
    citus_policies, citus_registry_policies, fold, inline_visible, inline_writable, PolicyCmd,
    ADMIN_ROLE, CITUS_POLICY_NAMES, POLICY_NAMES, READ_POLICY_SUFFIX, REGISTRY_POLICY_NAMES,
};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::PgList;

extern "C-unwind" {
    /// PostgreSQL's own test for a sub-select anywhere in an expression
    /// (rewrite/rewriteManip.c); it never raises an error.
    fn checkExprHasSubLink(node: *mut pg_sys::Node) -> bool;
}

/// One policy as the catalog has it.
struct Policy {
    name: String,
    cmd: PolicyCmd,
    permissive: bool,
    /// Whether the policy applies to the admin role alone.
    admin_only: bool,
    qual: Option<String>,
    check: Option<String>,
    qual_sql: Option<String>,
    check_sql: Option<String>,
    roles_sql: String,
}

fn policies_of(c: &SpiClient<'_>, oid: pg_sys::Oid) -> Vec<Policy> {
    c.select(
        "SELECT p.polname::text, p.polcmd::text, p.polpermissive,
                p.polroles = ARRAY[(SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname = $2)]::oid[],
                p.polqual::text, p.polwithcheck::text,
                pg_catalog.pg_get_expr(p.polqual, p.polrelid), pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid),
                pg_catalog.array_to_string(ARRAY(SELECT CASE WHEN r = 0 THEN 'PUBLIC' ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(r)) END
                                                   FROM pg_catalog.unnest(p.polroles) r), ', ')
           FROM pg_catalog.pg_policy p WHERE p.polrelid = $1 ORDER BY p.polname",
        None,
        &[oid.into(), ADMIN_ROLE.into()],
    )
    .or_raise("reading the table's policies")
    .filter_map(|r| {
        let cmd: String = r.get(2).ok().flatten()?;
        Some(Policy {
            name: r.get(1).ok().flatten()?,
            cmd: PolicyCmd::from_polcmd(&cmd)?,
            permissive: r.get(3).ok().flatten().unwrap_or(true),
            admin_only: r.get(4).ok().flatten().unwrap_or(false),
            qual: r.get(5).ok().flatten(),
            check: r.get(6).ok().flatten(),
            qual_sql: r.get(7).ok().flatten(),
            check_sql: r.get(8).ok().flatten(),
            roles_sql: r.get(9).ok().flatten().unwrap_or_default(),
        })
    })
    .collect()
}

/// Read a `pg_node_tree` text into a node (in the current memory context).
fn node(tree: &str) -> Option<*mut pg_sys::Node> {
    let c = std::ffi::CString::new(tree).ok()?;
    // SAFETY: the text comes from pg_policy, written by PostgreSQL's nodeToString.
    let n = unsafe { pg_sys::stringToNode(c.as_ptr()) } as *mut pg_sys::Node;
    (!n.is_null()).then_some(n)
}

fn has_sub_select(tree: &Option<String>) -> bool {
    // SAFETY: a node tree read by PostgreSQL's own reader.
    tree.as_deref()
        .and_then(node)
        .is_some_and(|n| unsafe { checkExprHasSubLink(n) })
}

/// The functions a boundary conjunct may compare the tenant column with.
struct Sides {
    read: Vec<pg_sys::Oid>,
    write: Vec<pg_sys::Oid>,
    uuid_eq: pg_sys::Oid,
}

fn sides(c: &SpiClient<'_>) -> Sides {
    let row = c
        .select(
            "SELECT 'vital_tenancy.visible_tenant_ids(boolean)'::pg_catalog.regprocedure::pg_catalog.oid,
                    'vital_tenancy.writable_tenant_ids()'::pg_catalog.regprocedure::pg_catalog.oid,
                    'pg_catalog.=(uuid,uuid)'::pg_catalog.regoperator::pg_catalog.oid",
            Some(1),
            &[],
        )
        .or_raise("looking up the boundary functions");
    let r = row.first();
    let visible: pg_sys::Oid = r.get(1).ok().flatten().unwrap_or(pg_sys::InvalidOid);
    let writable: pg_sys::Oid = r.get(2).ok().flatten().unwrap_or(pg_sys::InvalidOid);
    Sides {
        // Writable rows are a subset of the visible ones, so either reads safely.
        read: vec![visible, writable],
        write: vec![writable],
        uuid_eq: r.get(3).ok().flatten().unwrap_or(pg_sys::InvalidOid),
    }
}

/// Whether a top-level conjunct of the expression is `col = ANY (f(...))` with `f`
/// one of `funcs`.
fn has_conjunct(tree: &str, attnum: i16, funcs: &[pg_sys::Oid], uuid_eq: pg_sys::Oid) -> bool {
    let Some(root) = node(tree) else { return false };
    // SAFETY: walking a node tree PostgreSQL just built, by its node tags.
    unsafe {
        let mut conjuncts = vec![root];
        if pgrx::is_a(root, pg_sys::NodeTag::T_BoolExpr) {
            let b = root as *mut pg_sys::BoolExpr;
            if (*b).boolop == pg_sys::BoolExprType::AND_EXPR {
                conjuncts = PgList::<pg_sys::Node>::from_pg((*b).args)
                    .iter_ptr()
                    .collect();
            }
        }
        conjuncts.into_iter().any(|n| {
            if !pgrx::is_a(n, pg_sys::NodeTag::T_ScalarArrayOpExpr) {
                return false;
            }
            let s = n as *mut pg_sys::ScalarArrayOpExpr;
            if !(*s).useOr || (*s).opno != uuid_eq {
                return false;
            }
            let args = PgList::<pg_sys::Node>::from_pg((*s).args);
            let (Some(l), Some(r)) = (args.get_ptr(0), args.get_ptr(1)) else {
                return false;
            };
            let column = pgrx::is_a(l, pg_sys::NodeTag::T_Var) && {
                let v = l as *mut pg_sys::Var;
                (*v).varlevelsup == 0 && (*v).varattno == attnum
            };
            let func = pgrx::is_a(r, pg_sys::NodeTag::T_FuncExpr)
                && funcs.contains(&(*(r as *mut pg_sys::FuncExpr)).funcid);
            column && func
        })
    }
}

/// The node under casts that do not change what is compared.
///
/// # Safety
/// `n` is a valid expression node.
unsafe fn strip_casts(mut n: *mut pg_sys::Node) -> *mut pg_sys::Node {
    // SAFETY: each cast node's `arg` is a valid expression node.
    unsafe {
        loop {
            if pgrx::is_a(n, pg_sys::NodeTag::T_RelabelType) {
                n = (*(n as *mut pg_sys::RelabelType)).arg as *mut pg_sys::Node;
            } else if pgrx::is_a(n, pg_sys::NodeTag::T_CoerceViaIO) {
                n = (*(n as *mut pg_sys::CoerceViaIO)).arg as *mut pg_sys::Node;
            } else if pgrx::is_a(n, pg_sys::NodeTag::T_ArrayCoerceExpr) {
                n = (*(n as *mut pg_sys::ArrayCoerceExpr)).arg as *mut pg_sys::Node;
            } else {
                return n;
            }
        }
    }
}

/// Whether an expression is computed once per scan rather than per row: a constant, a
/// parameter, an uncorrelated sub-select, or a call of a non-volatile function whose
/// arguments read no column.
///
/// # Safety
/// `n` is a valid expression node.
unsafe fn once_per_scan(n: *mut pg_sys::Node) -> bool {
    // SAFETY: walking a node tree by its tags.
    unsafe {
        let n = strip_casts(n);
        if pgrx::is_a(n, pg_sys::NodeTag::T_Const) || pgrx::is_a(n, pg_sys::NodeTag::T_Param) {
            return true;
        }
        if pgrx::is_a(n, pg_sys::NodeTag::T_SubLink) {
            let l = n as *mut pg_sys::SubLink;
            return matches!(
                (*l).subLinkType,
                pg_sys::SubLinkType::EXPR_SUBLINK | pg_sys::SubLinkType::ARRAY_SUBLINK
            ) && (*l).testexpr.is_null();
        }
        if pgrx::is_a(n, pg_sys::NodeTag::T_FuncExpr) {
            let f = n as *mut pg_sys::FuncExpr;
            return pg_sys::func_volatile((*f).funcid)
                != pg_sys::PROVOLATILE_VOLATILE as std::ffi::c_char
                && !pg_sys::contain_var_clause((*f).args as *mut pg_sys::Node);
        }
        false
    }
}

/// Whether a policy expression (a `pg_node_tree`) lets an index on the tenant column
/// serve it: a top-level conjunct `col = ANY (x)` or `col = x` with `x` computed once
/// per scan (the restrictive shape's sub-select, the Citus shape's function call).
/// Read from the expression tree, never from deparsed text.
pub(crate) fn index_friendly(tree: &str, attnum: i16) -> bool {
    if tree.trim().is_empty() {
        return false;
    }
    let Some(root) = node(tree) else { return false };
    let is_column = |n: *mut pg_sys::Node| {
        // SAFETY: a valid node; a Var is read only after its tag is checked.
        unsafe {
            let n = strip_casts(n);
            pgrx::is_a(n, pg_sys::NodeTag::T_Var) && {
                let v = n as *mut pg_sys::Var;
                (*v).varlevelsup == 0 && (*v).varattno == attnum
            }
        }
    };
    // SAFETY: walking a node tree PostgreSQL just built, by its node tags.
    unsafe {
        let mut conjuncts = vec![root];
        if pgrx::is_a(root, pg_sys::NodeTag::T_BoolExpr)
            && (*(root as *mut pg_sys::BoolExpr)).boolop == pg_sys::BoolExprType::AND_EXPR
        {
            conjuncts = PgList::<pg_sys::Node>::from_pg((*(root as *mut pg_sys::BoolExpr)).args)
                .iter_ptr()
                .collect();
        }
        conjuncts.into_iter().any(|n| {
            let args = if pgrx::is_a(n, pg_sys::NodeTag::T_ScalarArrayOpExpr) {
                let s = n as *mut pg_sys::ScalarArrayOpExpr;
                if !(*s).useOr {
                    return false;
                }
                PgList::<pg_sys::Node>::from_pg((*s).args)
            } else if pgrx::is_a(n, pg_sys::NodeTag::T_OpExpr) {
                PgList::<pg_sys::Node>::from_pg((*(n as *mut pg_sys::OpExpr)).args)
            } else {
                return false;
            };
            let (Some(l), Some(r)) = (args.get_ptr(0), args.get_ptr(1)) else {
                return false;
            };
            is_column(l) && once_per_scan(r)
        })
    }
}

/// Problems of one policy, read as PERMISSIVE (as Citus recreates it on a shard).
fn policy_problems(p: &Policy, attnum: i16, s: &Sides, column: &str) -> Vec<String> {
    let mut out = Vec::new();
    if p.admin_only {
        return out; // an admin's arrays hold every tenant
    }
    let kind = if p.permissive {
        "permissive"
    } else {
        "restrictive"
    };
    let what = format!(
        "policy {} (FOR {}, {kind})",
        quote_ident(&p.name),
        p.cmd.sql()
    );
    if has_sub_select(&p.qual) || has_sub_select(&p.check) {
        out.push(format!(
            "{what} has a sub-select, which Citus refuses in policies on distributed tables"
        ));
    }
    let need = |tree: &Option<String>, funcs: &[pg_sys::Oid]| {
        tree.as_deref()
            .is_none_or(|t| has_conjunct(t, attnum, funcs, s.uuid_eq))
    };
    let (using_funcs, using_side) = if p.cmd.using_writes() {
        (&s.write, "vital_tenancy.writable_tenant_ids()")
    } else {
        (&s.read, "vital_tenancy.visible_tenant_ids(…)")
    };
    if p.cmd != PolicyCmd::Insert && !need(&p.qual, using_funcs) {
        out.push(format!(
            "{what}: its USING lacks the conjunct {column} = ANY ({using_side}), so as a permissive policy it admits rows of other tenants"
        ));
    }
    if p.cmd != PolicyCmd::Select && !need(&p.check, &s.write) {
        out.push(format!(
            "{what}: its WITH CHECK lacks the conjunct {column} = ANY (vital_tenancy.writable_tenant_ids()), so as a permissive policy it admits writes for other tenants"
        ));
    }
    out
}

fn column_attnum(c: &SpiClient<'_>, oid: pg_sys::Oid, column: &str, name: &str) -> i16 {
    let a: Option<i16> = crate::catalog::value(
        c,
        "SELECT attnum FROM pg_catalog.pg_attribute WHERE attrelid = $1 AND attname = $2 AND attnum > 0 AND NOT attisdropped",
        &[oid.into(), column.into()],
    );
    a.unwrap_or_else(|| {
        raise(
            PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
            format!(
                "column {} of table {name} does not exist",
                crate::logic::ident::display_ident(column)
            ),
        )
    })
}

/// Every way the table's policies, each read as PERMISSIVE, let a row outside the
/// tenant boundary through (nothing when the boundary holds on a Citus shard).
#[pg_extern(stable, parallel_restricted)]
#[search_path(pg_catalog, pg_temp)]
fn boundary_problems(
    tbl: crate::catalog::Regclass,
    tenant_column: default!(&str, "'tenant_id'"),
) -> SetOfIterator<'static, String> {
    let tenant_column = crate::catalog::name_arg("tenant_column", tenant_column);
    let out = Spi::connect(|c| {
        let oid = tbl.oid();
        let name = crate::catalog::table_name(c, oid);
        let attnum = column_attnum(c, oid, tenant_column, &name);
        let s = sides(c);
        let col = quote_ident(tenant_column);
        let mut out: Vec<String> = policies_of(c, oid)
            .iter()
            .flat_map(|p| policy_problems(p, attnum, &s, &col))
            .collect();
        let rls: Option<bool> = crate::catalog::value(
            c,
            "SELECT relrowsecurity FROM pg_catalog.pg_class WHERE oid = $1",
            &[oid.into()],
        );
        if rls != Some(true) {
            out.push(format!("row level security is not enabled on {name}"));
        }
        out
    });
    SetOfIterator::new(out)
}

use crate::logic::migrate::LockLimits;

/// The original CREATE POLICY statement, kept before the policy is changed.
fn definition(p: &Policy, table: &str) -> String {
    let mut d = format!(
        "CREATE POLICY {} ON {table} AS {} FOR {} TO {}",
        quote_ident(&p.name),
        if p.permissive {
            "PERMISSIVE"
        } else {
            "RESTRICTIVE"
        },
        p.cmd.sql(),
        p.roles_sql
    );
    if let Some(q) = &p.qual_sql {
        d.push_str(&format!(" USING ({q})"));
    }
    if let Some(k) = &p.check_sql {
        d.push_str(&format!(" WITH CHECK ({k})"));
    }
    d
}

fn record(c: &mut SpiClient<'_>, oid: pg_sys::Oid, p: &Policy, table: &str, action: &str) {
    c.update(
        "INSERT INTO vital_tenancy.originals (tbl, kind, name, definition, action, reason)
         VALUES ($1, 'policy', $2, $3, $4, $5) ON CONFLICT (tbl, kind, name) DO NOTHING",
        None,
        &[
            oid.into(),
            p.name.as_str().into(),
            definition(p, table).into(),
            action.into(),
            if action == "folded" {
                "Citus recreates policies on shards as permissive: the tenant boundary is folded into each"
            } else {
                "Citus refuses sub-selects in policies on distributed tables"
            }
            .into(),
        ],
    )
    .or_raise("recording the policy's original");
}

/// What the table is to the boundary: a tenant table (column, shared) or the registry.
enum Managed {
    Tenant { column: String, shared: bool },
    Registry,
}

fn managed(c: &SpiClient<'_>, oid: pg_sys::Oid, name: &str) -> Managed {
    if crate::catalog::tenants_table(c).as_deref() == Some(name) {
        return Managed::Registry;
    }
    let row = c
        .select(
            "SELECT tenant_column::text, shared FROM vital_tenancy.rls_tables WHERE tbl = $1",
            Some(1),
            &[oid.into()],
        )
        .or_raise("reading rls_tables");
    if row.is_empty() {
        raise_full(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("tenant RLS was not enabled on {name} by vital_tenancy"),
            None,
            Some("Run vital_tenancy.enable_tenant_rls() on it first.".into()),
        );
    }
    let r = row.first();
    Managed::Tenant {
        column: r.get(1).ok().flatten().unwrap_or_default(),
        shared: r.get(2).ok().flatten().unwrap_or(true),
    }
}

/// Put a table's policies in the Citus shape. Refuses (0A000, nothing changed) a
/// restrictive policy of the application's (Citus would make it permissive) and,
/// unless `set_aside_subselects`, a policy with a sub-select (Citus refuses it).
#[pg_extern(volatile)]
#[search_path(pg_catalog, pg_temp)]
fn citus_safe_policies(
    tbl: crate::catalog::Regclass,
    set_aside_subselects: default!(bool, false),
) -> TableIterator<'static, (name!(policy, String), name!(action, String))> {
    let oid = tbl.oid();
    let out = Spi::connect_mut(|c| {
        let table = crate::catalog::table_name(c, oid);
        let kind = managed(c, oid, &table);
        let (column, read, write, own): (String, String, String, Vec<&str>) = match &kind {
            Managed::Tenant { column, shared } => {
                let col = quote_ident(column);
                let mut own: Vec<&str> = POLICY_NAMES.to_vec();
                own.extend(CITUS_POLICY_NAMES);
                (
                    column.clone(),
                    inline_visible(&col, *shared),
                    inline_writable(&col),
                    own,
                )
            }
            Managed::Registry => (
                "id".into(),
                "id = ANY (vital_tenancy.visible_tenant_ids(true))".into(),
                crate::logic::rls::registry_write(),
                REGISTRY_POLICY_NAMES.to_vec(),
            ),
        };
        let attnum = column_attnum(c, oid, &column, &table);
        let s = sides(c);
        let col = quote_ident(&column);
        let theirs: Vec<Policy> = policies_of(c, oid)
            .into_iter()
            .filter(|p| !own.contains(&p.name.as_str()) && !p.name.ends_with(READ_POLICY_SUFFIX))
            .collect();
        // Refuse before changing anything.
        let restrictive: Vec<String> = theirs
            .iter()
            .filter(|p| !p.permissive)
            .map(|p| quote_ident(&p.name))
            .collect();
        if !restrictive.is_empty() {
            raise_full(
                PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                format!(
                    "restrictive policy {} on {table}: Citus recreates every policy on a shard as permissive",
                    restrictive.join(", ")
                ),
                None,
                Some("Move its condition into the table's permissive policies, then call again.".into()),
            );
        }
        let sub: Vec<&Policy> = theirs
            .iter()
            .filter(|p| has_sub_select(&p.qual) || has_sub_select(&p.check))
            .collect();
        if !sub.is_empty() && !set_aside_subselects {
            raise_full(
                PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                format!(
                    "policy {} on {table} has a sub-select, which Citus refuses in policies on distributed tables",
                    sub.iter().map(|p| quote_ident(&p.name)).collect::<Vec<_>>().join(", ")
                ),
                None,
                Some("Rewrite it without a sub-select, or call with set_aside_subselects => true to drop it (its definition is kept in vital_tenancy.originals); the table's other policies then decide access within the tenant.".into()),
            );
        }
        if matches!(kind, Managed::Registry) {
            if let Some(p) = theirs.iter().find(|p| p.cmd != PolicyCmd::Select) {
                raise(
                    PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                    format!(
                        "policy {} on the tenants registry {table} admits writes: only vital_tenancy_admin writes the registry",
                        quote_ident(&p.name)
                    ),
                );
            }
        }
        let mut out: Vec<(String, String)> = Vec::new();
        for p in &theirs {
            if has_sub_select(&p.qual) || has_sub_select(&p.check) {
                record(c, oid, p, &table, "set aside");
                crate::ddl::run(
                    c,
                    &table,
                    "setting a policy aside",
                    &format!("DROP POLICY {} ON {table}", quote_ident(&p.name)),
                    LockLimits::DEFAULT,
                );
                out.push((p.name.clone(), format!(
                    "set aside: it has a sub-select Citus refuses; the original is in vital_tenancy.originals; until the application replaces it, tenant requests get no {} on this table through it",
                    p.cmd.sql()
                )));
                continue;
            }
            if policy_problems(p, attnum, &s, &col).is_empty() {
                out.push((p.name.clone(), "already inside the boundary".into()));
                continue;
            }
            let f = fold(
                p.cmd,
                p.qual_sql.as_deref(),
                p.check_sql.as_deref(),
                &read,
                &write,
            );
            record(c, oid, p, &table, "folded");
            let mut alter = format!("ALTER POLICY {} ON {table}", quote_ident(&p.name));
            if let Some(u) = &f.using {
                alter.push_str(&format!(" USING ({u})"));
            }
            if let Some(k) = &f.check {
                alter.push_str(&format!(" WITH CHECK ({k})"));
            }
            crate::ddl::run(
                c,
                &table,
                "folding the boundary into a policy",
                &alter,
                LockLimits::DEFAULT,
            );
            out.push((p.name.clone(), "boundary folded in".into()));
            if let Some(r) = f.read_policy {
                let name = crate::logic::rls::read_policy_name(&p.name);
                crate::ddl::run(
                    c,
                    &table,
                    "adding the read side of a FOR ALL policy",
                    &format!(
                        "CREATE POLICY {} ON {table} AS PERMISSIVE FOR SELECT TO {} USING ({r})",
                        quote_ident(&name),
                        p.roles_sql
                    ),
                    LockLimits::DEFAULT,
                );
                out.push((
                    name,
                    "added: the read side of the FOR ALL policy beside it".into(),
                ));
            }
        }
        // The extension's own policies in the Citus shape.
        for p in policies_of(c, oid)
            .iter()
            .filter(|p| own.contains(&p.name.as_str()))
        {
            crate::ddl::run(
                c,
                &table,
                "dropping a policy",
                &format!("DROP POLICY {} ON {table}", quote_ident(&p.name)),
                LockLimits::DEFAULT,
            );
        }
        // The extension grants tenant-wide access only where the application never had
        // a policy of its own. Where its policies were set aside (sub-selects), the
        // table stays closed to tenant requests for those commands rather than opening
        // to every row of the tenant: setting a policy aside never widens access.
        let set_aside_before: bool = crate::catalog::value(
            c,
            "SELECT EXISTS (SELECT 1 FROM vital_tenancy.originals WHERE tbl = $1 AND kind = 'policy')",
            &[oid.into()],
        )
        .unwrap_or(false);
        let remaining_theirs = set_aside_before
            || theirs.iter().any(|p| p.permissive)
            || policies_of(c, oid)
                .iter()
                .any(|p| p.permissive && !own.contains(&p.name.as_str()));
        let mine = match &kind {
            Managed::Tenant { shared, .. } => {
                citus_policies(&table, &col, *shared, !remaining_theirs)
            }
            Managed::Registry => citus_registry_policies(&table),
        };
        for (name, sql) in mine {
            crate::ddl::run(c, &table, "creating a policy", &sql, LockLimits::DEFAULT);
            out.push((name.to_string(), "created in the Citus shape".into()));
        }
        match &kind {
            Managed::Tenant { .. } => c.update(
                "UPDATE vital_tenancy.rls_tables SET policy_shape = 'citus' WHERE tbl = $1",
                None,
                &[oid.into()],
            ),
            Managed::Registry => c.update(
                "INSERT INTO vital_tenancy.settings (name, value) VALUES ('registry_policy_shape', 'citus')
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                None,
                &[],
            ),
        }
        .or_raise("recording the policy shape");
        let left: Vec<String> = policies_of(c, oid)
            .iter()
            .flat_map(|p| policy_problems(p, attnum, &s, &col))
            .collect();
        if !left.is_empty() {
            raise_full(
                PgSqlErrorCode::ERRCODE_INVALID_OBJECT_DEFINITION,
                format!("the policies of {table} still admit rows outside the boundary"),
                Some(left.join("\n")),
                None,
            );
        }
        out
    });
    TableIterator::new(out)
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    /// rls_status().index_usable_policy for one table, from the policies' trees.
    fn usable(table: &str) -> bool {
        Spi::get_one::<bool>(&format!(
            "SELECT index_usable_policy FROM vital_tenancy.rls_status() WHERE table_name = '{table}'"
        ))
        .unwrap()
        .unwrap()
    }

    #[pg_test]
    fn index_friendly_shapes_are_read_from_the_expression_trees() {
        Spi::run(
            "CREATE TABLE public.vt_if (id int, tenant_id uuid, org uuid);
             CREATE INDEX ON public.vt_if (tenant_id);
             ALTER TABLE public.vt_if ENABLE ROW LEVEL SECURITY;
             CREATE FUNCTION public.vt_if_can_read(t uuid) RETURNS boolean LANGUAGE sql STABLE AS 'SELECT true';
             CREATE FUNCTION public.vt_if_random_ids() RETURNS uuid[] LANGUAGE sql VOLATILE AS 'SELECT ARRAY[]::uuid[]';",
        )
        .unwrap();
        let case = |policies: &str| -> bool {
            Spi::run("DO $$ DECLARE p record; BEGIN FOR p IN SELECT polname FROM pg_policy WHERE polrelid = 'public.vt_if'::regclass LOOP EXECUTE format('DROP POLICY %I ON public.vt_if', p.polname); END LOOP; END $$")
                .unwrap();
            Spi::run(policies).unwrap();
            usable("public.vt_if")
        };
        // The restrictive shape: a sub-select, AND-ed.
        assert!(case(
            "CREATE POLICY a ON public.vt_if AS RESTRICTIVE USING (tenant_id = ANY ((SELECT vital_tenancy.visible_tenant_ids(true))::uuid[]));
             CREATE POLICY b ON public.vt_if USING (true)"
        ));
        // The Citus shape: the stable function inline, in every permissive policy.
        assert!(case(
            "CREATE POLICY a ON public.vt_if USING (id > 0 AND tenant_id = ANY (vital_tenancy.visible_tenant_ids(true)));
             CREATE POLICY b ON public.vt_if FOR SELECT USING (tenant_id = ANY (vital_tenancy.writable_tenant_ids()))"
        ));
        // One permissive policy without the conjunct: the OR cannot use the index.
        assert!(!case(
            "CREATE POLICY a ON public.vt_if USING (tenant_id = ANY (vital_tenancy.visible_tenant_ids(true)));
             CREATE POLICY b ON public.vt_if USING (id > 0)"
        ));
        // A per-row function, a volatile one, another column, an OR.
        assert!(!case(
            "CREATE POLICY a ON public.vt_if USING (public.vt_if_can_read(tenant_id))"
        ));
        assert!(!case(
            "CREATE POLICY a ON public.vt_if USING (tenant_id = ANY (public.vt_if_random_ids()))"
        ));
        assert!(!case("CREATE POLICY a ON public.vt_if USING (org = ANY (vital_tenancy.visible_tenant_ids(true)))"));
        assert!(!case(
            "CREATE POLICY a ON public.vt_if USING (tenant_id = ANY (vital_tenancy.visible_tenant_ids(true)) OR id > 0)"
        ));
        // An equality with a once-per-scan sub-select, and a policy only for writes.
        assert!(case(
            "CREATE POLICY a ON public.vt_if USING (tenant_id = (SELECT vital_tenancy.current_tenant_id()))"
        ));
        assert!(!case(
            "CREATE POLICY a ON public.vt_if FOR INSERT WITH CHECK (tenant_id = ANY (vital_tenancy.writable_tenant_ids()))"
        ));
    }
}
