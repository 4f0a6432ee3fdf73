//! The one runner of the extension's own DDL: every statement that takes a table lock
//! goes through `vital_tenancy.run_ddl` (sql/migrate.sql) under `lock_timeout` with
//! retries, logged in `migration_log` with the table it changes. Behind a long
//! transaction a step gives up with 55P03 naming the table and the step, instead of
//! queueing every reader of the table behind its lock request for as long as that
//! transaction lasts.

use crate::errors::OrRaise;
use crate::logic::migrate::LockLimits;
use pgrx::spi::SpiClient;

/// The limits of a call, or ERROR 22023 naming the argument and its bounds (checked
/// before anything is read or written).
pub(crate) fn limits(lock_timeout_ms: i32, retries: i32) -> LockLimits {
    LockLimits::new(lock_timeout_ms, retries).unwrap_or_else(|e| crate::migrate::plan_error(e))
}

/// Run one DDL statement on `table` (its SQL name, for the log and the messages).
pub(crate) fn run(c: &mut SpiClient<'_>, table: &str, step: &str, sql: &str, limits: LockLimits) {
    c.update(
        "SELECT vital_tenancy.run_ddl($1, $2, $3, $4, $5)",
        None,
        &[
            sql.into(),
            step.into(),
            table.into(),
            limits.lock_timeout_ms.into(),
            limits.retries.into(),
        ],
    )
    .or_raise(step);
}
