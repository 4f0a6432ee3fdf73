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

/// Whether a deparsed policy expression (`pg_get_expr(polqual)`) compares the tenant
/// column with a once-per-statement sub-select, the shape an index can serve.
pub fn is_index_friendly(expr: &str, column: &str) -> bool {
    let e: String = expr.split_whitespace().collect::<Vec<_>>().join(" ");
    let quoted = super::ident::quote_ident(column);
    [column, quoted.as_str()].iter().any(|c| {
        e.contains(&format!("{c} = ANY (( SELECT"))
            || e.contains(&format!("{c} = ANY ((SELECT"))
            || e.contains(&format!("{c} = ( SELECT"))
    })
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
    fn recognises_index_friendly_shapes() {
        // What pg_get_expr() gives back for the generated policy.
        let deparsed = "(tenant_id = ANY (( SELECT vital_tenancy.visible_tenant_ids(true) AS visible_tenant_ids)::uuid[]))";
        assert!(is_index_friendly(deparsed, "tenant_id"));
        assert!(!is_index_friendly(
            "vital_tenancy.can_read(tenant_id)",
            "tenant_id"
        ));
        assert!(!is_index_friendly(
            "(tenant_id = ANY (vital_tenancy.visible_tenant_ids(true)))",
            "tenant_id"
        ));
        assert!(is_index_friendly(
            "(org = ( SELECT current_org() AS current_org))",
            "org"
        ));
    }
}
