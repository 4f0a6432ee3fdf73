//! vital_tenancy: carry a single-tenant SaaS database to multi-tenancy inside PostgreSQL.
//!
//! Module map (one module per thing a SQL user sees; pure logic lives in [`logic`]):
//! - [`tenants`]: the tenant registry (`platform_tenant_id()`, `ensure_tenants()`, ...).
//! - [`citus`]: `citus_readiness()`, `prepare_for_citus()`, `distribute_all()`.
//! - [`boundary`]: the tenant boundary in the Citus shape (`citus_safe_policies()`,
//!   `boundary_problems()`).
//! - [`classify`]: rule-driven tenant classifiers, explain/preview, configurable rules.
//! - [`context`]: tenant context (`current_tenant_id()`, `pre_request()`, `set_tenant()`,
//!   visible/writable ids).
//! - [`guc`]: the extension's settings, who may set a tenant, and whether a setting was
//!   set inside the current transaction.
//! - [`rls`]: `enable_tenant_rls()`, `disable_tenant_rls()`, `rls_status()`.
//! - [`migrate`]: online DDL path, backfill plan, count snapshots, revert, report
//!   (the batched `backfill` procedure is PL/pgSQL in `sql/migrate.sql`).
//! - [`validate`]: validation set-returning functions, `validate()`, `assert_valid()`.
//! - [`monitor`]: `health()`, `index_advice()`, `index_coverage()`, `tenant_usage()`, `export_tenant()`.
//! - [`advice`]: `query_advice()` and `query_coverage()`: index advice from the
//!   application's statements (pg_stat_statements), verified with hypopg.
//! - [`lifecycle`]: what tenant statuses allow (`tenant_status()`, `set_status_access()`),
//!   offboarding (`tenant_deletion_plan()`, the `delete_tenant` procedure in
//!   `sql/lifecycle.sql`) and moving a tenant (`import_tenant()`).
//! - [`activity`]: per-tenant statements, rows and time (`tenant_activity()`), collected
//!   by executor hooks in shared memory when the library is preloaded.
//! - [`keys`]: tenant-scoped unique keys and reference guards (`tenant_keys_plan()`,
//!   `apply_tenant_keys()`); the key computation the Citus path shares.
//! - [`explain`]: `EXPLAIN ANALYZE` refused for statements on tables under row level
//!   security for the current role (`vital_tenancy.restrict_explain_analyze`).
//! - [`routing`]: on Citus, a request reaches only its tenants' shards (the planner
//!   hook adds the context's tenant ids as a constant; routed plans are invalidated
//!   when the context changes).
//! - [`catalog`]: catalog look-ups shared by the functions above.
//! - [`errors`]: how every user-facing error is raised (SQLSTATE + message, never a panic).
//! - [`hooks`]: calling on down PostgreSQL's hook chains.

use pgrx::prelude::*;

pub mod activity;
pub mod advice;
pub mod boundary;
pub mod catalog;
pub mod citus;
pub mod classify;
pub mod context;
pub mod ddl;
pub mod errors;
pub mod explain;
pub mod guc;
pub mod hooks;
pub mod keys;
pub mod lifecycle;
pub mod logic;
pub mod migrate;
pub mod monitor;
pub mod rls;
pub mod routing;
pub mod tenants;
pub mod validate;

::pgrx::pg_module_magic!(name, version);

/// Called once when a backend loads the library.
#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    guc::init();
    classify::init();
    context::init();
    activity::init();
    explain::init();
    routing::init();
}

// Objects that are not Rust functions: grants, configuration tables, helpers.
// `bootstrap` runs before any generated function; `finalize` runs last and documents
// every function with COMMENT ON FUNCTION and sets their privileges.
extension_sql_file!("../sql/bootstrap.sql", name = "bootstrap", bootstrap);
extension_sql_file!(
    "../sql/migrate.sql",
    name = "migrate_procedures",
    requires = [migrate::backfill_plan, classify::preview_classification]
);
extension_sql_file!("../sql/keys.sql", name = "tenant_keys");
extension_sql_file!(
    "../sql/lifecycle.sql",
    name = "lifecycle_procedures",
    requires = [lifecycle::tenant_deletion_plan]
);
extension_sql_file!("../sql/finalize.sql", name = "finalize", finalize);

/// This module is required by `cargo pgrx test` invocations.
/// It must be visible at the root of your extension crate.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
