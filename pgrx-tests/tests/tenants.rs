//! The tenant registry on the real fixture, as a DBA and as an application role.

use vital_tenancy_e2e::{message, public_counts, sqlstate, FixtureDb};

const PLATFORM: &str = "00000000-0000-0000-0000-000000000001";
const DIGITAL: &str = "11111111-1111-1111-1111-111111111111";
const PHARMA: &str = "f7aa6fd4-0af9-4706-8b31-034f1f7accda";

fn tenants(c: &mut postgres::Client) -> Vec<(String, String, String)> {
    c.query(
        "SELECT id::text, name::text, slug::text FROM public.tenants ORDER BY id",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

#[test]
fn fixture_gets_three_tenants_and_second_run_is_a_no_op() {
    let db = FixtureDb::new("ensure");
    let mut c = db.dba();
    let before_counts = public_counts(&mut c);
    assert_eq!(
        tenants(&mut c).len(),
        2,
        "the fixture starts with two tenants"
    );

    c.batch_execute("CREATE EXTENSION vital_tenancy").unwrap();
    let rows = c
        .query(
            r#"SELECT tenant_id::text, action FROM vital_tenancy.ensure_tenants('public.tenants', '{"type": "industry"}')"#,
            &[],
        )
        .unwrap();
    let got: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        got,
        vec![
            (PLATFORM.into(), "name differs".into()),
            (DIGITAL.into(), "already present".into()),
            (PHARMA.into(), "created".into()),
        ]
    );
    let after = tenants(&mut c);
    assert_eq!(
        after,
        vec![
            (
                PLATFORM.into(),
                "VITAL Platform".into(),
                "vital-platform".into()
            ),
            (
                DIGITAL.into(),
                "Digital Health Startup".into(),
                "digital-health-startup".into()
            ),
            (
                PHARMA.into(),
                "Pharmaceuticals".into(),
                "pharmaceuticals".into()
            ),
        ]
    );
    let pharma_type: String = c
        .query_one(
            "SELECT type::text FROM public.tenants WHERE id = $1::text::uuid",
            &[&PHARMA],
        )
        .unwrap()
        .get(0);
    assert_eq!(pharma_type, "industry");

    // Second run: nothing created, nothing changed (xmin of every row unchanged).
    let xmins_before: Vec<String> = c
        .query("SELECT xmin::text FROM public.tenants ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let created: i64 = c
        .query_one(
            r#"SELECT count(*) FROM vital_tenancy.ensure_tenants('public.tenants', '{"type": "industry"}') WHERE action = 'created'"#,
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(created, 0);
    let xmins_after: Vec<String> = c
        .query("SELECT xmin::text FROM public.tenants ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(xmins_before, xmins_after);

    // Every other table is untouched.
    let after_counts: Vec<(String, i64)> = public_counts(&mut c)
        .into_iter()
        .map(|(t, n)| if t == "tenants" { (t, n - 1) } else { (t, n) })
        .collect();
    assert_eq!(before_counts, after_counts);
}

#[test]
fn bad_inputs_are_errors_with_sqlstates_and_change_nothing() {
    let db = FixtureDb::new("badinput");
    let mut c = db.dba();
    c.batch_execute(
        "CREATE EXTENSION vital_tenancy;
         CREATE SCHEMA bad;
         CREATE TABLE bad.no_slug (id uuid PRIMARY KEY, name text);
         CREATE TABLE bad.text_id (id text PRIMARY KEY, name text, slug text);
         CREATE VIEW bad.v AS SELECT * FROM public.tenants;
         CREATE TABLE bad.taken (id uuid PRIMARY KEY, name text, slug text UNIQUE);
         INSERT INTO bad.taken VALUES ('22222222-2222-2222-2222-222222222222', 'Other', 'platform');",
    )
    .unwrap();
    let cases: &[(&str, &str, &str)] = &[
        (
            "SELECT * FROM vital_tenancy.ensure_tenants('tenants')",
            "42602",
            "\"tenants\"",
        ),
        (
            "SELECT * FROM vital_tenancy.ensure_tenants('a.b.c')",
            "42602",
            "a.b.c",
        ),
        (
            "SELECT * FROM vital_tenancy.ensure_tenants(NULL)",
            "22004",
            "tenants_table",
        ),
        (
            "SELECT * FROM vital_tenancy.ensure_tenants('public.tenants', NULL)",
            "22004",
            "extra",
        ),
        (
            "SELECT * FROM vital_tenancy.ensure_tenants('nope.tenants')",
            "3F000",
            "\"nope\"",
        ),
        (
            "SELECT * FROM vital_tenancy.ensure_tenants('bad.no_slug')",
            "42703",
            "\"slug\"",
        ),
        (
            "SELECT * FROM vital_tenancy.ensure_tenants('bad.text_id')",
            "42804",
            "\"id\"",
        ),
        (
            "SELECT * FROM vital_tenancy.ensure_tenants('bad.v')",
            "42809",
            "view",
        ),
        (
            "SELECT * FROM vital_tenancy.ensure_tenants('bad.taken')",
            "23505",
            "\"platform\"",
        ),
        (
            "SELECT * FROM vital_tenancy.ensure_tenants('public.tenants')",
            "23502",
            "\"type\"",
        ),
        (
            r#"SELECT * FROM vital_tenancy.ensure_tenants('public.tenants', '{"type": "pharma"}')"#,
            "23514",
            "\"type\"",
        ),
        (
            r#"SELECT * FROM vital_tenancy.ensure_tenants('public.tenants', '"industry"')"#,
            "22023",
            "extra",
        ),
        (
            r#"SELECT * FROM vital_tenancy.ensure_tenants('public.tenants', '{"slug": "x"}')"#,
            "22023",
            "\"slug\"",
        ),
        (
            r#"SELECT * FROM vital_tenancy.ensure_tenants('public.tenants', '{"colour": "x"}')"#,
            "42703",
            "\"colour\"",
        ),
        (
            r#"SELECT * FROM vital_tenancy.ensure_tenants('public.tenants', '{"pharmaceuticals": 1}')"#,
            "22023",
            "\"pharmaceuticals\"",
        ),
    ];
    for (sql, code, culprit) in cases {
        let r = c.query(*sql, &[]);
        let msg = message(c.query(*sql, &[]));
        assert_eq!(sqlstate(r), *code, "{sql}: {msg}");
        assert!(
            msg.contains(culprit),
            "{sql}: message {msg:?} should name {culprit}"
        );
    }
    // Nothing changed anywhere, and no table was created by the failed calls.
    assert_eq!(tenants(&mut c).len(), 2);
    let taken: i64 = c
        .query_one("SELECT count(*) FROM bad.taken", &[])
        .unwrap()
        .get(0);
    assert_eq!(taken, 1);
    let settings: i64 = c
        .query_one("SELECT count(*) FROM vital_tenancy.settings", &[])
        .unwrap()
        .get(0);
    assert_eq!(settings, 0);
}

#[test]
fn application_role_uses_ids_but_not_ensure_tenants() {
    let db = FixtureDb::new("approle");
    let mut c = db.dba();
    c.batch_execute(&format!(
        "CREATE EXTENSION vital_tenancy;
         DO $$ BEGIN PERFORM pg_catalog.pg_advisory_xact_lock(74657374); -- roles are cluster-wide: one test at a time creates them
           IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'vt_e2e_app') THEN
             CREATE ROLE vt_e2e_app LOGIN;
           END IF;
         END $$;
         GRANT CONNECT ON DATABASE {} TO vt_e2e_app;
         GRANT USAGE ON SCHEMA public TO vt_e2e_app;
         GRANT SELECT ON public.tenants TO vt_e2e_app;",
        db.name
    ))
    .unwrap();
    let mut app = db.connect_as("vt_e2e_app");
    let ids: (String, String, String) = {
        let r = app
            .query_one(
                "SELECT vital_tenancy.platform_tenant_id()::text, vital_tenancy.digital_health_tenant_id()::text, vital_tenancy.pharma_tenant_id()::text",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!(ids, (PLATFORM.into(), DIGITAL.into(), PHARMA.into()));
    let r = app.query(
        r#"SELECT * FROM vital_tenancy.ensure_tenants('public.tenants', '{"type": "industry"}')"#,
        &[],
    );
    assert_eq!(sqlstate(r), "42501");
    assert_eq!(tenants(&mut c).len(), 2);
}

#[test]
fn concurrent_calls_create_each_tenant_once() {
    let db = FixtureDb::new("concurrent");
    db.dba()
        .batch_execute("CREATE EXTENSION vital_tenancy")
        .unwrap();
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let name = db.name.clone();
            std::thread::spawn(move || {
                let mut c = vital_tenancy_e2e::connect(&name, "postgres");
                c.query(
                    r#"SELECT action FROM vital_tenancy.ensure_tenants('public.tenants', '{"type": "industry"}') WHERE action = 'created'"#,
                    &[],
                )
                .unwrap()
                .len()
            })
        })
        .collect();
    let created: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(created, 1, "exactly one caller creates Pharmaceuticals");
    assert_eq!(tenants(&mut db.dba()).len(), 3);
}

/// F24: concurrent first calls, where the docs say calls may run concurrently: four
/// `ensure_tenants` on a tenants table that does not exist yet (one creates it, the
/// others wait and find it), then four `enable_tenant_rls` on one table (each
/// succeeds; the table is recorded once, with what it had before the first).
#[test]
fn concurrent_first_calls_of_ensure_tenants_and_enable_tenant_rls_all_succeed() {
    let db = FixtureDb::new("concurrent_first");
    db.dba()
        .batch_execute(
            "CREATE EXTENSION vital_tenancy; CREATE SCHEMA reg;
             CREATE TABLE public.vt_cr (id int PRIMARY KEY, tenant_id uuid);",
        )
        .unwrap();
    let all = |sql: &'static str| -> Vec<Result<(), String>> {
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(4));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let (name, barrier) = (db.name.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let mut c = vital_tenancy_e2e::connect(&name, "postgres");
                    barrier.wait();
                    c.batch_execute(sql).map_err(|e| e.to_string())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    };
    for round in 0..3 {
        if round > 0 {
            db.dba().batch_execute("DROP TABLE reg.tenants").unwrap();
        }
        let r = all("SELECT count(*) FROM vital_tenancy.ensure_tenants('reg.tenants', '{}')");
        assert!(
            r.iter().all(|x| x.is_ok()),
            "ensure_tenants round {round}: {r:?}"
        );
        let n: i64 = db
            .dba()
            .query_one("SELECT count(*) FROM reg.tenants", &[])
            .unwrap()
            .get(0);
        assert_eq!(n, 3);
    }
    db.dba()
        .batch_execute("SELECT count(*) FROM vital_tenancy.ensure_tenants('public.tenants', '{\"type\": \"industry\"}')")
        .unwrap();
    let r = all("SELECT count(*) FROM vital_tenancy.enable_tenant_rls('public.vt_cr')");
    assert!(r.iter().all(|x| x.is_ok()), "enable_tenant_rls: {r:?}");
    let row = db
        .dba()
        .query_one(
            "SELECT count(*), bool_and(NOT rls_was_enabled) FROM vital_tenancy.rls_tables WHERE tbl = 'public.vt_cr'::regclass",
            &[],
        )
        .unwrap();
    let (n, prior_off): (i64, bool) = (row.get(0), row.get(1));
    assert_eq!(
        (n, prior_off),
        (1, true),
        "recorded once, with the state before the first call"
    );
}

#[test]
fn drop_extension_keeps_application_data_and_pg_dump_keeps_config_rows() {
    let db = FixtureDb::new("dropdump");
    let mut c = db.dba();
    c.batch_execute(
        r#"CREATE EXTENSION vital_tenancy;
           SELECT * FROM vital_tenancy.ensure_tenants('public.tenants', '{"type": "industry"}');
           INSERT INTO vital_tenancy.tenant_members (user_id, tenant_id, role)
           VALUES ('aaaaaaaa-0000-4000-8000-000000000001', vital_tenancy.pharma_tenant_id(), 'admin');"#,
    )
    .unwrap();

    // pg_dump, then restore into a new database: the membership row comes back.
    let restored = format!("{}_restored", db.name);
    let host = std::env::var("VT_E2E_HOST").unwrap();
    let port = std::env::var("VT_E2E_PORT").unwrap();
    let psql = std::env::var("VT_PSQL").unwrap();
    let pg_dump = std::path::Path::new(&psql).with_file_name("pg_dump");
    let dump = std::process::Command::new(pg_dump)
        .args(["-h", &host, "-p", &port, "-U", "postgres", "-d", &db.name])
        .output()
        .unwrap();
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    let mut admin = vital_tenancy_e2e::connect("postgres", "postgres");
    admin
        .batch_execute(&format!("CREATE DATABASE {restored}"))
        .unwrap();
    let mut child = std::process::Command::new(&psql)
        .args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            &host,
            "-p",
            &port,
            "-U",
            "postgres",
            "-d",
            &restored,
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(&dump.stdout).unwrap();
    assert!(child.wait().unwrap().success(), "restoring the dump failed");
    {
        let mut r = vital_tenancy_e2e::connect(&restored, "postgres");
        let members: i64 = r
            .query_one(
                "SELECT count(*) FROM vital_tenancy.tenant_members WHERE role = 'admin'",
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(
            members, 1,
            "pg_dump keeps the extension's configuration rows"
        );
        let table: Option<String> = r
            .query_one("SELECT vital_tenancy.tenants_table()::text", &[])
            .unwrap()
            .get(0);
        assert_eq!(table.as_deref(), Some("tenants"));
    }
    admin
        .batch_execute(&format!("DROP DATABASE {restored} WITH (FORCE)"))
        .unwrap();

    // DROP EXTENSION removes every object of the extension, its schema included, and
    // nothing of the application's.
    let before = public_counts(&mut c);
    c.batch_execute("DROP EXTENSION vital_tenancy").unwrap();
    let left: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'vital_tenancy'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "DROP EXTENSION drops the schema vital_tenancy");
    assert_eq!(public_counts(&mut c), before);
    assert_eq!(tenants(&mut c).len(), 3);
}
