//! Per-tenant activity: statements, rows read and written, and execution time per
//! tenant since the last reset, in shared memory, so that a noisy neighbour can be
//! named (`tenant_activity()`). Plain PostgreSQL has nothing per tenant; Citus has
//! `citus_stat_tenants`.
//!
//! Collected by executor hooks, as pg_stat_statements collects per query: only when
//! the library is in `shared_preload_libraries` (shared memory is sized at server
//! start), and while `vital_tenancy.track_activity` is on (the default; superusers turn
//! it off per database, role or session without a restart). Per top-level statement, never per row: at ExecutorStart a timer for the
//! whole statement (PostgreSQL's `totaltime` instrumentation); while it runs, the
//! tenant the context resolves to (where the policies, `current_tenant_id()` or
//! `pre_request()` resolve it) is noted; at ExecutorEnd that tenant, `es_processed`
//! and the elapsed time go into the tenant's slot under one LWLock. The hooks never
//! query or raise; a statement that never resolved a context (no tenant table read)
//! counts without a tenant. Nested statements (functions, the extension's own
//! queries) count in their top-level statement.

use crate::errors::raise_full;
use pgrx::prelude::*;
use pgrx::Uuid;
use std::cell::{Cell, RefCell};

/// Tenants tracked at once; statements of further tenants are counted in `dropped`
/// until a reset.
const SLOTS: usize = 512;

#[repr(C)]
#[derive(Clone, Copy)]
struct Slot {
    used: bool,
    /// All zero: statements without a tenant context.
    tenant: [u8; 16],
    statements: u64,
    rows_read: u64,
    rows_written: u64,
    time_us: f64,
}

#[repr(C)]
struct Shared {
    lock: *mut pg_sys::LWLock,
    reset_at: pg_sys::TimestampTz,
    dropped: u64,
    slots: [Slot; SLOTS],
}

const TRANCHE: &std::ffi::CStr = c"vital_tenancy_activity";

static mut SHARED: *mut Shared = std::ptr::null_mut();
static mut PREV_REQUEST: pg_sys::shmem_request_hook_type = None;
static mut PREV_STARTUP: pg_sys::shmem_startup_hook_type = None;
static mut PREV_START: pg_sys::ExecutorStart_hook_type = None;
static mut PREV_RUN: pg_sys::ExecutorRun_hook_type = None;
static mut PREV_FINISH: pg_sys::ExecutorFinish_hook_type = None;
static mut PREV_END: pg_sys::ExecutorEnd_hook_type = None;

/// A top-level statement between ExecutorStart and ExecutorEnd.
struct Open {
    /// Its query descriptor's address.
    query: usize,
    /// Its number in this backend.
    number: u64,
    /// The tenant the context resolved to while it ran.
    tenant: Option<[u8; 16]>,
}

thread_local! {
    /// Executor nesting depth (inside ExecutorRun/ExecutorFinish).
    static NESTING: Cell<u32> = const { Cell::new(0) };
    /// Numbering of top-level statements in this backend.
    static SEQ: Cell<u64> = const { Cell::new(0) };
    /// The top-level statement now running (its number; 0 outside one).
    static CURRENT: Cell<u64> = const { Cell::new(0) };
    /// Open top-level statements. A cursor's statement stays open across other
    /// statements until it is closed.
    static OPEN: RefCell<Vec<Open>> = const { RefCell::new(Vec::new()) };
}

/// Called where the tenant context is resolved (the policies, current_tenant_id(),
/// pre_request()): the statement running now ran for this tenant. No query, no
/// ERROR: the hooks never look anything up themselves.
pub(crate) fn note_tenant(tenant: Option<[u8; 16]>) {
    let current = CURRENT.with(|c| c.get());
    if current == 0 || tenant.is_none() {
        return;
    }
    OPEN.with(|o| {
        if let Ok(mut o) = o.try_borrow_mut() {
            if let Some(e) = o.iter_mut().find(|e| e.number == current) {
                e.tenant = tenant;
            }
        }
    });
}

/// At the end of a transaction no statement of it is open any more.
pub(crate) fn end_of_transaction() {
    CURRENT.with(|c| c.set(0));
    OPEN.with(|o| {
        if let Ok(mut o) = o.try_borrow_mut() {
            o.clear();
        }
    });
}

