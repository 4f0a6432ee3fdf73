//! Faults and load around the backfill: `kill -9` of the backend mid-run, then the
//! same CALL again; concurrent application inserts and updates on the table being
//! backfilled. (kill -9 makes the whole cluster restart, so these tests take turns.)

use std::sync::Mutex;
use std::time::{Duration, Instant};
use vital_tenancy_e2e::{connect, FixtureDb};

static SERIAL: Mutex<()> = Mutex::new(());

/// Fixture + extension + tenants + `public.big_prompts`: `n` synthetic prompt rows
/// shaped like the fixture's (its prompts repeated), bigint keys, no tenant yet.
/// With `column`, the table already has its (nullable, all NULL) tenant column and
/// foreign key, so the backfill writes every row; without, the backfill adds the
/// column with the majority tenant in the catalog and writes only the other rows.
fn setup(tag: &str, copies: i32, column: bool) -> (FixtureDb, postgres::Client, i64) {
    let db = FixtureDb::new(tag);
    let mut c = db.dba();
    c.batch_execute("CREATE EXTENSION vital_tenancy").unwrap();
    c.query(
        r#"SELECT * FROM vital_tenancy.ensure_tenants('public.tenants', '{"type": "industry"}')"#,
        &[],
    )
    .unwrap();
    c.batch_execute(&format!(
        "CREATE TABLE public.big_prompts AS
           SELECT row_number() OVER ()::bigint AS id, p.name || '-' || g AS name, p.domain::text AS domain,
                  p.created_by, ''::text AS payload
             FROM public.prompts p CROSS JOIN generate_series(1, {copies}) g;
         ALTER TABLE public.big_prompts ADD PRIMARY KEY (id);
         CREATE SEQUENCE public.big_prompts_id_seq START 10000000;
         -- Where every row was before the backfill (an unrewritten row keeps both).
         CREATE TABLE public.big_prompts_before AS SELECT id, ctid::text AS tid, xmin::text AS txmin FROM public.big_prompts;"
    ))
    .unwrap();
    let n: i64 = c
        .query_one("SELECT count(*) FROM public.big_prompts", &[])
        .unwrap()
        .get(0);
    if column {
        c.query(
            "SELECT * FROM vital_tenancy.add_tenant_column('public.big_prompts')",
            &[],
        )
        .unwrap();
    }
    (db, c, n)
}

/// (rows the prompt rules send to the majority tenant, and of those the ones whose
/// tuple moved or was rewritten since `setup`).
fn majority_rewritten(c: &mut postgres::Client) -> (i64, i64) {
    let r = c
        .query_one(
            "WITH m AS (SELECT default_tenant FROM vital_tenancy.migration_steps WHERE tbl = 'public.big_prompts'::regclass)
             SELECT count(*), count(*) FILTER (WHERE p.ctid::text <> b.tid OR p.xmin::text <> b.txmin)
               FROM public.big_prompts p JOIN public.big_prompts_before b USING (id), m
              WHERE vital_tenancy.classify_prompt_tenant(p.name, p.domain, p.created_by, NULL) = m.default_tenant",
            &[],
        )
        .unwrap();
    (r.get(0), r.get(1))
}

/// Rows of big_prompts whose tenant is not the one the prompt rules give.
fn misclassified(c: &mut postgres::Client) -> i64 {
    c.query_one(
        "SELECT count(*) FROM public.big_prompts
          WHERE tenant_id IS DISTINCT FROM vital_tenancy.classify_prompt_tenant(name, domain, created_by, NULL)",
        &[],
    )
    .unwrap()
    .get(0)
}

fn wait_for_server(db: &str) -> postgres::Client {
    let start = Instant::now();
    loop {
        match postgres::Client::connect(
            &vital_tenancy_e2e::conninfo(db, "postgres"),
            postgres::NoTls,
        ) {
            Ok(c) => return c,
            Err(_) if start.elapsed() < Duration::from_secs(60) => {
                std::thread::sleep(Duration::from_millis(200))
            }
            Err(e) => panic!("the server did not come back after kill -9: {e}"),
        }
    }
}

#[test]
fn kill_9_mid_backfill_then_the_same_call_finishes_exactly_once() {
    kill_9_then_resume(true);
}

