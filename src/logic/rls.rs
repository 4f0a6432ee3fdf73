//! The row-level-security policies `enable_tenant_rls` generates.
//!
//! Shape matters more than anything: every policy compares the tenant column with an
//! array computed once per statement by a scalar sub-select (an InitPlan), so the
//! planner turns it into an index condition `tenant_id = ANY ($0)`. No per-row
//! function call, no OR with a non-column condition.
//!
//! The tenant boundary is a set of RESTRICTIVE policies, so it holds whatever the
//! application's own (permissive) policies say, even `USING (true)`. A PERMISSIVE
//! policy granting the tenant's rows is added only when the table has no permissive
//! policy of its own; otherwise the application's policies keep deciding who within
//! the tenant may do what. Platform admins get their own permissive policy, and the
//! boundary lets them through because their visible/writable arrays hold every tenant.
//! The server-side role `vital_tenancy_service` (the application's API routes) gets a
//! permissive policy of its own: every row of its request's tenant (and Platform's on
//! shared tables), whatever the application's user-level policies say, inside the same
//! boundary. No policy of the extension is constant-true: each names the tenant column.

/// The role whose members read and write every tenant's rows.
pub const ADMIN_ROLE: &str = "vital_tenancy_admin";

/// The server-side role of the application's API routes.
pub const SERVICE_ROLE: &str = "vital_tenancy_service";

/// Prefix of every policy the extension creates; nothing else is touched.
pub const POLICY_PREFIX: &str = "vt_";

/// Names of the policies, in creation order.
pub const POLICY_NAMES: [&str; 7] = [
    "vt_tenant_select",
    "vt_tenant_insert",
    "vt_tenant_update",
    "vt_tenant_delete",
    "vt_tenant_access",
    "vt_service_access",
    "vt_platform_admin",
];

/// `(policy name, CREATE POLICY statement)` for one table. `table` and `column` must
/// already be quoted SQL identifiers.
pub fn policies(
    table: &str,
    column: &str,
    shared: bool,
    grant_access: bool,
) -> Vec<(&'static str, String)> {
    // The cast makes the sub-select a scalar array expression (an InitPlan), not the
    // `= ANY (subquery)` form, which would compare the column with each array.
    let visible =
        format!("{column} = ANY ((SELECT vital_tenancy.visible_tenant_ids({shared}))::uuid[])");
    let writable = format!("{column} = ANY ((SELECT vital_tenancy.writable_tenant_ids())::uuid[])");
    let mut out = vec![
        (
            POLICY_NAMES[0],
            format!("CREATE POLICY vt_tenant_select ON {table} AS RESTRICTIVE FOR SELECT TO PUBLIC USING ({visible})"),
        ),
        (
            POLICY_NAMES[1],
            format!("CREATE POLICY vt_tenant_insert ON {table} AS RESTRICTIVE FOR INSERT TO PUBLIC WITH CHECK ({writable})"),
        ),
        (
            POLICY_NAMES[2],
            format!(
                "CREATE POLICY vt_tenant_update ON {table} AS RESTRICTIVE FOR UPDATE TO PUBLIC USING ({writable}) WITH CHECK ({writable})"
            ),
        ),
        (
            POLICY_NAMES[3],
            format!("CREATE POLICY vt_tenant_delete ON {table} AS RESTRICTIVE FOR DELETE TO PUBLIC USING ({writable})"),
        ),
    ];
    if grant_access {
        out.push((
            POLICY_NAMES[4],
            format!(
                "CREATE POLICY vt_tenant_access ON {table} AS PERMISSIVE FOR ALL TO PUBLIC USING ({visible}) WITH CHECK ({writable})"
            ),
        ));
    }
    out.push((
        POLICY_NAMES[5],
        format!(
            "CREATE POLICY vt_service_access ON {table} AS PERMISSIVE FOR ALL TO {SERVICE_ROLE} USING ({visible}) WITH CHECK ({writable})"
        ),
    ));
    // For admins the arrays hold every tenant; the policy still names the column, so it
    // never admits a row by itself (e.g. if the restrictive boundary were dropped).
    out.push((
        POLICY_NAMES[6],
        format!(
            "CREATE POLICY vt_platform_admin ON {table} AS PERMISSIVE FOR ALL TO {ADMIN_ROLE} USING ({visible}) WITH CHECK ({writable})"
        ),
    ));
    out
}

/// Names of the policies on the tenants registry.
pub const REGISTRY_POLICY_NAMES: [&str; 3] = [
    "vt_registry_boundary",
    "vt_registry_read",
    "vt_registry_admin",
];

