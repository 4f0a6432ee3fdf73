//! Tenant lifecycle on the migrated real fixture, as an ordinary application role:
//! statuses honoured by the boundary, a fourth tenant onboarded, a tenant exported,
//! deleted and imported back, per-tenant activity and the documented pg_cron
//! schedules on a cluster that preloads both libraries.

use postgres::Client;
use vital_tenancy_e2e::{message, sqlstate, FixtureDb};

const PHARMA: &str = "f7aa6fd4-0af9-4706-8b31-034f1f7accda";
const DH: &str = "11111111-1111-1111-1111-111111111111";
const PLATFORM: &str = "00000000-0000-0000-0000-000000000001";

/// The migrated fixture, a table `public.lc_notes` under tenant RLS that the
/// application may write, and a LOGIN application role `vt_lc_app` (trusted to set
/// a tenant, member of `authenticated`, neither owner nor superuser).
fn setup(tag: &str) -> (FixtureDb, Client) {
    let (db, mut c) = FixtureDb::migrated(tag);
    notes_and_role(&mut c);
    (db, c)
}

fn notes_and_role(c: &mut Client) {
    c.batch_execute(
        "CREATE TABLE public.lc_notes (id bigserial PRIMARY KEY,
                tenant_id uuid NOT NULL DEFAULT vital_tenancy.current_tenant_id() REFERENCES public.tenants (id), body text);
         SELECT * FROM vital_tenancy.enable_tenant_rls('public.lc_notes');
         DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'vt_lc_app') THEN CREATE ROLE vt_lc_app LOGIN; END IF; END $$;
         GRANT vital_tenancy_context, authenticated TO vt_lc_app;
         GRANT SELECT, INSERT, UPDATE, DELETE ON public.lc_notes TO authenticated;
         GRANT USAGE ON SEQUENCE public.lc_notes_id_seq TO authenticated;
         INSERT INTO public.lc_notes (tenant_id, body) VALUES
           ('f7aa6fd4-0af9-4706-8b31-034f1f7accda', 'pharma'), ('11111111-1111-1111-1111-111111111111', 'dh'),
           ('00000000-0000-0000-0000-000000000001', 'platform');",
    )
    .unwrap();
}

/// What a request of `tenant` (SET LOCAL) sees and may do: (prompts visible, of them
/// Platform's, notes visible, insert outcome, rows its UPDATE of its own notes
/// touched).
fn probe(app: &mut Client, tenant: &str) -> (i64, i64, i64, String, u64) {
    let mut tx = app.transaction().unwrap();
    tx.batch_execute(&format!("SET LOCAL vital.tenant_id = '{tenant}'"))
        .unwrap();
    let r = tx
        .query_one(
            &format!("SELECT count(*), count(*) FILTER (WHERE tenant_id = '{PLATFORM}') FROM public.prompts"),
            &[],
        )
        .unwrap();
    let (prompts, platform): (i64, i64) = (r.get(0), r.get(1));
    let notes: i64 = tx
        .query_one("SELECT count(*) FROM public.lc_notes", &[])
        .unwrap()
        .get(0);
    let updated = tx
        .execute(
            &format!("UPDATE public.lc_notes SET body = body WHERE tenant_id = '{tenant}'"),
            &[],
        )
        .unwrap();
    tx.batch_execute("SAVEPOINT s").unwrap();
    let insert = match tx.execute("INSERT INTO public.lc_notes (body) VALUES ('new')", &[]) {
        Ok(n) => format!("inserted {n}"),
        Err(e) => e.code().map(|c| c.code().to_string()).unwrap_or_default(),
    };
    tx.rollback().unwrap();
    (prompts, platform, notes, insert, updated)
}

fn set_status(c: &mut Client, tenant: &str, status: &str) {
    c.execute(
        "UPDATE public.tenants SET status = $2 WHERE id = $1::text::uuid",
        &[&tenant, &status],
    )
    .unwrap();
}