#[test]
fn kill_9_mid_backfill_of_a_column_it_added_then_the_same_call_finishes_exactly_once() {
    kill_9_then_resume(false);
}

fn kill_9_then_resume(column: bool) {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (db, _c, n) = setup(
        if column {
            "fault_kill"
        } else {
            "fault_kill_add"
        },
        40,
        column,
    );
    let mut worker = db.dba();
    let pid: i32 = worker
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    let call = "CALL vital_tenancy.backfill('public.big_prompts', 'prompt', batch_size => 500, sleep_ms => 30, run_name => 'faults')";
    let handle = std::thread::spawn(move || worker.batch_execute(call).map_err(|e| e.to_string()));

    // Wait until a few batches have committed, then kill the backend outright.
    let mut watch = db.dba();
    let start = Instant::now();
    loop {
        let done: Option<i64> = watch
            .query_opt("SELECT rows_done FROM vital_tenancy.migration_steps WHERE tbl = 'public.big_prompts'::regclass", &[])
            .unwrap()
            .map(|r| r.get(0));
        if done.unwrap_or(0) >= 3000 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the backfill made no progress"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The backfill commits asynchronously (synchronous_commit off): wait until what it
    // has committed so far is flushed, so that the kill lands after durable progress
    // (on a fast server the first batches are otherwise still in WAL buffers).
    let lsn: String = watch
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .unwrap()
        .get(0);
    while !watch
        .query_one(
            "SELECT pg_current_wal_flush_lsn() >= $1::text::pg_lsn",
            &[&lsn],
        )
        .unwrap()
        .get::<_, bool>(0)
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the WAL was not flushed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // `watch` stays open as a canary: the postmaster ends every backend when it
    // notices the killed one, and only then is a new connection one that survives.
    let status = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let result = handle.join().unwrap();
    assert!(result.is_err(), "the killed CALL must not report success");

    while watch.simple_query("SELECT 1").is_ok() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the postmaster did not restart after kill -9"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(watch);

    // After crash recovery: what committed is consistent — journal = checkpoint = rows with a tenant.
    let mut c = wait_for_server(&db.name);
    // (Rows past the checkpoint: without a column of its own, NULL; with the column
    // the backfill added, the catalog default, to be corrected when it resumes.)
    let r = c
        .query_one(
            "SELECT s.rows_done, s.phase,
                    (SELECT count(*) FROM vital_tenancy.migration_journal j WHERE j.tbl = s.tbl),
                    (SELECT count(*) FROM public.big_prompts WHERE tenant_id IS NOT NULL),
                    (SELECT count(*) FROM public.big_prompts p WHERE p.id <= s.last_key::bigint
                        AND p.tenant_id IS DISTINCT FROM vital_tenancy.classify_prompt_tenant(p.name, p.domain, p.created_by, NULL)),
                    s.default_tenant IS NOT NULL
               FROM vital_tenancy.migration_steps s WHERE s.tbl = 'public.big_prompts'::regclass",
            &[],
        )
        .unwrap();
    let (done, phase, journaled, assigned, wrong_before_checkpoint, defaulted): (
        i64,
        String,
        i64,
        i64,
        i64,
        bool,
    ) = (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5));
    assert_eq!(phase, "queue");
    assert!(done > 0 && done < n, "killed mid-run: {done} of {n}");
    assert_eq!(journaled, done, "journal and checkpoint commit together");
    assert_eq!(wrong_before_checkpoint, 0);
    assert_eq!(defaulted, !column);
    assert_eq!(assigned, if column { done } else { n });

    // The same CALL again resumes and finishes.
    c.batch_execute(call).unwrap();
    let r = c
        .query_one(
            "SELECT s.rows_done, s.rows_changed, s.phase,
                    (SELECT count(*) FROM vital_tenancy.migration_journal j WHERE j.tbl = s.tbl),
                    (SELECT count(DISTINCT key) FROM vital_tenancy.migration_journal j WHERE j.tbl = s.tbl),
                    (SELECT count(*) FROM public.big_prompts WHERE tenant_id IS NULL),
                    (SELECT count(*) FROM vital_tenancy.migration_steps WHERE tbl = s.tbl)
               FROM vital_tenancy.migration_steps s WHERE s.tbl = 'public.big_prompts'::regclass",
            &[],
        )
        .unwrap();
    let got: (i64, i64, String, i64, i64, i64, i64) = (
        r.get(0),
        r.get(1),
        r.get(2),
        r.get(3),
        r.get(4),
        r.get(5),
        r.get(6),
    );
    assert_eq!(
        got,
        (n, n, "done".to_string(), n, n, 0, 1),
        "every row assigned once, journaled once, one step"
    );
    // And assigned right.
    assert_eq!(misclassified(&mut c), 0);
    if !column {
        // Only the rows that classify away from the majority were written.
        let (majority, rewritten) = majority_rewritten(&mut c);
        assert!(majority > n / 2, "{majority} of {n}");
        assert_eq!(
            rewritten, 0,
            "rows left in the catalog default were rewritten"
        );
        let written: i64 = c
            .query_one("SELECT rows_rewritten FROM vital_tenancy.migration_steps WHERE tbl = 'public.big_prompts'::regclass", &[])
            .unwrap()
            .get(0);
        assert_eq!(written, n - majority);
    }
}

