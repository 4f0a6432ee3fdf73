//! Memory of the set-returning functions and procedures that read a whole table is
//! bounded by a batch, not by the table (finding F01): the backend's anonymous memory
//! (RssAnon in /proc: shared buffers excluded) is sampled while each runs over two
//! million rows, and must stay under a bound that one batch fits in many times over
//! and the table does not (the rows read are ~400 MB as jsonb; before the fix an
//! export of them held 1 GB, a preview or backfill ~650 MB).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use vital_tenancy_e2e::FixtureDb;

const ROWS: i64 = 2_000_000;
const BOUND_KB: u64 = 64 * 1024;

fn rss_anon_kb(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("RssAnon:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// The highest RssAnon of the backend while `sql` runs on its own connection.
fn peak_while(db: &FixtureDb, sql: &str) -> u64 {
    let mut c = db.dba();
    c.batch_execute("SET client_min_messages = warning")
        .unwrap();
    let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let done = Arc::new(AtomicBool::new(false));
    let watch = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !done.load(Ordering::Relaxed) {
                peak = peak.max(rss_anon_kb(pid).unwrap_or(0));
                std::thread::sleep(Duration::from_millis(10));
            }
            peak
        })
    };
    c.batch_execute(sql).unwrap();
    done.store(true, Ordering::Relaxed);
    watch.join().unwrap()
}

#[test]
fn export_preview_and_backfill_stay_within_a_batch_of_memory() {
    if rss_anon_kb(std::process::id() as i32).is_none() {
        eprintln!("SKIPPED export_preview_and_backfill_stay_within_a_batch_of_memory: no /proc/<pid>/status here");
        return;
    }
    let db = FixtureDb::new("memory");
    let mut c = db.dba();
    c.batch_execute(&format!(
        r#"CREATE EXTENSION vital_tenancy;
           SELECT count(*) FROM vital_tenancy.ensure_tenants('public.tenants', '{{"type": "industry"}}');
           CREATE SCHEMA big;
           CREATE TABLE big.rows AS
             SELECT g AS id, 'name' || g AS name, 'general'::text AS domain, NULL::uuid AS created_by,
                    vital_tenancy.platform_tenant_id() AS tenant_id, repeat('p', 150) AS payload
               FROM generate_series(1, {ROWS}) g;
           ALTER TABLE big.rows ADD PRIMARY KEY (id);
           CREATE TABLE big.todo AS SELECT id, name, domain, created_by FROM big.rows;
           ALTER TABLE big.todo ADD PRIMARY KEY (id);"#
    ))
    .unwrap();
    for (what, sql) in [
        (
            "export_tenant",
            "SELECT count(*) FROM vital_tenancy.export_tenant(vital_tenancy.platform_tenant_id(), ARRAY['big'])",
        ),
        (
            "preview_classification",
            "SELECT count(*) FROM vital_tenancy.preview_classification('prompt', 'big.rows')",
        ),
        (
            "backfill (adds the column, records the rules)",
            "CALL vital_tenancy.backfill('big.todo', 'prompt', 20000, run_name => 'memory')",
        ),
    ] {
        let peak = peak_while(&db, sql);
        eprintln!("{what} over {ROWS} rows: backend RssAnon peak {} MB", peak / 1024);
        assert!(peak > 0, "{what}: no sample of the backend's memory");
        assert!(
            peak < BOUND_KB,
            "{what} over {ROWS} rows held {} MB (bound {} MB)",
            peak / 1024,
            BOUND_KB / 1024
        );
    }
    // The backfill did its work (so its memory figure is for a whole run).
    let left: i64 = c
        .query_one(
            "SELECT count(*) FROM big.todo WHERE tenant_id IS DISTINCT FROM vital_tenancy.platform_tenant_id()",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
}
