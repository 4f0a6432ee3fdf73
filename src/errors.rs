//! Raising errors the way a Postgres user expects: an `ERROR` with a proper SQLSTATE,
//! a message naming the culprit, optional detail and hint. Never a Rust panic.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::spi::SpiResult;

/// Raise an `ERROR` with the given SQLSTATE. Does not return.
pub fn raise(code: PgSqlErrorCode, message: impl Into<String>) -> ! {
    raise_full(code, message, None, None)
}

/// Raise an `ERROR` with detail and/or hint lines.
pub fn raise_full(
    code: PgSqlErrorCode,
    message: impl Into<String>,
    detail: Option<String>,
    hint: Option<String>,
) -> ! {
    let mut report = ErrorReport::new(code, message.into(), "vital_tenancy");
    if let Some(d) = detail {
        report = report.set_detail(d);
    }
    if let Some(h) = hint {
        report = report.set_hint(h);
    }
    report.report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}

/// SPI calls fail in Rust only on an extension bug (a type mismatch between a query
/// and the code reading it); errors raised by Postgres itself propagate as themselves.
/// Report such a bug as an internal error with the SPI message instead of panicking.
pub trait OrRaise<T> {
    fn or_raise(self, what: &str) -> T;
}

impl<T> OrRaise<T> for SpiResult<T> {
    fn or_raise(self, what: &str) -> T {
        match self {
            Ok(v) => v,
            Err(e) => raise(
                PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                format!("vital_tenancy internal error while {what}: {e}"),
            ),
        }
    }
}

/// Free the rows of the last SPI result (`SPI_tuptable`). A cursor's fetches stay in
/// the SPI procedure's memory until `SPI_finish` otherwise, so a loop over a large
/// table would hold every row it has read. Call it once a batch's rows are consumed.
pub fn free_last_spi_result() {
    // SAFETY: SPI_tuptable is the result of the latest SPI call in this connection
    // (or NULL, which SPI_freetuptable ignores); the caller no longer holds its rows.
    unsafe { pg_sys::SPI_freetuptable(pg_sys::SPI_tuptable) }
}

/// A text[] argument without NULL elements, or ERROR 22004 naming the argument (pgrx's
/// `Vec<String>` would refuse a NULL element with an internal error instead).
pub fn no_null_elements(arg: &str, v: Vec<Option<String>>) -> Vec<String> {
    v.into_iter()
        .enumerate()
        .map(|(i, s)| {
            s.unwrap_or_else(|| {
                raise(
                    PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
                    format!("{arg} must not contain NULL (element {})", i + 1),
                )
            })
        })
        .collect()
}

/// Run `f`, which reads rows of an SPI result, so that the values pgrx's `get()` copies
/// out of each row land in a context freed when `f` returns. (`get()` copies a
/// by-reference value into the parent of the current context; right after an SPI call
/// that is SPI's procedure context, whose parent inside a function is the
/// transaction's own memory: a loop over a large table would keep every value it read
/// until COMMIT.) `f` must return Rust-owned values only.
pub fn reading_rows<R>(f: impl FnOnce() -> R) -> R {
    let mut outer = pgrx::PgMemoryContexts::new("vital_tenancy rows");
    // SAFETY: both contexts are created here and live until this function returns;
    // nothing allocated in them is returned (the values are converted to Rust first).
    unsafe {
        outer.switch_to(|_| {
            let mut inner = pgrx::PgMemoryContexts::new("vital_tenancy row");
            inner.switch_to(|_| f())
        })
    }
}

/// Run `f` inside an internal subtransaction that is always rolled back, so whatever
/// `f` set (settings, the user id, catalog caches) is undone; a PostgreSQL ERROR raised
/// inside is caught and returned as its SQLSTATE and message instead of aborting the
/// caller. `f` may run SPI on a connection opened outside it (as a PL/pgSQL exception
/// block does; what it fetched inside is freed with the subtransaction) and must return
/// Rust-owned values only.
pub fn catching<T>(f: impl FnOnce() -> T) -> Result<T, (PgSqlErrorCode, String)> {
    use pgrx::pg_sys::panic::CaughtError;
    // SAFETY: the protocol PL/pgSQL's exception blocks follow: remember the memory
    // context and resource owner, begin a subtransaction, run in the caller's context,
    // roll the subtransaction back on both paths and restore both.
    unsafe {
        let context = pg_sys::CurrentMemoryContext;
        let owner = pg_sys::CurrentResourceOwner;
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(context);
        let restore = move || {
            pg_sys::RollbackAndReleaseCurrentSubTransaction();
            pg_sys::MemoryContextSwitchTo(context);
            pg_sys::CurrentResourceOwner = owner;
        };
        PgTryBuilder::new(std::panic::AssertUnwindSafe(|| {
            let v = f();
            restore();
            Ok(v)
        }))
        .catch_others(|e| {
            restore();
            let report = match e {
                CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) => r,
                CaughtError::RustPanic { ereport, .. } => ereport,
            };
            Err((report.sql_error_code(), report.message().to_string()))
        })
        .execute()
    }
}