#[test]
fn concurrent_inserts_and_updates_during_the_backfill_lose_nothing() {
    concurrent_writers(true);
}

#[test]
fn concurrent_inserts_and_updates_while_the_backfill_adds_the_column_lose_nothing() {
    concurrent_writers(false);
}

fn concurrent_writers(column: bool) {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (db, mut c, n) = setup(
        if column {
            "fault_load"
        } else {
            "fault_load_add"
        },
        20,
        column,
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let stop = stop.clone();
            let name = db.name.clone();
            std::thread::spawn(move || {
                let mut app = connect(&name, "postgres");
                let (mut inserted, mut updates, mut max_wait) = (0i64, Vec::new(), Duration::ZERO);
                let mut i = 0i64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && i < 100_000 {
                    i += 1;
                    let t = Instant::now();
                    if i % 2 == 0 {
                        app.execute(
                            "INSERT INTO public.big_prompts (id, name, domain, payload)
                             VALUES (nextval('public.big_prompts_id_seq'), 'new PRISM ' || $1, 'general', 'w' || $1)",
                            &[&format!("{w}-{i}")],
                        )
                        .unwrap();
                        inserted += 1;
                    } else {
                        let id = 1 + (i * 7919 + w * 104_729) % n;
                        let marker = format!("w{w}-{i}");
                        app.execute("UPDATE public.big_prompts SET payload = $1 WHERE id = $2", &[&marker, &id]).unwrap();
                        updates.push((id, marker));
                    }
                    max_wait = max_wait.max(t.elapsed());
                }
                (inserted, updates, max_wait)
            })
        })
        .collect();
    c.batch_execute(
        "CALL vital_tenancy.backfill('public.big_prompts', 'prompt', batch_size => 1000, run_name => 'load')",
    )
    .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut inserted = 0;
    let mut last_update = std::collections::HashMap::new();
    let mut max_wait = Duration::ZERO;
    for h in writers {
        let (ins, ups, wait) = h.join().unwrap();
        inserted += ins;
        max_wait = max_wait.max(wait);
        for (id, marker) in ups {
            last_update.insert(
                (id, marker.split('-').next().unwrap_or("").to_string()),
                marker,
            );
        }
    }
    eprintln!("writers: {inserted} inserts, longest single write {max_wait:?} during the backfill");
    // Rows inserted after the catch-up pass are picked up by calling again.
    c.batch_execute("CALL vital_tenancy.backfill('public.big_prompts', 'prompt', batch_size => 1000, run_name => 'load')")
        .unwrap();
    let r = c
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE tenant_id IS NULL) FROM public.big_prompts",
            &[],
        )
        .unwrap();
    let (total, missing): (i64, i64) = (r.get(0), r.get(1));
    assert_eq!(total, n + inserted, "row counts add up");
    assert_eq!(missing, 0, "every row has a tenant");
    // No update was lost: each row a writer updated holds one of that writer's markers,
    // and rows updated by only one writer hold its last marker.
    let mut by_row: std::collections::HashMap<i64, Vec<String>> = std::collections::HashMap::new();
    for ((id, _), marker) in &last_update {
        by_row.entry(*id).or_default().push(marker.clone());
    }
    for (id, markers) in by_row {
        let payload: String = c
            .query_one(
                "SELECT payload FROM public.big_prompts WHERE id = $1",
                &[&id],
            )
            .unwrap()
            .get(0);
        assert!(
            markers.contains(&payload),
            "row {id}: payload {payload:?}, written {markers:?}"
        );
    }
    // New PRISM rows were classified like the rest.
    assert_eq!(misclassified(&mut c), 0);
}