/// `(policy name, CREATE POLICY statement)` for the tenants registry: a request reads
/// its own tenant's row and Platform's (every row for admins, none without a context);
/// only platform admins write through RLS (the owner, a DBA, is not forced). `table`
/// must be quoted SQL.
pub fn registry_policies(table: &str) -> Vec<(&'static str, String)> {
    let visible = "id = ANY ((SELECT vital_tenancy.visible_tenant_ids(true))::uuid[])";
    vec![
        (
            REGISTRY_POLICY_NAMES[0],
            format!(
                "CREATE POLICY vt_registry_boundary ON {table} AS RESTRICTIVE FOR ALL TO PUBLIC USING ({visible}) WITH CHECK (pg_catalog.pg_has_role('{ADMIN_ROLE}', 'USAGE'))"
            ),
        ),
        (
            REGISTRY_POLICY_NAMES[1],
            format!("CREATE POLICY vt_registry_read ON {table} AS PERMISSIVE FOR SELECT TO PUBLIC USING ({visible})"),
        ),
        (
            REGISTRY_POLICY_NAMES[2],
            format!(
                "CREATE POLICY vt_registry_admin ON {table} AS PERMISSIVE FOR ALL TO {ADMIN_ROLE} USING ({visible}) WITH CHECK (id IS NOT NULL)"
            ),
        ),
    ]
}

/// Names of the extension's policies in the Citus shape (`citus_policies`), besides
/// `vt_tenant_select` … `vt_tenant_delete` and `vt_platform_admin`, which both shapes use.
pub const CITUS_POLICY_NAMES: [&str; 4] = [
    "vt_service_select",
    "vt_service_insert",
    "vt_service_update",
    "vt_service_delete",
];

/// Suffix of the read policy `fold` adds beside an application's FOR ALL policy.
pub const READ_POLICY_SUFFIX: &str = " (vt read)";

/// Name of the read policy added beside an application's FOR ALL policy: its name
/// and `READ_POLICY_SUFFIX`, cut on a character boundary to PostgreSQL's 63 bytes.
pub fn read_policy_name(policy: &str) -> String {
    let mut base = policy.to_string();
    while base.len() + READ_POLICY_SUFFIX.len() > 63 {
        base.pop();
    }
    format!("{base}{READ_POLICY_SUFFIX}")
}

/// The read side of the boundary without a sub-select (Citus refuses sub-selects in
/// policies on distributed tables). An index scan still takes it as an index
/// condition: the function is STABLE, so the executor evaluates it once per scan.
pub fn inline_visible(column: &str, shared: bool) -> String {
    format!("{column} = ANY (vital_tenancy.visible_tenant_ids({shared}))")
}

/// The write side of the boundary without a sub-select.
pub fn inline_writable(column: &str) -> String {
    format!("{column} = ANY (vital_tenancy.writable_tenant_ids())")
}

/// The command a policy applies to (`pg_policy.polcmd`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyCmd {
    Select,
    Insert,
    Update,
    Delete,
    All,
}

impl PolicyCmd {
    pub fn from_polcmd(c: &str) -> Option<PolicyCmd> {
        match c {
            "r" => Some(PolicyCmd::Select),
            "a" => Some(PolicyCmd::Insert),
            "w" => Some(PolicyCmd::Update),
            "d" => Some(PolicyCmd::Delete),
            "*" => Some(PolicyCmd::All),
            _ => None,
        }
    }

    pub fn sql(self) -> &'static str {
        match self {
            PolicyCmd::Select => "SELECT",
            PolicyCmd::Insert => "INSERT",
            PolicyCmd::Update => "UPDATE",
            PolicyCmd::Delete => "DELETE",
            PolicyCmd::All => "ALL",
        }
    }

    /// Whether the policy's USING expression filters rows a statement modifies
    /// (UPDATE, DELETE), so that it must carry the write side of the boundary.
    pub fn using_writes(self) -> bool {
        matches!(self, PolicyCmd::Update | PolicyCmd::Delete | PolicyCmd::All)
    }
}

/// An application policy with the boundary folded in: its new USING and WITH CHECK
/// (`None`: leave as is) and, for a FOR ALL policy, the USING of the read policy to
/// add beside it (the FOR ALL policy itself then keeps to writable rows, since its
/// USING also decides which rows UPDATE and DELETE reach).
#[derive(Debug, PartialEq)]
pub struct Fold {
    pub using: Option<String>,
    pub check: Option<String>,
    pub read_policy: Option<String>,
}