#[test]
fn statuses_are_honoured_by_the_boundary_from_the_next_statement() {
    let (db, mut c) = setup("lc_status");
    let mut app = db.connect_as("vt_lc_app");
    // active: reads its own and Platform's rows, writes its own.
    let active = probe(&mut app, PHARMA);
    assert_eq!(active, (1071, 1026, 2, "inserted 1".into(), 1));

    // suspended and archived: reads as before, every write refused.
    for status in ["suspended", "archived"] {
        set_status(&mut c, PHARMA, status);
        assert_eq!(
            probe(&mut app, PHARMA),
            (1071, 1026, 2, "42501".into(), 0),
            "{status}"
        );
    }
    // pending and deleted: nothing visible, nothing writable; asking for the context
    // is a clear 42501 naming the status.
    for status in ["pending", "deleted"] {
        set_status(&mut c, PHARMA, status);
        assert_eq!(
            probe(&mut app, PHARMA),
            (0, 0, 0, "42501".into(), 0),
            "{status}"
        );
        let mut tx = app.transaction().unwrap();
        tx.batch_execute(&format!("SET LOCAL vital.tenant_id = '{PHARMA}'"))
            .unwrap();
        let e = tx
            .query_one("SELECT vital_tenancy.current_tenant_id()", &[])
            .unwrap_err();
        let db = e.as_db_error().unwrap();
        assert_eq!(db.code().code(), "42501");
        assert!(
            db.message()
                .contains(&format!("has status \"{status}\", which gives no access")),
            "{}",
            db.message()
        );
    }
    // The other tenant is untouched throughout.
    assert_eq!(probe(&mut app, DH).3, "inserted 1");

    // Effective from the next statement, inside one open transaction of the tenant.
    set_status(&mut c, PHARMA, "active");
    let mut tx = app.transaction().unwrap();
    tx.batch_execute(&format!("SET LOCAL vital.tenant_id = '{PHARMA}'"))
        .unwrap();
    tx.execute("INSERT INTO public.lc_notes (body) VALUES ('before')", &[])
        .unwrap();
    set_status(&mut c, PHARMA, "suspended");
    let r = tx.execute("INSERT INTO public.lc_notes (body) VALUES ('after')", &[]);
    assert_eq!(
        sqlstate(r),
        "42501",
        "the next statement sees the suspension"
    );
    drop(tx);

    // Platform's own status decides whether its rows are shared.
    set_status(&mut c, PHARMA, "active");
    set_status(&mut c, PLATFORM, "archived");
    assert_eq!(
        probe(&mut app, PHARMA).0,
        1071,
        "archived Platform is still read"
    );
    set_status(&mut c, PLATFORM, "pending");
    assert_eq!(
        probe(&mut app, PHARMA).0,
        45,
        "Platform with no access is not shared"
    );
    set_status(&mut c, PLATFORM, "active");

    // Overrides: a status of the DBA's own spelling, and a changed meaning.
    c.batch_execute("ALTER TABLE public.tenants DROP CONSTRAINT tenants_status_check")
        .unwrap();
    set_status(&mut c, PHARMA, "trial");
    assert_eq!(
        probe(&mut app, PHARMA).0,
        0,
        "an unknown status gives nothing"
    );
    let h: serde_json::Value = c
        .query_one("SELECT vital_tenancy.health()::text", &[])
        .map(|r| serde_json::from_str(&r.get::<_, String>(0)).unwrap())
        .unwrap();
    assert_eq!(h["tenants"]["status"], "degraded");
    let problems = h["tenants"]["problems"].to_string();
    assert!(
        problems.contains(PHARMA) && problems.contains("trial"),
        "{problems}"
    );
    let set: String = c
        .query_one(
            "SELECT vital_tenancy.set_status_access('trial', 'read-only')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(set, "read-only");
    assert_eq!(probe(&mut app, PHARMA).3, "42501");
    c.execute(
        "SELECT vital_tenancy.set_status_access('trial', 'read-write')",
        &[],
    )
    .unwrap();
    assert_eq!(probe(&mut app, PHARMA).3, "inserted 1");
    let h: String = c
        .query_one("SELECT vital_tenancy.health()->'tenants'->>'status'", &[])
        .unwrap()
        .get(0);
    assert_eq!(h, "healthy");
    let back: String = c
        .query_one("SELECT vital_tenancy.set_status_access('trial', NULL)", &[])
        .unwrap()
        .get(0);
    assert_eq!(back, "none");

    // A tenants table that keeps its status elsewhere.
    c.batch_execute(
        "ALTER TABLE public.tenants ADD COLUMN lifecycle text;
         UPDATE public.tenants SET lifecycle = 'live';
         UPDATE public.tenants SET lifecycle = 'frozen' WHERE id = 'f7aa6fd4-0af9-4706-8b31-034f1f7accda';
         SELECT vital_tenancy.set_status_column('lifecycle');
         SELECT vital_tenancy.set_status_access('live', 'read-write');
         SELECT vital_tenancy.set_status_access('frozen', 'read-only');",
    )
    .unwrap();
    assert_eq!(probe(&mut app, PHARMA), (1071, 1026, 2, "42501".into(), 0));
    assert_eq!(probe(&mut app, DH).3, "inserted 1");
    c.batch_execute("SELECT vital_tenancy.set_status_column(NULL)")
        .unwrap();
    assert_eq!(probe(&mut app, PHARMA).3, "inserted 1", "statuses off");

    // Bad input: an ERROR naming the culprit, nothing changed.
    for (sql, state, needle) in [
        (
            "SELECT vital_tenancy.set_status_access(NULL, 'none')",
            "22004",
            "status",
        ),
        (
            "SELECT vital_tenancy.set_status_access('active', 'all')",
            "22023",
            "\"all\"",
        ),
        (
            "SELECT vital_tenancy.set_status_column('no_such_column')",
            "42703",
            "no_such_column",
        ),
        (
            // cut to 63 bytes as PostgreSQL cuts identifiers, then looked up
            "SELECT vital_tenancy.set_status_column(repeat('x', 64))",
            "42703",
            "does not exist",
        ),
    ] {
        let m = message(c.query(sql, &[]));
        assert_eq!(sqlstate(c.query(sql, &[])), state, "{sql}");
        assert!(m.contains(needle), "{sql}: {m}");
    }
    let overrides: i64 = c
        .query_one(
            "SELECT count(*) FROM vital_tenancy.tenant_statuses WHERE status IN ('active')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(overrides, 0);
    // Without the library preloaded there is no activity to read.
    assert_eq!(
        sqlstate(c.query("SELECT * FROM vital_tenancy.tenant_activity()", &[])),
        "55000"
    );
}

#[test]
fn a_fourth_tenant_onboards_without_code_changes() {
    let (db, mut c) = setup("lc_onboard");
    let acme: String = c
        .query_one(
            "SELECT vital_tenancy.add_tenant('Acme Clinics', 'acme-clinics', '{\"type\": \"client\", \"domain\": \"acme.example\"}')::text",
            &[],
        )
        .unwrap()
        .get(0);
    let again: String = c
        .query_one(
            "SELECT vital_tenancy.add_tenant('Acme Clinics', 'acme-clinics', '{\"type\": \"client\"}')::text",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(acme, again, "a second call returns the tenant");
    let (status, access): (String, String) = c
        .query_one(
            "SELECT status, access FROM vital_tenancy.tenant_status() WHERE tenant_id = $1::text::uuid",
            &[&acme],
        )
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!((status.as_str(), access.as_str()), ("active", "read-write"));
    for (sql, state, needle) in [
        ("SELECT vital_tenancy.add_tenant('Beta', 'beta')", "23502", "\"type\""),
        ("SELECT vital_tenancy.add_tenant('Beta', 'beta', '{\"type\": \"hospital\"}')", "23514", "tenants_type_check"),
        ("SELECT vital_tenancy.add_tenant('Beta', 'beta', '{\"id\": \"x\"}')", "22023", "\"id\""),
        ("SELECT vital_tenancy.add_tenant('Beta', 'beta', '{\"colour\": 1}')", "42703", "colour"),
        ("SELECT vital_tenancy.add_tenant('Beta', 'acme-clinics', '{\"type\": \"client\"}', '99999999-9999-9999-9999-999999999999')", "23505", "acme-clinics"),
        ("SELECT vital_tenancy.add_tenant(NULL, 'beta')", "22004", "name"),
        ("SELECT vital_tenancy.add_tenant(' ', 'beta')", "22023", "name"),
        ("SELECT vital_tenancy.add_tenant('Beta', 'beta', '[1]')", "22023", "array"),
    ] {
        let m = message(c.query(sql, &[]));
        assert_eq!(sqlstate(c.query(sql, &[])), state, "{sql}: {m}");
        assert!(m.contains(needle), "{sql}: {m}");
    }
    let tenants: i64 = c
        .query_one("SELECT count(*) FROM public.tenants", &[])
        .unwrap()
        .get(0);
    assert_eq!(tenants, 4, "only Acme was added");

    // The new tenant works through every path without code changes: its writes get
    // its id by default, it reads its rows and Platform's, nobody else reads its.
    let mut app = db.connect_as("vt_lc_app");
    let acme_s = acme.clone();
    assert_eq!(
        probe(&mut app, &acme_s),
        (1026, 1026, 1, "inserted 1".into(), 0)
    );
    let mut tx = app.transaction().unwrap();
    tx.batch_execute(&format!(
        "SELECT set_config('request.jwt.claims', '{{\"tenant_id\": \"{acme}\"}}', true), vital_tenancy.pre_request()"
    ))
    .unwrap();
    tx.execute(
        "INSERT INTO public.lc_notes (body) VALUES ('acme note')",
        &[],
    )
    .unwrap();
    let owner: String = tx
        .query_one(
            "SELECT tenant_id::text FROM public.lc_notes WHERE body = 'acme note'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(owner, acme);
    tx.commit().unwrap();
    for other in [PHARMA, DH] {
        let mut tx = app.transaction().unwrap();
        tx.batch_execute(&format!("SELECT vital_tenancy.set_tenant('{other}')"))
            .unwrap();
        let n: i64 = tx
            .query_one(
                "SELECT count(*) FROM public.lc_notes WHERE tenant_id = $1::text::uuid",
                &[&acme],
            )
            .unwrap()
            .get(0);
        assert_eq!(n, 0, "{other} reads nothing of Acme");
        tx.rollback().unwrap();
    }
    // A classification rule may target it: set_rules checks its tenants against the
    // registry, and the classifier then assigns the new tenant.
    c.batch_execute(&format!(
        r#"SELECT vital_tenancy.set_rules('agent', '{{"rules": [{{"name": "acme", "tenant": "{acme}", "knowledge_domains_any": ["acme_care"]}}], "default_tenant": "{DH}"}}')"#
    ))
    .unwrap();
    let classified: String = c
        .query_one(
            "SELECT vital_tenancy.classify_agent_tenant(3, ARRAY['acme_care'])::text",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(classified, acme);
    c.batch_execute("SELECT vital_tenancy.reset_rules('agent')")
        .unwrap();
    // Health and usage name it.
    let h: serde_json::Value = c
        .query_one("SELECT vital_tenancy.health()::text", &[])
        .map(|r| serde_json::from_str(&r.get::<_, String>(0)).unwrap())
        .unwrap();
    assert_eq!(h["tenants"]["status"], "healthy");
    let listed = h["tenants"]["tenants"].as_array().unwrap();
    assert_eq!(listed.len(), 4);
    let entry = listed.iter().find(|t| t["id"] == acme_s).unwrap();
    assert_eq!(
        (entry["slug"].as_str(), entry["rows"].as_i64()),
        (Some("acme-clinics"), Some(1))
    );
    let usage: i64 = c
        .query_one(
            "SELECT COALESCE(sum(rows), 0)::bigint FROM vital_tenancy.tenant_usage() WHERE tenant = 'Acme Clinics'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(usage, 1);
}

/// md5 per tenant table (and the registry row) over one tenant's rows.
fn tenant_sums(c: &mut Client, tenant: &str) -> Vec<(String, i64, String)> {
    let tables: Vec<(String, String)> = c
        .query(
            "SELECT tbl::text, quote_ident(tenant_column) FROM vital_tenancy.rls_tables
             UNION ALL SELECT vital_tenancy.tenants_table()::text, 'id' ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    tables
        .into_iter()
        .map(|(t, col)| {
            let r = c
                .query_one(
                    &format!(
                        "SELECT count(*), COALESCE(md5(string_agg(to_jsonb(x)::text, '|' ORDER BY to_jsonb(x)::text)), '-')
                           FROM {t} x WHERE {col} = $1::text::uuid"
                    ),
                    &[&tenant],
                )
                .unwrap();
            (t, r.get(0), r.get(1))
        })
        .collect()
}

fn load_export(c: &mut Client, table: &str, data: &[u8]) {
    use std::io::Write;
    c.batch_execute(&format!(
        "CREATE TABLE {table} (table_name text, \"row\" jsonb)"
    ))
    .unwrap();
    let mut w = c.copy_in(&format!("COPY {table} FROM STDIN")).unwrap();
    w.write_all(data).unwrap();
    w.finish().unwrap();
}

#[test]
fn a_tenant_exported_deleted_and_imported_elsewhere_comes_back_row_for_row() {
    use std::io::Read;
    let (_a, mut a) = setup("lc_move_a");
    let (b_db, mut b) = setup("lc_move_b");
    let dh_a = tenant_sums(&mut a, DH);
    assert!(dh_a.iter().map(|x| x.1).sum::<i64>() > 200, "{dh_a:?}");
    let mut export = Vec::new();
    a.copy_out(&format!(
        "COPY (SELECT * FROM vital_tenancy.export_tenant('{DH}')) TO STDOUT"
    ))
    .unwrap()
    .read_to_end(&mut export)
    .unwrap();

    // Offboarding in B: dry run first (nothing changes), then for real.
    let others_before = (tenant_sums(&mut b, PHARMA), tenant_sums(&mut b, PLATFORM));
    let before = tenant_sums(&mut b, DH);
    b.batch_execute(&format!("CALL vital_tenancy.delete_tenant('{DH}')"))
        .unwrap();
    assert_eq!(tenant_sums(&mut b, DH), before, "a dry run changes nothing");
    // Interrupted: another session holds a parent table; the CALL gives up after the
    // batches of the tables before it committed, and the same CALL finishes later.
    let mut locker = b_db.dba();
    let mut lock_tx = locker.transaction().unwrap();
    lock_tx
        .batch_execute("LOCK TABLE public.agents IN SHARE MODE")
        .unwrap();
    b.batch_execute("SET statement_timeout = '3s'").unwrap();
    let r = b.batch_execute(&format!(
        "CALL vital_tenancy.delete_tenant('{DH}', dry_run => false, batch_size => 25)"
    ));
    assert_eq!(sqlstate(r), "57014");
    lock_tx.rollback().unwrap();
    b.batch_execute("RESET statement_timeout").unwrap();
    let partial: i64 = b
        .query_one(
            "SELECT COALESCE(sum(rows), 0)::bigint FROM vital_tenancy.tenant_deletions WHERE tenant = $1::text::uuid",
            &[&DH],
        )
        .unwrap()
        .get(0);
    assert!(partial > 0, "batches before the lock committed");
    b.batch_execute(&format!(
        "CALL vital_tenancy.delete_tenant('{DH}', dry_run => false, batch_size => 25)"
    ))
    .unwrap();
    let left: i64 = tenant_sums(&mut b, DH).iter().map(|x| x.1).sum();
    assert_eq!(left, 0, "nothing of the tenant is left");
    let (journaled, batches): (i64, i64) = b
        .query_one(
            "SELECT sum(rows)::bigint, count(*) FROM vital_tenancy.tenant_deletions WHERE tenant = $1::text::uuid",
            &[&DH],
        )
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(
        journaled,
        before.iter().map(|x| x.1).sum::<i64>(),
        "every row journaled once"
    );
    assert!(batches > 8, "in batches: {batches}");
    assert_eq!(
        (tenant_sums(&mut b, PHARMA), tenant_sums(&mut b, PLATFORM)),
        others_before,
        "other tenants untouched"
    );

    // The way back: import A's export into B; row for row what A has.
    load_export(&mut b, "public.dh_export", &export);
    let imported: Vec<(String, i64, i64)> = b
        .query(
            &format!("SELECT * FROM vital_tenancy.import_tenant('public.dh_export', '{DH}')"),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(imported[0].0, "public.tenants", "the registry row first");
    assert!(imported.iter().all(|(_, n, i)| n == i), "{imported:?}");
    assert_eq!(tenant_sums(&mut b, DH), dh_a, "row for row");
    let again: i64 = b
        .query_one(&format!("SELECT sum(inserted)::bigint FROM vital_tenancy.import_tenant('public.dh_export', '{DH}')"), &[])
        .unwrap()
        .get(0);
    assert_eq!(again, 0, "importing again inserts nothing");

    // Refusals, each changing nothing.
    b.batch_execute(
        "CREATE TABLE public.bad_shape (t text, r jsonb);
         CREATE TABLE public.bad_rows AS SELECT * FROM public.dh_export;
         INSERT INTO public.bad_rows VALUES ('public.nonexistent', '{}');",
    )
    .unwrap();
    for (sql, state, needle) in [
        (
            format!("CALL vital_tenancy.delete_tenant('{PLATFORM}', dry_run => false)"),
            "22023",
            "Platform",
        ),
        (
            "CALL vital_tenancy.delete_tenant(NULL)".to_string(),
            "22004",
            "tenant",
        ),
        (
            "CALL vital_tenancy.delete_tenant('99999999-9999-9999-9999-999999999999')".to_string(),
            "42704",
            "99999999",
        ),
        (
            format!("CALL vital_tenancy.delete_tenant('{DH}', batch_size => 0)"),
            "22023",
            "batch_size",
        ),
        (
            format!("SELECT * FROM vital_tenancy.import_tenant('public.dh_export', '{PHARMA}')"),
            "22023",
            "not tenant",
        ),
        (
            format!("SELECT * FROM vital_tenancy.import_tenant('public.bad_shape', '{DH}')"),
            "42809",
            "table_name text and row jsonb",
        ),
        (
            format!("SELECT * FROM vital_tenancy.import_tenant('public.bad_rows', '{DH}')"),
            "42P01",
            "public.nonexistent",
        ),
        (
            format!("SELECT * FROM vital_tenancy.import_tenant('public.dh_export', '{PLATFORM}')"),
            "22023",
            "Platform",
        ),
        (
            format!("SELECT * FROM vital_tenancy.import_tenant(NULL, '{DH}')"),
            "22004",
            "source",
        ),
    ] {
        let m = message(b.batch_execute(&sql).map(|_| ()));
        assert_eq!(
            sqlstate(b.batch_execute(&sql).map(|_| ())),
            state,
            "{sql}: {m}"
        );
        assert!(m.contains(needle), "{sql}: {m}");
    }
    assert_eq!(tenant_sums(&mut b, DH), dh_a);

    // Tenant tables whose foreign keys form a cycle: no children-first order exists,
    // so the plan (and the deletion) is refused, naming them.
    b.batch_execute(
        "CREATE TABLE public.lc_a (id int PRIMARY KEY, b_id int, tenant_id uuid NOT NULL);
         CREATE TABLE public.lc_b (id int PRIMARY KEY, a_id int REFERENCES public.lc_a (id), tenant_id uuid NOT NULL);
         ALTER TABLE public.lc_a ADD FOREIGN KEY (b_id) REFERENCES public.lc_b (id);",
    )
    .unwrap();
    let sql = format!("SELECT * FROM vital_tenancy.tenant_deletion_plan('{DH}')");
    let m = message(b.query(&sql, &[]));
    assert_eq!(sqlstate(b.query(&sql, &[])), "0A000", "{m}");
    assert!(
        m.contains("public.lc_a") && m.contains("public.lc_b"),
        "{m}"
    );
}

/// A cluster that preloads pg_cron and vital_tenancy (scripts/lib.sh's
/// vt_cluster_start with extra options), with the migrated fixture in `vt_day2`.
/// Stops the preloading cluster when the test ends, however it ends: a cluster left
/// running would keep an old build of the library loaded for the next run.
struct Day2Stop;

impl Drop for Day2Stop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("bash")
            .args([
                "-c",
                &format!("source scripts/lib.sh && vt_cluster_stop {}", day2_name()),
            ])
            .current_dir(vital_tenancy_e2e::repo_root())
            .output();
    }
}

/// Whether pg_cron is installed for the server under test (Debian packages it for 15).
fn pg_cron_installed() -> bool {
    vital_tenancy_e2e::server_has_library("pg_cron")
}

/// The preloading cluster's name: one per major (a data directory belongs to one).
fn day2_name() -> String {
    match std::env::var("VT_PG_MAJOR").ok().filter(|m| m != "15") {
        Some(m) => format!("day2-{m}"),
        None => "day2".to_string(),
    }
}

fn day2_cluster() -> (String, String) {
    let root = vital_tenancy_e2e::repo_root();
    let port = "54340";
    let name = day2_name();
    let opts = if pg_cron_installed() {
        "-c shared_preload_libraries=pg_cron,vital_tenancy -c cron.database_name=postgres \
         -c cron.use_background_workers=on -c max_worker_processes=16 -c cron.max_running_jobs=4"
    } else {
        "-c shared_preload_libraries=vital_tenancy"
    };
    let script = format!(
        "source scripts/lib.sh && vt_cluster_stop {name} && VT_PG_OPTS='{opts}' vt_cluster_start {name} {port} >/dev/null && \
         vt_fresh_fixture_db vt_day2 >/dev/null && \
         vt_psql -d vt_day2 -c 'CREATE EXTENSION vital_tenancy' >/dev/null && \
         PG_BIN=\"$VT_PG_BIN\" bash scripts/migrate \"host=$VT_HOST port=$VT_PORT user=postgres dbname=vt_day2\" --no-backup --report /tmp/vt-day2-report.md >/dev/null && \
         echo \"$VT_HOST\""
    );
    let out = std::process::Command::new("bash")
        .args(["-c", &script])
        .current_dir(&root)
        .env("VT_FIXTURE", std::env::var("VT_FIXTURE").unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "day2 cluster: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let host = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (host, port.to_string())
}

fn day2_connect(host: &str, port: &str, db: &str, user: &str) -> Client {
    Client::connect(
        &format!("host={host} port={port} user={user} dbname={db}"),
        postgres::NoTls,
    )
    .unwrap()
}

#[test]
fn activity_per_tenant_and_the_documented_cron_schedules_run() {
    let _stop = Day2Stop;
    let (host, port) = day2_cluster();
    let mut c = day2_connect(&host, &port, "vt_day2", "postgres");
    notes_and_role(&mut c);
    c.batch_execute(
        "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'vt_lc_nobody') THEN CREATE ROLE vt_lc_nobody LOGIN; END IF; END $$;",
    )
    .unwrap();
    let mut app = day2_connect(&host, &port, "vt_day2", "vt_lc_app");
    let mut nobody = day2_connect(&host, &port, "vt_day2", "vt_lc_nobody");
    assert_eq!(
        sqlstate(nobody.query("SELECT * FROM vital_tenancy.tenant_activity()", &[])),
        "42501",
        "activity is for DBAs"
    );
    c.batch_execute("SELECT vital_tenancy.tenant_activity_reset()")
        .unwrap();
    // Pharmaceuticals: 3 reads of its prompts (45 + Platform's 1,026 rows each);
    // Digital Health: 1 read (6 + 1,026) and one INSERT of 2 rows.
    for _ in 0..3 {
        let mut tx = app.transaction().unwrap();
        tx.batch_execute(&format!("SET LOCAL vital.tenant_id = '{PHARMA}'"))
            .unwrap();
        assert_eq!(
            tx.query("SELECT id FROM public.prompts", &[])
                .unwrap()
                .len(),
            1071
        );
        tx.commit().unwrap();
    }
    let mut tx = app.transaction().unwrap();
    tx.batch_execute(&format!("SET LOCAL vital.tenant_id = '{DH}'"))
        .unwrap();
    assert_eq!(
        tx.query("SELECT id FROM public.prompts", &[])
            .unwrap()
            .len(),
        1032
    );
    let n = tx
        .execute(
            "INSERT INTO public.lc_notes (body) VALUES ('a'), ('b')",
            &[],
        )
        .unwrap();
    assert_eq!(n, 2);
    tx.commit().unwrap();
    let rows: Vec<(Option<String>, i64, i64, i64, f64)> = c
        .query(
            "SELECT tenant_id::text, statements, rows_read, rows_written, total_time_ms FROM vital_tenancy.tenant_activity()",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect();
    let of = |t: &str| rows.iter().find(|r| r.0.as_deref() == Some(t)).cloned();
    let p = of(PHARMA).expect("Pharmaceuticals counted");
    assert_eq!((p.1, p.2, p.3), (3, 3 * 1071, 0), "{rows:?}");
    assert!(p.4 > 0.0);
    let d = of(DH).expect("Digital Health counted");
    assert_eq!((d.1, d.2, d.3), (2, 1032, 2), "{rows:?}");
    assert!(
        rows.iter().any(|r| r.0.is_none() && r.1 >= 1),
        "the DBA's own statements count without a tenant: {rows:?}"
    );

    // pg_cron: the schedules of docs/migration.md, in the application's database.
    if !pg_cron_installed() {
        eprintln!(
            "SKIPPED activity_per_tenant_and_the_documented_cron_schedules_run, its pg_cron part: pg_cron is not installed for this server (the activity part ran)"
        );
        return;
    }
    let mut cron = day2_connect(&host, &port, "postgres", "postgres");
    cron.batch_execute(
        "CREATE EXTENSION IF NOT EXISTS pg_cron;
         SELECT cron.unschedule(jobid) FROM cron.job WHERE jobname IN ('vital-validate', 'vital-health');
         DELETE FROM cron.job_run_details;",
    )
    .unwrap();
    c.batch_execute(
        "CREATE SCHEMA IF NOT EXISTS ops;
         CREATE TABLE IF NOT EXISTS ops.health_log (at timestamptz, doc jsonb);
         TRUNCATE ops.health_log;
         -- the planted problem: a message naming an agent that does not exist
         UPDATE public.messages SET agent_id = 'no-such-agent'
          WHERE id = (SELECT id FROM public.messages ORDER BY id LIMIT 1);",
    )
    .unwrap();
    cron.batch_execute(
        "SELECT cron.schedule_in_database('vital-validate', '* * * * *', 'SELECT vital_tenancy.assert_valid()', 'vt_day2');
         SELECT cron.schedule_in_database('vital-health', '* * * * *',
                $$INSERT INTO ops.health_log SELECT now(), vital_tenancy.health()$$, 'vt_day2');",
    )
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(150);
    let (mut validate, mut health) = (None, None);
    while std::time::Instant::now() < deadline && (validate.is_none() || health.is_none()) {
        std::thread::sleep(std::time::Duration::from_secs(3));
        for r in cron
            .query(
                "SELECT j.jobname, d.status, COALESCE(d.return_message, '') FROM cron.job_run_details d
                   JOIN cron.job j USING (jobid) WHERE d.status IN ('succeeded', 'failed')",
                &[],
            )
            .unwrap()
        {
            let (name, status, msg): (String, String, String) = (r.get(0), r.get(1), r.get(2));
            if name == "vital-validate" {
                validate = Some((status, msg));
            } else {
                health = Some((status, msg));
            }
        }
    }
    cron.batch_execute(
        "SELECT cron.unschedule(jobid) FROM cron.job WHERE jobname IN ('vital-validate', 'vital-health')",
    )
    .unwrap();
    let (vs, vm) = validate.expect("the validation job ran within 150 s");
    assert_eq!(vs, "failed", "{vm}");
    assert!(vm.contains("vital_tenancy validation failed"), "{vm}");
    let (hs, hm) = health.expect("the health job ran within 150 s");
    assert_eq!(hs, "succeeded", "{hm}");
    let logged: String = c
        .query_one(
            "SELECT doc->'referential_integrity'->>'status' FROM ops.health_log LIMIT 1",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        logged, "degraded",
        "the planted problem shows in the health log"
    );
}
