//! Faults and load around the backfill: `kill -9` of the backend mid-run, then the
//! same CALL again; concurrent application inserts and updates on the table being
//! backfilled. (kill -9 makes the whole cluster restart, so these tests take turns.)

use std::sync::Mutex;
use std::time::{Duration, Instant};
use vital_tenancy_e2e::{connect, FixtureDb};

static SERIAL: Mutex<()> = Mutex::new(());

/// Fixture + extension + tenants + `public.big_prompts`: `n` synthetic prompt rows
/// shaped like the fixture's (its prompts repeated), bigint keys, no tenant yet.
fn setup(tag: &str, copies: i32) -> (FixtureDb, postgres::Client, i64) {
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
                  p.created_by, NULL::uuid AS tenant_id, ''::text AS payload
             FROM public.prompts p CROSS JOIN generate_series(1, {copies}) g;
         ALTER TABLE public.big_prompts ADD PRIMARY KEY (id);
         CREATE SEQUENCE public.big_prompts_id_seq START 10000000;"
    ))
    .unwrap();
    let n: i64 = c
        .query_one("SELECT count(*) FROM public.big_prompts", &[])
        .unwrap()
        .get(0);
    c.query(
        "SELECT * FROM vital_tenancy.add_tenant_column('public.big_prompts')",
        &[],
    )
    .unwrap();
    (db, c, n)
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
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (db, _c, n) = setup("fault_kill", 40);
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
    drop(watch);
    let status = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let result = handle.join().unwrap();
    assert!(result.is_err(), "the killed CALL must not report success");

    // After crash recovery: what committed is consistent — journal = checkpoint = rows with a tenant.
    let mut c = wait_for_server(&db.name);
    let r = c
        .query_one(
            "SELECT s.rows_done, s.phase,
                    (SELECT count(*) FROM vital_tenancy.migration_journal j WHERE j.tbl = s.tbl),
                    (SELECT count(*) FROM public.big_prompts WHERE tenant_id IS NOT NULL)
               FROM vital_tenancy.migration_steps s WHERE s.tbl = 'public.big_prompts'::regclass",
            &[],
        )
        .unwrap();
    let (done, phase, journaled, assigned): (i64, String, i64, i64) =
        (r.get(0), r.get(1), r.get(2), r.get(3));
    assert_eq!(phase, "queue");
    assert!(done > 0 && done < n, "killed mid-run: {done} of {n}");
    assert_eq!(journaled, done, "journal and checkpoint commit together");
    assert_eq!(assigned, done);

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
}

#[test]
fn concurrent_inserts_and_updates_during_the_backfill_lose_nothing() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (db, mut c, n) = setup("fault_load", 20);
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
