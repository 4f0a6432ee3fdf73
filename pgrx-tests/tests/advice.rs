//! `query_advice()` on the real shape: the migrated fixture with its prompts copied to
//! 21,560 rows in their real tenant mix, the application's GET /api/prompts-crud and
//! knowledge search recorded in pg_stat_statements as PostgREST runs them (the service
//! role, the tenant in x-tenant-id); the advice verified with hypopg where it is
//! installed for this major, applied by `scripts/migrate --apply-advice` (a build that
//! a long transaction makes fail left invalid, then rebuilt), and what it says of
//! statements it cannot plan, of RLS-only index losses and of a statement planted to
//! run code in the DBA's session.

use postgres::Client;
use vital_tenancy_e2e::{migrate, postgrest, server_has_library, FixtureDb, DIGITAL, PHARMA};

/// PostgREST's statement for GET /api/prompts-crud?status=active with count=exact.
const GET: &str = r#"WITH pgrst_source AS (SELECT "public"."prompts"."id", "public"."prompts"."name", "public"."prompts"."display_name", "public"."prompts"."status", "public"."prompts"."created_at" FROM "public"."prompts" WHERE "public"."prompts"."status" = 'active' ORDER BY "public"."prompts"."created_at" DESC LIMIT 50 OFFSET 0), pgrst_source_count AS (SELECT 1 FROM "public"."prompts" WHERE "public"."prompts"."status" = 'active') SELECT (SELECT pg_catalog.count(*) FROM pgrst_source_count) AS total_result_set, pg_catalog.count(_postgrest_t) AS page_total, coalesce(json_agg(_postgrest_t), '[]') AS body FROM (SELECT * FROM pgrst_source) _postgrest_t"#;
const KNOWLEDGE: &str = r#"SELECT "public"."knowledge_base"."id", "public"."knowledge_base"."content" FROM "public"."knowledge_base" WHERE "public"."knowledge_base"."domain" = 'regulatory_affairs' AND "public"."knowledge_base"."is_active" = true ORDER BY "public"."knowledge_base"."created_at" DESC LIMIT 20"#;
const TAGS: &str = "SELECT id FROM public.prompts WHERE compliance_tags @> ARRAY['HIPAA']::text[]";

/// Roles and their memberships are cluster-wide, and two GRANTs of one membership at
/// once collide in pg_auth_members (an advisory lock is per database): one test at a
/// time sets them up.
static ROLES: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn setup(tag: &str) -> (FixtureDb, Client, bool) {
    let (db, mut dba) = FixtureDb::migrated(tag);
    let roles = ROLES.lock().unwrap_or_else(|e| e.into_inner());
    let hypopg = server_has_library("hypopg");
    if !hypopg {
        eprintln!("SKIPPED advice tests, their hypopg part: hypopg is not installed for this server (the advice is checked unverified)");
    }
    // Roles are cluster-wide: one test at a time creates them, in its own transaction.
    dba.batch_execute(
        "DO $$ BEGIN PERFORM pg_catalog.pg_advisory_xact_lock(74657374);
           IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'vt_adv_authenticator') THEN
             CREATE ROLE vt_adv_authenticator LOGIN NOINHERIT; END IF;
           IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'vt_adv_attacker') THEN
             CREATE ROLE vt_adv_attacker LOGIN; END IF;
           IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'vt_adv_monitor') THEN
             CREATE ROLE vt_adv_monitor LOGIN; END IF;
         END $$",
    )
    .unwrap();
    dba.batch_execute(&format!(
        "CREATE EXTENSION pg_stat_statements; {}
         GRANT vital_tenancy_service, vital_tenancy_context TO vt_adv_authenticator;
         GRANT authenticated TO vt_adv_attacker;
         -- Every prompt copied 19 times in its real shape (every column), keeping its tenant.
         CREATE TEMP TABLE src AS SELECT * FROM public.prompts;
         INSERT INTO public.prompts SELECT (pg_catalog.jsonb_populate_record(NULL::public.prompts, pg_catalog.to_jsonb(s)
                  || pg_catalog.jsonb_build_object('id', gen_random_uuid(), 'name', s.name || ' #' || g,
                                                   'created_at', s.created_at - g * interval '1 day'))).*
           FROM src s, generate_series(1, 19) g;",
        if hypopg { "CREATE EXTENSION hypopg;" } else { "" }
    ))
    .unwrap();
    drop(roles);
    dba.batch_execute("VACUUM ANALYZE public.prompts").unwrap();
    dba.batch_execute(
        "SELECT pg_stat_statements_reset(0, (SELECT oid FROM pg_database WHERE datname = current_database()), 0)",
    )
    .unwrap();
    (db, dba, hypopg)
}