#[test]
fn ddl_steps_wait_under_lock_timeout_retry_and_give_up_cleanly() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let db = FixtureDb::new("fault_lock");
    let mut c = db.dba();
    c.batch_execute("CREATE EXTENSION vital_tenancy").unwrap();
    // A long transaction holds a lock on prompts: ADD COLUMN cannot get its own.
    let mut holder = db.dba();
    holder
        .batch_execute("BEGIN; LOCK TABLE public.prompts IN ACCESS SHARE MODE")
        .unwrap();
    let start = Instant::now();
    let r = c.query("SELECT * FROM vital_tenancy.add_tenant_column('public.prompts', lock_timeout_ms => 100, retries => 2)", &[]);
    let msg = vital_tenancy_e2e::message(
        c.query("SELECT * FROM vital_tenancy.add_tenant_column('public.prompts', lock_timeout_ms => 100, retries => 0)", &[]),
    );
    assert_eq!(vital_tenancy_e2e::sqlstate(r), "55P03");
    assert!(
        msg.contains("public.prompts") && msg.contains("add column"),
        "{msg}"
    );
    assert!(start.elapsed() < Duration::from_secs(30));
    let has: bool = c
        .query_one("SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'public.prompts'::regclass AND attname = 'tenant_id')", &[])
        .unwrap()
        .get(0);
    assert!(!has, "a step that never got its lock changes nothing");
    // Released during the retries: the step succeeds, and the log shows the waits.
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(400));
        holder.batch_execute("COMMIT").unwrap();
    });
    let steps: Vec<String> = c
        .query("SELECT step FROM vital_tenancy.add_tenant_column('public.prompts', lock_timeout_ms => 100, retries => 20)", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    release.join().unwrap();
    assert_eq!(steps[0], "add column");
    let retried: i64 = c
        .query_one("SELECT count(*) FROM vital_tenancy.migration_log WHERE step LIKE 'add column (lock timeout, retrying)'", &[])
        .unwrap()
        .get(0);
    assert!(retried >= 1, "the retries are logged");
}

#[test]
fn enable_tenant_rls_behind_a_long_transaction_gives_up_instead_of_blocking_readers() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let db = FixtureDb::new("fault_rls_lock");
    let mut c = db.dba();
    c.batch_execute(
        "CREATE EXTENSION vital_tenancy;
         SELECT * FROM vital_tenancy.ensure_tenants('public.tenants', '{\"type\": \"industry\"}');
         CREATE TABLE public.lk (id int PRIMARY KEY, tenant_id uuid REFERENCES public.tenants (id));
         INSERT INTO public.lk VALUES (1, vital_tenancy.platform_tenant_id());",
    )
    .unwrap();
    // A transaction that read the table and stays open.
    let mut holder = db.dba();
    holder
        .batch_execute("BEGIN; SELECT * FROM public.lk")
        .unwrap();
    // A reader starts while enable_tenant_rls waits; it must not queue for long.
    let name = db.name.clone();
    let reader = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        let mut r = vital_tenancy_e2e::connect(&name, "postgres");
        let start = Instant::now();
        let n: i64 = r
            .query_one("SELECT count(*) FROM public.lk", &[])
            .unwrap()
            .get(0);
        (n, start.elapsed())
    });
    let start = Instant::now();
    let r = c.query(
        "SELECT * FROM vital_tenancy.enable_tenant_rls('public.lk')",
        &[],
    );
    let waited = start.elapsed();
    assert_eq!(vital_tenancy_e2e::sqlstate(r), "55P03");
    assert!(waited < Duration::from_secs(60), "gave up after {waited:?}");
    let (n, reader_waited) = reader.join().unwrap();
    assert_eq!(n, 1);
    // The reader queues at most one lock_timeout (2 s) behind an attempt, never for as
    // long as the holder's transaction.
    assert!(
        reader_waited < Duration::from_secs(5),
        "reader waited {reader_waited:?}"
    );
    // Nothing was done.
    let (rls, recorded): (bool, i64) = {
        let row = c
            .query_one("SELECT relrowsecurity, (SELECT count(*) FROM vital_tenancy.rls_tables) FROM pg_class WHERE oid = 'public.lk'::regclass", &[])
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!((rls, recorded), (false, 0));
    // Once the holder ends, it goes through.
    holder.batch_execute("COMMIT").unwrap();
    let actions = c
        .query(
            "SELECT * FROM vital_tenancy.enable_tenant_rls('public.lk')",
            &[],
        )
        .unwrap();
    assert!(!actions.is_empty());
}