/// Fold the boundary (`read`: the visible side, `write`: the writable side, both
/// SQL conditions) into a policy's expressions, so that the policy admits only rows
/// inside the boundary even as a PERMISSIVE policy OR-ed with others, which is what
/// Citus makes of every policy on a shard. An absent expression stays absent (a
/// permissive policy without one admits nothing through it).
pub fn fold(
    cmd: PolicyCmd,
    using: Option<&str>,
    check: Option<&str>,
    read: &str,
    write: &str,
) -> Fold {
    let and = |e: &str, b: &str| format!("({e}) AND {b}");
    match cmd {
        PolicyCmd::Select => Fold {
            using: using.map(|u| and(u, read)),
            check: None,
            read_policy: None,
        },
        PolicyCmd::Insert => Fold {
            using: None,
            check: check.map(|c| and(c, write)),
            read_policy: None,
        },
        PolicyCmd::Update | PolicyCmd::Delete => Fold {
            using: using.map(|u| and(u, write)),
            check: check.map(|c| and(c, write)),
            read_policy: None,
        },
        PolicyCmd::All => Fold {
            using: using.map(|u| and(u, write)),
            check: check.map(|c| and(c, write)),
            read_policy: using.map(|u| and(u, read)),
        },
    }
}

/// The extension's policies in the Citus shape: every one PERMISSIVE and each inside
/// the boundary for its command, with no sub-select, so that OR-ed together (as Citus
/// recreates them on shards, without `AS RESTRICTIVE`) they still hold the boundary.
/// The application's own policies get the boundary folded in (`fold`); where the
/// table has none, `grant_access` adds the tenant's own access.
pub fn citus_policies(
    table: &str,
    column: &str,
    shared: bool,
    grant_access: bool,
) -> Vec<(&'static str, String)> {
    let visible = inline_visible(column, shared);
    let writable = inline_writable(column);
    let four = |names: [&'static str; 4], to: &str| {
        vec![
            (names[0], format!("CREATE POLICY {} ON {table} AS PERMISSIVE FOR SELECT TO {to} USING ({visible})", names[0])),
            (names[1], format!("CREATE POLICY {} ON {table} AS PERMISSIVE FOR INSERT TO {to} WITH CHECK ({writable})", names[1])),
            (names[2], format!("CREATE POLICY {} ON {table} AS PERMISSIVE FOR UPDATE TO {to} USING ({writable}) WITH CHECK ({writable})", names[2])),
            (names[3], format!("CREATE POLICY {} ON {table} AS PERMISSIVE FOR DELETE TO {to} USING ({writable})", names[3])),
        ]
    };
    let mut out = Vec::new();
    if grant_access {
        out.extend(four(
            [
                POLICY_NAMES[0],
                POLICY_NAMES[1],
                POLICY_NAMES[2],
                POLICY_NAMES[3],
            ],
            "PUBLIC",
        ));
    }
    out.extend(four(CITUS_POLICY_NAMES, SERVICE_ROLE));
    // For admins the writable array holds every tenant, so one FOR ALL policy on the
    // write side gives them every row for every command.
    out.push((
        POLICY_NAMES[6],
        format!("CREATE POLICY vt_platform_admin ON {table} AS PERMISSIVE FOR ALL TO {ADMIN_ROLE} USING ({writable}) WITH CHECK ({writable})"),
    ));
    out
}

/// The registry's policies in the Citus shape: no restrictive policy; a request reads
/// its tenant's row and Platform's, platform admins read and write (their writable
/// array holds every tenant; a new tenant's id is admitted by the admin role alone).
pub fn citus_registry_policies(table: &str) -> Vec<(&'static str, String)> {
    let visible = "id = ANY (vital_tenancy.visible_tenant_ids(true))";
    vec![
        (
            REGISTRY_POLICY_NAMES[1],
            format!("CREATE POLICY vt_registry_read ON {table} AS PERMISSIVE FOR SELECT TO PUBLIC USING ({visible})"),
        ),
        (
            REGISTRY_POLICY_NAMES[2],
            format!(
                "CREATE POLICY vt_registry_admin ON {table} AS PERMISSIVE FOR ALL TO {ADMIN_ROLE} USING ({}) WITH CHECK ({})",
                registry_write(), registry_write()
            ),
        ),
    ]
}