/// The application's requests, as PostgREST runs them for each tenant.
fn workload(db: &FixtureDb, statements: &[&str]) {
    let mut api = db.connect_as("vt_adv_authenticator");
    for tenant in [PHARMA, DIGITAL] {
        for _ in 0..3 {
            for s in statements {
                postgrest(
                    &mut api,
                    "vital_tenancy_service",
                    r#"{"role": "vital_tenancy_service"}"#,
                    &format!(r#"{{"x-tenant-id": "{tenant}"}}"#),
                    true,
                    s,
                )
                .unwrap();
            }
        }
    }
}

struct Advice {
    kind: String,
    table: Option<String>,
    cost_before: Option<f64>,
    cost_after: Option<f64>,
    statements: String,
    why: String,
    ddl: Option<String>,
}

fn advice(c: &mut Client) -> Vec<Advice> {
    c.query(
        "SELECT kind, table_name, cost_before, cost_after, statements::text, why, ddl FROM vital_tenancy.query_advice()",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| Advice {
        kind: r.get(0),
        table: r.get(1),
        cost_before: r.get(2),
        cost_after: r.get(3),
        statements: r.get(4),
        why: r.get(5),
        ddl: r.get(6),
    })
    .collect()
}

fn coverage(c: &mut Client) -> f64 {
    c.query_one("SELECT vital_tenancy.query_coverage()", &[])
        .unwrap()
        .get::<_, Option<f64>>(0)
        .expect("coverage of recorded statements")
}

#[test]
fn advice_is_verified_applied_online_and_serves_the_applications_reads() {
    let (db, mut dba, hypopg) = setup("advice_apply");
    workload(&db, &[GET, KNOWLEDGE]);
    let before = coverage(&mut dba);
    assert!(
        before < 100.0,
        "the migrated schema scans prompts: {before}"
    );
    let rows = advice(&mut dba);
    let index: Vec<&Advice> = rows.iter().filter(|a| a.kind == "index").collect();
    let prompts: Vec<&&Advice> = index
        .iter()
        .filter(|a| a.table.as_deref() == Some("public.prompts"))
        .collect();
    assert!(
        !prompts.is_empty(),
        "an index for the GET: {:?}",
        rows.iter().map(|a| (&a.kind, &a.why)).collect::<Vec<_>>()
    );
    for a in &index {
        let ddl = a.ddl.as_deref().unwrap();
        assert!(
            ddl.starts_with("CREATE INDEX CONCURRENTLY IF NOT EXISTS "),
            "{ddl}"
        );
        assert!(ddl.contains(" ON public."), "schema-qualified: {ddl}");
        if hypopg {
            assert!(
                a.cost_after.unwrap() < a.cost_before.unwrap(),
                "verified cheaper: {}",
                a.why
            );
            assert!(a.why.contains("verified with hypopg"), "{}", a.why);
        } else {
            assert_eq!(a.cost_after, None);
            assert!(
                a.why.contains("not verified: hypopg is not installed"),
                "{}",
                a.why
            );
        }
    }
    assert!(
        prompts
            .iter()
            .any(|a| a.statements.contains("pgrst_source")),
        "the GET is among the statements served"
    );
    // A long transaction in the same database: the first build waits for it, times out,
    // and leaves its index invalid; the advice then drops it before building it again.
    let mut blocker = db.dba();
    blocker
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM public.tenants")
        .unwrap();
    let (ok, _, err) = migrate(
        &db.name,
        &["--apply-advice", "--lock-timeout", "300", "--retries", "0"],
    );
    assert!(!ok, "a build behind the long transaction fails: {err}");
    assert!(err.contains("lock_timeout (300 ms) reached"), "{err}");
    let invalid: i64 = dba
        .query_one(
            "SELECT count(*) FROM pg_index i JOIN pg_class x ON x.oid = i.indexrelid WHERE NOT i.indisvalid AND x.relname LIKE '%\\_vt\\_%idx'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(invalid >= 1, "the failed build left an invalid index");
    let rows = advice(&mut dba);
    let rebuild = rows
        .iter()
        .position(|a| a.kind == "rebuild")
        .expect("a rebuild row");
    assert!(rows[rebuild]
        .ddl
        .as_deref()
        .unwrap()
        .starts_with("DROP INDEX CONCURRENTLY IF EXISTS public."));
    assert_eq!(
        rows[rebuild + 1].kind,
        "index",
        "the drop comes right before its build"
    );
    blocker.batch_execute("COMMIT").unwrap();
    let (ok, _, err) = migrate(&db.name, &["--apply-advice"]);
    assert!(ok, "applied: {err}");
    let invalid: i64 = dba
        .query_one("SELECT count(*) FROM pg_index WHERE NOT indisvalid", &[])
        .unwrap()
        .get(0);
    assert_eq!(invalid, 0);
    // Resumable and idempotent: nothing left to build.
    let (ok, _, err) = migrate(&db.name, &["--apply-advice"]);
    assert!(ok && err.contains("nothing (more) to build"), "{err}");
    assert!(advice(&mut dba).iter().all(|a| a.ddl.is_none()));
    if hypopg {
        // The application's reads of tenant tables: no sequential scan left.
        workload(&db, &[GET, KNOWLEDGE]);
        let seq: Vec<String> = advice(&mut dba)
            .into_iter()
            .filter(|a| a.kind == "seq_scan")
            .map(|a| a.statements)
            .collect();
        assert!(seq.is_empty(), "still scanned: {seq:?}");
        assert_eq!(coverage(&mut dba), 100.0);
    }
    // health() and the report carry the coverage.
    let health: String = dba
        .query_one("SELECT (vital_tenancy.health() -> 'indexes')::text", &[])
        .unwrap()
        .get(0);
    assert!(health.contains("pg_stat_statements"), "{health}");
}

#[test]
fn advice_reports_what_it_cannot_plan_rls_only_losses_and_planted_code() {
    let (db, mut dba, _) = setup("advice_report");
    // A statement on a tenant table that is dropped afterwards.
    dba.batch_execute(
        "CREATE TABLE public.vt_gone (id bigint PRIMARY KEY, tenant_id uuid NOT NULL);
         GRANT SELECT ON public.vt_gone TO vital_tenancy_service;",
    )
    .unwrap();
    workload(&db, &[GET, TAGS, "SELECT count(*) FROM public.vt_gone"]);
    dba.batch_execute("DROP TABLE public.vt_gone").unwrap();
    // A statement planted by a tenant-side login whose function, folded by the planner,
    // runs in whatever session plans it: it must run as that login, never as the DBA.
    dba.batch_execute(
        "CREATE SCHEMA vt_attack AUTHORIZATION vt_adv_attacker;
         GRANT USAGE ON SCHEMA vt_attack TO PUBLIC;",
    )
    .unwrap();
    let mut attacker = db.connect_as("vt_adv_attacker");
    attacker
        .batch_execute(
            "CREATE FUNCTION vt_attack.evil() RETURNS text LANGUAGE plpgsql IMMUTABLE AS $$
             BEGIN
               IF session_user <> current_user THEN
                 RAISE EXCEPTION 'evil ran as % in the session of %', current_user, session_user;
               END IF;
               RETURN 'x';
             END $$;
             SELECT count(*) FROM public.prompts WHERE name = vt_attack.evil();",
        )
        .unwrap();
    let rows = advice(&mut dba);
    let why = |kind: &str, needle: &str| {
        rows.iter()
            .find(|a| a.kind == kind && (a.statements.contains(needle) || a.why.contains(needle)))
            .map(|a| a.why.clone())
    };
    let gone = why("not_planned", "vt_gone").expect("the dropped table's statement is reported");
    assert!(
        gone.contains("no longer plans") && gone.contains("vt_gone"),
        "{gone}"
    );
    let evil = why("not_planned", "evil").expect("the planted statement is reported");
    assert!(
        evil.contains("evil ran as vt_adv_attacker in the session of postgres"),
        "{evil}"
    );
    let leak = why("rls_leakproof", "compliance_tags")
        .expect("the tags filter loses its index only under RLS");
    assert!(
        leak.contains("@>") && leak.contains("idx_prompts_tags"),
        "{leak}"
    );
    assert!(
        leak.contains("do not mark the function LEAKPROOF"),
        "{leak}"
    );
    // The rest of the advice is there all the same.
    assert!(rows.iter().any(|a| a.kind == "index"));
    // The DBA's session is unchanged; nobody became anything.
    let (user, session): (String, String) = {
        let r = dba
            .query_one("SELECT current_user::text, session_user::text", &[])
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((user.as_str(), session.as_str()), ("postgres", "postgres"));
    let prepared: i64 = dba
        .query_one(
            "SELECT count(*) FROM pg_prepared_statements WHERE name LIKE 'vital_tenancy%'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(prepared, 0, "no prepared statement left behind");
    // A monitoring login granted the advice, every statement's text and the extension's
    // configuration, but not the application's roles: their statements are not planned as them, one row says so.
    dba.batch_execute(
        "GRANT pg_read_all_stats TO vt_adv_monitor;
         GRANT SELECT ON ALL TABLES IN SCHEMA vital_tenancy TO vt_adv_monitor;
         GRANT EXECUTE ON FUNCTION vital_tenancy.query_advice() TO vt_adv_monitor;",
    )
    .unwrap();
    let mut monitor = db.connect_as("vt_adv_monitor");
    let rows = advice(&mut monitor);
    let refused = rows
        .iter()
        .find(|a| a.kind == "not_planned" && a.why.contains("\"vital_tenancy_service\""))
        .expect("the service role's statements are reported, not planned");
    assert!(
        refused.why.contains("whose privileges you do not have"),
        "{}",
        refused.why
    );
    assert!(
        refused.statements.contains("pgrst_source"),
        "{}",
        refused.statements
    );
    assert!(
        rows.iter().all(|a| a.ddl.is_none()),
        "nothing planned, nothing proposed"
    );
    // Not for PUBLIC: a tenant-side login cannot read the workload through it.
    let err = attacker
        .query("SELECT * FROM vital_tenancy.query_advice()", &[])
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "42501");
    let err = attacker
        .query("SELECT vital_tenancy.query_coverage()", &[])
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "42501");
    // Without pg_stat_statements: a clear error, and health() falls back to table statistics.
    dba.batch_execute("DROP EXTENSION pg_stat_statements")
        .unwrap();
    let err = dba
        .query("SELECT * FROM vital_tenancy.query_advice()", &[])
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "55000");
    assert!(err
        .as_db_error()
        .unwrap()
        .message()
        .contains("pg_stat_statements"));
    let health: String = dba
        .query_one(
            "SELECT vital_tenancy.health() -> 'indexes' ->> 'source'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(health.starts_with("pg_stat_user_tables"), "{health}");
}