/// Install the hooks: only from shared_preload_libraries (called from `_PG_init`).
pub fn init() {
    // SAFETY: reads a postmaster global; hooks are chained as PostgreSQL documents,
    // once, in the postmaster before any backend starts.
    unsafe {
        if !pg_sys::process_shared_preload_libraries_in_progress {
            return;
        }
        PREV_REQUEST = pg_sys::shmem_request_hook;
        pg_sys::shmem_request_hook = Some(shmem_request);
        PREV_STARTUP = pg_sys::shmem_startup_hook;
        pg_sys::shmem_startup_hook = Some(shmem_startup);
        PREV_START = pg_sys::ExecutorStart_hook;
        pg_sys::ExecutorStart_hook = Some(executor_start);
        PREV_RUN = pg_sys::ExecutorRun_hook;
        pg_sys::ExecutorRun_hook = Some(executor_run);
        PREV_FINISH = pg_sys::ExecutorFinish_hook;
        pg_sys::ExecutorFinish_hook = Some(executor_finish);
        PREV_END = pg_sys::ExecutorEnd_hook;
        pg_sys::ExecutorEnd_hook = Some(executor_end);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn shmem_request() {
    // SAFETY: the shmem_request_hook protocol (PostgreSQL 15 and later).
    unsafe {
        if let Some(prev) = PREV_REQUEST {
            prev();
        }
        pg_sys::RequestAddinShmemSpace(std::mem::size_of::<Shared>());
        pg_sys::RequestNamedLWLockTranche(TRANCHE.as_ptr(), 1);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn shmem_startup() {
    // SAFETY: the shmem_startup_hook protocol: allocate or attach under
    // AddinShmemInitLock; the first to find it initializes it.
    unsafe {
        if let Some(prev) = PREV_STARTUP {
            prev();
        }
        // AddinShmemInitLock is a macro in C: the 21st main LWLock.
        let init_lock = &mut (*pg_sys::MainLWLockArray.add(21)).lock as *mut pg_sys::LWLock;
        pg_sys::LWLockAcquire(init_lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        let mut found = false;
        let ptr =
            pg_sys::ShmemInitStruct(TRANCHE.as_ptr(), std::mem::size_of::<Shared>(), &mut found)
                as *mut Shared;
        if !found {
            std::ptr::write_bytes(ptr as *mut u8, 0, std::mem::size_of::<Shared>());
            (*ptr).lock = &mut (*pg_sys::GetNamedLWLockTranche(TRANCHE.as_ptr())).lock;
            (*ptr).reset_at = pg_sys::GetCurrentTimestamp();
        }
        SHARED = ptr;
        pg_sys::LWLockRelease(init_lock);
    }
}

fn collecting() -> bool {
    // SAFETY: reads of backend globals.
    unsafe { !SHARED.is_null() && pg_sys::ParallelWorkerNumber < 0 }
}

/// The number of an open top-level statement.
fn number_of(query: *mut pg_sys::QueryDesc) -> Option<u64> {
    OPEN.with(|o| {
        o.borrow()
            .iter()
            .find(|e| e.query == query as usize)
            .map(|e| e.number)
    })
}

#[pg_guard]
unsafe extern "C-unwind" fn executor_start(query: *mut pg_sys::QueryDesc, eflags: i32) {
    // SAFETY: the ExecutorStart_hook protocol.
    unsafe {
        match PREV_START {
            Some(prev) => prev(query, eflags),
            None => pg_sys::standard_ExecutorStart(query, eflags),
        }
        let explain_only = eflags & pg_sys::EXEC_FLAG_EXPLAIN_ONLY as i32 != 0;
        if collecting()
            && crate::guc::TRACK_ACTIVITY.get()
            && NESTING.with(|n| n.get()) == 0
            && !explain_only
        {
            // One timer for the whole statement, in the query's memory (as
            // pg_stat_statements does); never per node or row.
            if (*query).totaltime.is_null() {
                let old = pg_sys::MemoryContextSwitchTo((*(*query).estate).es_query_cxt);
                (*query).totaltime =
                    pg_sys::InstrAlloc(1, pg_sys::InstrumentOption::INSTRUMENT_TIMER as i32, false);
                pg_sys::MemoryContextSwitchTo(old);
            }
            let n = SEQ.with(|s| {
                s.set(s.get() + 1);
                s.get()
            });
            OPEN.with(|o| {
                o.borrow_mut().push(Open {
                    query: query as usize,
                    number: n,
                    tenant: None,
                })
            });
        }
    }
}

/// Run `f` one executor level deeper, as statement `query` when it is a top-level
/// one; the level and the current statement are restored on error too.
fn nested(query: *mut pg_sys::QueryDesc, f: impl FnOnce()) {
    let outer = CURRENT.with(|c| c.get());
    if NESTING.with(|n| n.get()) == 0 {
        if let Some(n) = number_of(query) {
            CURRENT.with(|c| c.set(n));
        }
    }
    NESTING.with(|n| n.set(n.get() + 1));
    PgTryBuilder::new(std::panic::AssertUnwindSafe(f))
        .finally(|| {
            NESTING.with(|n| n.set(n.get().saturating_sub(1)));
            CURRENT.with(|c| c.set(outer));
        })
        .execute();
}

/// ExecutorRun as PostgreSQL 15-17 call it (with `execute_once`).
#[cfg(not(feature = "pg18"))]
#[pg_guard]
unsafe extern "C-unwind" fn executor_run(
    query: *mut pg_sys::QueryDesc,
    direction: pg_sys::ScanDirection::Type,
    count: u64,
    execute_once: bool,
) {
    // SAFETY: the ExecutorRun_hook protocol.
    nested(query, || unsafe {
        match PREV_RUN {
            Some(prev) => prev(query, direction, count, execute_once),
            None => pg_sys::standard_ExecutorRun(query, direction, count, execute_once),
        }
    });
}

/// ExecutorRun as PostgreSQL 18 calls it (`execute_once` is gone).
#[cfg(feature = "pg18")]
#[pg_guard]
unsafe extern "C-unwind" fn executor_run(
    query: *mut pg_sys::QueryDesc,
    direction: pg_sys::ScanDirection::Type,
    count: u64,
) {
    // SAFETY: the ExecutorRun_hook protocol.
    nested(query, || unsafe {
        match PREV_RUN {
            Some(prev) => prev(query, direction, count),
            None => pg_sys::standard_ExecutorRun(query, direction, count),
        }
    });
}

#[pg_guard]
unsafe extern "C-unwind" fn executor_finish(query: *mut pg_sys::QueryDesc) {
    // SAFETY: the ExecutorFinish_hook protocol.
    nested(query, || unsafe {
        match PREV_FINISH {
            Some(prev) => prev(query),
            None => pg_sys::standard_ExecutorFinish(query),
        }
    });
}

#[pg_guard]
unsafe extern "C-unwind" fn executor_end(query: *mut pg_sys::QueryDesc) {
    // SAFETY: the ExecutorEnd_hook protocol; the query descriptor is valid until the
    // standard ExecutorEnd below frees its memory.
    unsafe {
        let open = OPEN.with(|o| {
            let mut o = o.borrow_mut();
            let i = o.iter().position(|e| e.query == query as usize)?;
            Some(o.remove(i))
        });
        if let (true, Some(Open { tenant, .. })) = (collecting(), open) {
            if !(*query).totaltime.is_null() {
                pg_sys::InstrEndLoop((*query).totaltime);
                let seconds = (*(*query).totaltime).total;
                let processed = (*(*query).estate).es_processed;
                let write = matches!(
                    (*query).operation,
                    pg_sys::CmdType::CMD_INSERT
                        | pg_sys::CmdType::CMD_UPDATE
                        | pg_sys::CmdType::CMD_DELETE
                ) || ((*query).operation == pg_sys::CmdType::CMD_SELECT
                    && (*(*query).plannedstmt).hasModifyingCTE);
                record(tenant.unwrap_or([0; 16]), processed, write, seconds * 1e6);
            }
        }
        match PREV_END {
            Some(prev) => prev(query),
            None => pg_sys::standard_ExecutorEnd(query),
        }
    }
}

fn record(tenant: [u8; 16], rows: u64, write: bool, us: f64) {
    // SAFETY: the shared struct exists (collecting() checked); every access to its
    // slots is under its LWLock; nothing in between can raise an ERROR.
    unsafe {
        let s = SHARED;
        pg_sys::LWLockAcquire((*s).lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        let slots = &mut (*s).slots;
        let idx = slots
            .iter()
            .position(|x| x.used && x.tenant == tenant)
            .or_else(|| slots.iter().position(|x| !x.used));
        match idx {
            Some(i) => {
                let slot = &mut slots[i];
                if !slot.used {
                    *slot = Slot {
                        used: true,
                        tenant,
                        statements: 0,
                        rows_read: 0,
                        rows_written: 0,
                        time_us: 0.0,
                    };
                }
                slot.statements += 1;
                if write {
                    slot.rows_written += rows;
                } else {
                    slot.rows_read += rows;
                }
                slot.time_us += us;
            }
            None => (*s).dropped += 1,
        }
        pg_sys::LWLockRelease((*s).lock);
    }
}

fn require_shared() -> *mut Shared {
    // SAFETY: reads a backend global set at startup.
    let s = unsafe { SHARED };
    if s.is_null() {
        raise_full(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "tenant activity is collected only when vital_tenancy is in shared_preload_libraries",
            None,
            Some("ALTER SYSTEM SET shared_preload_libraries = 'vital_tenancy' (keep the libraries already listed), then restart the server.".into()),
        );
    }
    s
}

/// Statements, rows read (returned by SELECTs), rows written and execution time per
/// tenant since the last reset; `tenant_id` NULL is statements without a tenant
/// context. For DBAs (EXECUTE granted to pg_read_all_stats).
#[pg_extern(volatile, parallel_safe)]
#[search_path(pg_catalog, pg_temp)]
fn tenant_activity() -> TableIterator<
    'static,
    (
        name!(tenant_id, Option<Uuid>),
        name!(statements, i64),
        name!(rows_read, i64),
        name!(rows_written, i64),
        name!(total_time_ms, f64),
        name!(since, pgrx::datum::TimestampWithTimeZone),
    ),
> {
    let s = require_shared();
    // SAFETY: a copy of the slots taken under the shared lock.
    let (slots, reset_at, dropped) = unsafe {
        pg_sys::LWLockAcquire((*s).lock, pg_sys::LWLockMode::LW_SHARED);
        let copy = (*s).slots;
        let at = (*s).reset_at;
        let dropped = (*s).dropped;
        pg_sys::LWLockRelease((*s).lock);
        (copy, at, dropped)
    };
    if dropped > 0 {
        ereport!(
            NOTICE,
            PgSqlErrorCode::ERRCODE_WARNING,
            format!("{dropped} statement(s) of tenants beyond the first {SLOTS} were not counted"),
            "vital_tenancy.tenant_activity_reset() frees the slots."
        );
    }
    // SAFETY: a TimestampTz datum from the shared struct.
    let since = unsafe {
        pgrx::datum::TimestampWithTimeZone::from_datum(pg_sys::Datum::from(reset_at), false)
    }
    .unwrap_or_else(|| {
        raise_full(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            "the activity reset time is not a timestamp",
            None,
            None,
        )
    });
    let mut rows: Vec<_> = slots
        .iter()
        .filter(|x| x.used)
        .map(|x| {
            (
                (x.tenant != [0; 16]).then(|| Uuid::from_bytes(x.tenant)),
                x.statements as i64,
                x.rows_read as i64,
                x.rows_written as i64,
                x.time_us / 1000.0,
                since,
            )
        })
        .collect();
    rows.sort_by(|a, b| b.4.total_cmp(&a.4));
    TableIterator::new(rows)
}

/// Forget the collected activity (every tenant); returns when the new period began.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn tenant_activity_reset() -> pgrx::datum::TimestampWithTimeZone {
    let s = require_shared();
    // SAFETY: writes to the shared struct under its lock.
    let at = unsafe {
        pg_sys::LWLockAcquire((*s).lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        for slot in (*s).slots.iter_mut() {
            slot.used = false;
        }
        (*s).dropped = 0;
        (*s).reset_at = pg_sys::GetCurrentTimestamp();
        let at = (*s).reset_at;
        pg_sys::LWLockRelease((*s).lock);
        at
    };
    // SAFETY: as in tenant_activity().
    unsafe { pgrx::datum::TimestampWithTimeZone::from_datum(pg_sys::Datum::from(at), false) }
        .unwrap_or_else(|| {
            raise_full(
                PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                "the activity reset time is not a timestamp",
                None,
                None,
            )
        })
}