/// The write side of the registry's boundary: platform admins only.
pub fn registry_write() -> String {
    format!("pg_catalog.pg_has_role('{ADMIN_ROLE}', 'USAGE')")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_compare_the_column_with_an_initplan() {
        let p = policies("\"public\".\"messages\"", "\"tenant_id\"", true, true);
        assert_eq!(p.len(), 7);
        for (name, sql) in &p {
            assert!(sql.contains(name), "{sql}");
            assert!(!sql.contains(" OR "), "no OR in tenant policies: {sql}");
            assert!(
                !sql.contains("USING (true)") && !sql.contains("CHECK (true)"),
                "no constant-true policy: {sql}"
            );
            assert!(
                sql.contains("\"tenant_id\" = ANY ((SELECT vital_tenancy."),
                "{sql}"
            );
        }
        assert!(p[5].1.contains("TO vital_tenancy_service"));
        assert!(p[6].1.contains("TO vital_tenancy_admin"));
        assert!(p[0].1.contains("visible_tenant_ids(true)"));
        assert!(p[0].1.contains("AS RESTRICTIVE FOR SELECT"));
    }

    #[test]
    fn unshared_tables_and_tables_with_own_policies() {
        let p = policies("t", "c", false, false);
        assert_eq!(p.len(), 6);
        assert!(p[0].1.contains("visible_tenant_ids(false)"));
        assert!(!p.iter().any(|(n, _)| *n == "vt_tenant_access"));
    }

    #[test]
    fn registry_policies_name_the_id_and_admit_writes_for_admins_only() {
        let p = registry_policies("\"public\".\"tenants\"");
        assert_eq!(p.len(), 3);
        assert!(p[0].1.contains("AS RESTRICTIVE FOR ALL TO PUBLIC"));
        assert!(p[0]
            .1
            .contains("pg_has_role('vital_tenancy_admin', 'USAGE')"));
        for (name, sql) in &p {
            assert!(sql.contains(name));
            assert!(sql.contains("id = ANY ((SELECT vital_tenancy.visible_tenant_ids(true))"));
            assert!(
                !sql.contains("USING (true)") && !sql.contains("CHECK (true)"),
                "{sql}"
            );
        }
    }

    #[test]
    fn folding_keeps_each_command_inside_the_boundary() {
        let (r, w) = ("R", "W");
        let f = fold(PolicyCmd::Select, Some("status = 'active'"), None, r, w);
        assert_eq!(f.using.as_deref(), Some("(status = 'active') AND R"));
        assert_eq!((f.check, f.read_policy), (None, None));
        let f = fold(PolicyCmd::Insert, None, Some("true"), r, w);
        assert_eq!((f.using, f.check.as_deref()), (None, Some("(true) AND W")));
        let f = fold(
            PolicyCmd::Delete,
            Some("created_by = auth.uid()"),
            None,
            r,
            w,
        );
        assert_eq!(f.using.as_deref(), Some("(created_by = auth.uid()) AND W"));
        let f = fold(PolicyCmd::Update, Some("a"), Some("b"), r, w);
        assert_eq!(
            (f.using.as_deref(), f.check.as_deref()),
            (Some("(a) AND W"), Some("(b) AND W"))
        );
        // FOR ALL: the policy keeps to writable rows (its USING also decides what
        // UPDATE and DELETE reach); a read policy beside it restores shared reads.
        let f = fold(PolicyCmd::All, Some("x"), None, r, w);
        assert_eq!(f.using.as_deref(), Some("(x) AND W"));
        assert_eq!(f.read_policy.as_deref(), Some("(x) AND R"));
        assert_eq!(read_policy_name("p"), "p (vt read)");
        let long = "é".repeat(40);
        let n = read_policy_name(&long);
        assert!(n.len() <= 63 && n.ends_with(READ_POLICY_SUFFIX), "{n}");
        // A missing expression stays missing (it admits nothing through the policy).
        assert_eq!(
            fold(PolicyCmd::Select, None, None, r, w),
            Fold {
                using: None,
                check: None,
                read_policy: None
            }
        );
    }

    #[test]
    fn citus_shape_has_no_restrictive_policy_and_no_sub_select() {
        for grant in [true, false] {
            let p = citus_policies("t", "\"tenant_id\"", true, grant);
            assert_eq!(p.len(), if grant { 9 } else { 5 });
            for (name, sql) in &p {
                assert!(
                    sql.contains(&format!("CREATE POLICY {name} ON t AS PERMISSIVE")),
                    "{sql}"
                );
                assert!(
                    !sql.contains("SELECT vital_tenancy"),
                    "no sub-select: {sql}"
                );
                assert!(!sql.contains("RESTRICTIVE"), "{sql}");
                // Commands that reach existing rows for writing use the write side.
                if sql.contains("FOR UPDATE")
                    || sql.contains("FOR DELETE")
                    || sql.contains("FOR ALL")
                {
                    assert!(
                        sql.contains(
                            "USING (\"tenant_id\" = ANY (vital_tenancy.writable_tenant_ids()))"
                        ),
                        "{sql}"
                    );
                }
                if sql.contains("FOR SELECT") {
                    assert!(sql.contains("visible_tenant_ids(true)"), "{sql}");
                }
            }
        }
        let r = citus_registry_policies("tenants");
        assert!(r
            .iter()
            .all(|(_, s)| !s.contains("RESTRICTIVE") && !s.contains("(SELECT")));
    }
}