/// The backfill's arguments and its bookkeeping (F04, F05, F14, F31): a tenant that
/// does not exist is refused before anything is recorded; an interrupted run resumes
/// only with its own arguments; two CALLs on one table never both write a batch.
#[test]
fn a_backfill_resumes_only_as_it_started_and_one_call_at_a_time_writes() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (db, mut c, n) = setup("fault_args", 10, false);
    let runs = |c: &mut postgres::Client| -> i64 {
        c.query_one("SELECT count(*) FROM vital_tenancy.migration_runs", &[])
            .unwrap()
            .get(0)
    };
    // F04: a tenant that is not one is refused, and no run, step or column is left.
    let r = c.batch_execute(
        r#"CALL vital_tenancy.backfill('public.big_prompts', 'tenant', options => '{"tenant": "99999999-9999-9999-9999-999999999999"}')"#,
    );
    assert_eq!(vital_tenancy_e2e::sqlstate(r), "23503");
    assert_eq!(runs(&mut c), 0);
    let col: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_attribute WHERE attrelid = 'public.big_prompts'::regclass AND attname = 'tenant_id'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(col, 0);

    // An interrupted run: cancelled after a few batches.
    let mut worker = db.dba();
    let pid: i32 = worker
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    let call = "CALL vital_tenancy.backfill('public.big_prompts', 'prompt', batch_size => 200, sleep_ms => 50, run_name => 'args')";
    let handle = std::thread::spawn(move || worker.batch_execute(call).map_err(|e| e.to_string()));
    let start = Instant::now();
    loop {
        let done: Option<i64> = c
            .query_opt("SELECT rows_done FROM vital_tenancy.migration_steps WHERE tbl = 'public.big_prompts'::regclass", &[])
            .unwrap()
            .map(|r| r.get(0));
        if done.unwrap_or(0) >= 1000 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    c.execute("SELECT pg_cancel_backend($1)", &[&pid]).unwrap();
    assert!(handle.join().unwrap().is_err());
    let state = |c: &mut postgres::Client| -> (i64, i64) {
        let r = c
            .query_one(
                "SELECT s.rows_done, (SELECT count(*) FROM vital_tenancy.migration_journal j WHERE j.tbl = s.tbl)
                   FROM vital_tenancy.migration_steps s WHERE s.tbl = 'public.big_prompts'::regclass",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    let interrupted = state(&mut c);

    // F05: another classifier, options or run name does not take over the run.
    for other in [
        "CALL vital_tenancy.backfill('public.big_prompts', 'platform', batch_size => 200, run_name => 'args')",
        "CALL vital_tenancy.backfill('public.big_prompts', 'prompt', batch_size => 200, run_name => 'other_name')",
    ] {
        let r = c.batch_execute(other);
        assert_eq!(vital_tenancy_e2e::sqlstate(r), "55000", "{other}");
        assert_eq!(state(&mut c), interrupted, "{other} changed the run");
    }

    // F31: two CALLs of the same run at once: batches are never done twice; the one
    // that finds the step moved on stops with 55006, the other finishes.
    let calls: Vec<_> = (0..2)
        .map(|_| {
            let mut w = db.dba();
            std::thread::spawn(move || {
                w.batch_execute("CALL vital_tenancy.backfill('public.big_prompts', 'prompt', batch_size => 200, sleep_ms => 10, run_name => 'args')")
                    .map_err(|e| e.as_db_error().map(|d| d.code().code().to_string()).unwrap_or_default())
            })
        })
        .collect();
    let results: Vec<Result<(), String>> = calls.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(results.iter().any(|r| r.is_ok()), "{results:?}");
    assert!(
        results
            .iter()
            .all(|r| r.is_ok() || r.as_ref().err().map(String::as_str) == Some("55006")),
        "{results:?}"
    );
    let r = c
        .query_one(
            "SELECT s.phase, s.rows_done, s.rows_changed,
                    (SELECT count(*) FROM vital_tenancy.migration_journal j WHERE j.tbl = s.tbl),
                    (SELECT count(DISTINCT key) FROM vital_tenancy.migration_journal j WHERE j.tbl = s.tbl),
                    (SELECT count(*) FROM vital_tenancy.migration_runs WHERE name = 'args')
               FROM vital_tenancy.migration_steps s WHERE s.tbl = 'public.big_prompts'::regclass",
            &[],
        )
        .unwrap();
    let got: (String, i64, i64, i64, i64, i64) =
        (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5));
    assert_eq!(got, ("done".to_string(), n, n, n, n, 1));
    assert_eq!(misclassified(&mut c), 0);

    // A CALL whose step another CALL moved on while it slept between batches stops with
    // 55006 before writing another batch (the step is advanced here by hand, as the other
    // CALL's commit would).
    c.batch_execute(
        "CREATE TABLE public.big_three AS SELECT id, name, domain, created_by FROM public.big_prompts;
         ALTER TABLE public.big_three ADD PRIMARY KEY (id);",
    )
    .unwrap();
    let mut w = db.dba();
    let slow = std::thread::spawn(move || {
        w.batch_execute("CALL vital_tenancy.backfill('public.big_three', 'prompt', batch_size => 500, sleep_ms => 3000, run_name => 'three')")
            .map_err(|e| e.as_db_error().map(|d| d.code().code().to_string()).unwrap_or_default())
    });
    let start = Instant::now();
    loop {
        let done: Option<i64> = c
            .query_opt("SELECT rows_done FROM vital_tenancy.migration_steps WHERE tbl = 'public.big_three'::regclass", &[])
            .unwrap()
            .map(|r| r.get(0));
        if done.unwrap_or(0) > 0 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    c.batch_execute("UPDATE vital_tenancy.migration_steps SET next_batch = next_batch + 1 WHERE tbl = 'public.big_three'::regclass")
        .unwrap();
    assert_eq!(slow.join().unwrap(), Err("55006".to_string()));
    let journaled: i64 = c
        .query_one("SELECT count(*) FROM vital_tenancy.migration_journal WHERE tbl = 'public.big_three'::regclass", &[])
        .unwrap()
        .get(0);
    assert_eq!(journaled, 500, "no batch after the step moved on");

    // Two runs of different names starting together on a table without its column: one
    // adds the column and backfills, the other waits and then is refused (55000) or finds
    // nothing to do; no row is journaled twice.
    c.batch_execute(
        "CREATE TABLE public.big_two AS SELECT id, name, domain, created_by FROM public.big_prompts;
         ALTER TABLE public.big_two ADD PRIMARY KEY (id);",
    )
    .unwrap();
    let calls: Vec<_> = ["two_a", "two_b"]
        .into_iter()
        .map(|run| {
            let mut w = db.dba();
            std::thread::spawn(move || {
                w.batch_execute(&format!(
                    "CALL vital_tenancy.backfill('public.big_two', 'prompt', batch_size => 500, run_name => '{run}')"
                ))
                .map_err(|e| e.as_db_error().map(|d| d.code().code().to_string()).unwrap_or_default())
            })
        })
        .collect();
    let results: Vec<Result<(), String>> = calls.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(
        results
            .iter()
            .all(|r| r.is_ok() || r.as_ref().err().map(String::as_str) == Some("55000")),
        "{results:?}"
    );
    let r = c
        .query_one(
            "SELECT (SELECT count(*) FROM vital_tenancy.migration_steps WHERE tbl = 'public.big_two'::regclass),
                    (SELECT count(*) FROM vital_tenancy.migration_journal WHERE tbl = 'public.big_two'::regclass),
                    (SELECT count(DISTINCT key) FROM vital_tenancy.migration_journal WHERE tbl = 'public.big_two'::regclass),
                    (SELECT count(*) FROM public.big_two WHERE tenant_id IS NULL)",
            &[],
        )
        .unwrap();
    let two: (i64, i64, i64, i64) = (r.get(0), r.get(1), r.get(2), r.get(3));
    assert_eq!(two, (1, n, n, 0), "one step, every row journaled once");
}
