//! The tenant context attacked the way real deployments are, on the migrated real
//! fixture, as non-superuser, non-owner roles:
//! 1. the error-vs-empty oracle: PostgREST-shaped anonymous and authenticated
//!    requests with every kind of bad context, comparing a filter that matches another
//!    tenant's secret row with one that matches nothing;
//! 2. pooled connections (a real PgBouncer in transaction mode) carrying one client's
//!    tenant to the next, and a concurrent run with misbehaving clients;
//! 3. untrusted login roles choosing a tenant through any source;
//! 4. the context cache outliving a statement or a rolled-back savepoint.

use postgres::Client;
use vital_tenancy_e2e::{
    literal, simple_rows, sqlstate, Bouncer, FixtureDb, DIGITAL, PHARMA, PLATFORM,
};

/// A Digital Health user (member of Digital Health only).
const DH_USER: &str = "aaaaaaaa-0000-4000-8000-0000000000d1";
const SECRET: &str = "pharma-secret-7f3a: Q3 trial readout";

/// The real fixture, migrated by the shipped migration; the login roles a deployment
/// has: PostgREST's NOINHERIT authenticator and an app backend (both trusted), and a
/// direct SQL login as an application role (untrusted); a Pharmaceuticals secret.
fn setup(tag: &str) -> (FixtureDb, Client) {
    let (db, mut c) = FixtureDb::migrated(tag);
    c.batch_execute(&format!(
        "DO $$ BEGIN PERFORM pg_catalog.pg_advisory_xact_lock(74657374); -- roles are cluster-wide: one test at a time creates them
           IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'vt_att_authenticator') THEN
             CREATE ROLE vt_att_authenticator LOGIN NOINHERIT; END IF;
           IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'vt_att_backend') THEN
             CREATE ROLE vt_att_backend LOGIN; END IF;
           IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'vt_att_direct') THEN
             CREATE ROLE vt_att_direct LOGIN; END IF;
         END $$;
         GRANT anon, authenticated TO vt_att_authenticator;
         GRANT vital_tenancy_context TO vt_att_authenticator, vt_att_backend;
         GRANT authenticated TO vt_att_backend, vt_att_direct;
         GRANT anon TO vt_att_direct;
         INSERT INTO vital_tenancy.tenant_members (user_id, tenant_id) VALUES ('{DH_USER}', '{DIGITAL}');
         INSERT INTO public.messages (role, content, tenant_id) VALUES ('user', {}, '{PHARMA}');",
        literal(SECRET)
    ))
    .unwrap();
    (db, c)
}

/// The outcome of one request: its rows, or its SQLSTATE.
type Outcome = Result<vital_tenancy_e2e::Rows, String>;

/// One PostgREST-shaped request (see `vital_tenancy_e2e::postgrest`), failures by SQLSTATE.
fn request(
    c: &mut Client,
    role: &str,
    claims: &str,
    headers: &str,
    pre_request: bool,
    query: &str,
) -> Outcome {
    vital_tenancy_e2e::postgrest(c, role, claims, headers, pre_request, query).map_err(|e| e.0)
}

/// Filters as PostgREST writes them for `?content=gte.X&content=lt.Y`: leakproof
/// text comparisons, which PostgreSQL evaluates before the RLS quals.
fn range(lo: &str, hi: &str) -> String {
    format!(
        "SELECT count(*) FROM public.messages WHERE content >= {} AND content < {}",
        literal(lo),
        literal(hi)
    )
}

#[test]
fn error_vs_empty_oracle_is_closed_for_every_bad_context() {
    let (db, _c) = setup("att_oracle");
    let mut pgrst = db.connect_as("vt_att_authenticator");
    let hit = range("pharma-secret-7f3a", "pharma-secret-7f3b");
    let miss = range("zzzz-nothing", "zzzz-nothinh");
    let hit_in = "SELECT count(*) FROM public.messages WHERE content IN ('pharma-secret-7f3a: Q3 trial readout')";
    let miss_in = "SELECT count(*) FROM public.messages WHERE content IN ('no such message')";
    let hit_upd = "UPDATE public.messages SET content = content WHERE content >= 'pharma-secret-7f3a' AND content < 'pharma-secret-7f3b' RETURNING id";
    let miss_upd =
        "UPDATE public.messages SET content = content WHERE content >= 'zzzz' RETURNING id";
    let sub = |extra: &str| format!(r#"{{"sub": "{DH_USER}", "role": "authenticated"{extra}}}"#);
    let hdr = |t: &str| format!(r#"{{"x-tenant-id": "{t}"}}"#);
    // (what, role, claims, headers, SQLSTATE that pre_request raises)
    let kinds: Vec<(&str, &str, String, String, &str)> = vec![
        (
            "anon with a tenant header and no user",
            "anon",
            r#"{"role": "anon"}"#.into(),
            hdr(PHARMA),
            "42501",
        ),
        (
            "anon with a malformed header",
            "anon",
            r#"{"role": "anon"}"#.into(),
            hdr("zzz"),
            "22P02",
        ),
        (
            "anon with a malformed claims JSON",
            "anon",
            "{oops".into(),
            "{}".into(),
            "22P02",
        ),
        (
            "anon with a malformed tenant claim",
            "anon",
            r#"{"role": "anon", "tenant_id": "nope"}"#.into(),
            "{}".into(),
            "22P02",
        ),
        (
            "anon with an unknown tenant claim",
            "anon",
            r#"{"role": "anon", "tenant_id": "99999999-9999-9999-9999-999999999999"}"#.into(),
            "{}".into(),
            "42704",
        ),
        (
            "user with a header for a tenant they do not belong to",
            "authenticated",
            sub(""),
            hdr(PHARMA),
            "42501",
        ),
        (
            "user with a header for an unknown tenant",
            "authenticated",
            sub(""),
            hdr("99999999-9999-9999-9999-999999999999"),
            "42501",
        ),
        (
            "user with a malformed sub",
            "authenticated",
            r#"{"sub": "bad", "role": "authenticated"}"#.into(),
            hdr(DIGITAL),
            "22P02",
        ),
        (
            "user with a non-string tenant claim",
            "authenticated",
            sub(r#", "tenant_id": 42"#),
            "{}".into(),
            "22P02",
        ),
    ];
    for (what, role, claims, headers, code) in &kinds {
        let mut pairs = vec![
            (hit.clone(), miss.clone()),
            (hit_in.to_string(), miss_in.to_string()),
        ];
        if *role == "authenticated" {
            pairs.push((hit_upd.to_string(), miss_upd.to_string()));
        }
        for (a, b) in &pairs {
            // Without the hook the query itself must not tell: no context, no rows.
            let oa = request(&mut pgrst, role, claims, headers, false, a);
            let ob = request(&mut pgrst, role, claims, headers, false, b);
            assert_eq!(oa, ob, "{what}: a filter matching another tenant's row must look like one matching nothing ({a})");
            assert!(
                oa.is_ok(),
                "{what}: inside policies a bad context is no context, got {oa:?}"
            );
            let rows = oa.unwrap();
            assert!(
                rows.iter()
                    .all(|r| r[0].as_deref() == Some("0") || r.is_empty()),
                "{what}: {rows:?}"
            );
            // With the hook, both fail the same way, before any row is read.
            let pa = request(&mut pgrst, role, claims, headers, true, a);
            let pb = request(&mut pgrst, role, claims, headers, true, b);
            assert_eq!(pa, pb, "{what}: pre_request outcome independent of data");
            assert_eq!(pa, Err(code.to_string()), "{what}");
        }
    }
    // The probe can tell a difference where there is one: a valid Pharmaceuticals
    // context sees its own secret (1) and nothing for the miss (0).
    let pharma = format!(r#"{{"role": "authenticated", "tenant_id": "{PHARMA}"}}"#);
    let own = request(&mut pgrst, "authenticated", &pharma, "{}", true, &hit).unwrap();
    let none = request(&mut pgrst, "authenticated", &pharma, "{}", true, &miss).unwrap();
    assert_eq!(
        (own[0][0].as_deref(), none[0][0].as_deref()),
        (Some("1"), Some("0"))
    );
    // A Digital Health user with a valid context: the Pharmaceuticals secret is invisible.
    let dh = request(
        &mut pgrst,
        "authenticated",
        &sub(""),
        &hdr(DIGITAL),
        true,
        &hit,
    )
    .unwrap();
    assert_eq!(dh[0][0].as_deref(), Some("0"));
}

fn count_prompts_by_tenant(c: &mut Client, prelude: &str) -> Vec<(String, String)> {
    c.batch_execute(&format!("BEGIN; {prelude} SET LOCAL ROLE authenticated"))
        .unwrap_or_else(|e| panic!("{prelude}: {e}"));
    let rows = simple_rows(
        c,
        "SELECT COALESCE(tenant_id::text, 'null'), count(*)::text FROM public.prompts GROUP BY 1 ORDER BY 1",
    )
    .unwrap();
    c.batch_execute("COMMIT").unwrap();
    rows.into_iter()
        .map(|r| {
            (
                r[0].clone().unwrap_or_default(),
                r[1].clone().unwrap_or_default(),
            )
        })
        .collect()
}

#[test]
fn a_pooled_connection_never_hands_a_tenant_to_the_next_client() {
    let (db, mut dba) = setup("att_pool");
    let bouncer = Bouncer::start(&db.name, &["vt_att_backend", "vt_att_authenticator"], 1);
    let pharma_claims = format!(r#"{{"tenant_id": "{PHARMA}", "role": "authenticated"}}"#);
    let leftovers = [
        format!("SET vital.tenant_id = '{PHARMA}'"),
        format!("SELECT set_config('vital.tenant_id', '{PHARMA}', false)"),
        format!("SET request.jwt.claims = {}", literal(&pharma_claims)),
        format!(
            "SELECT set_config('request.jwt.claims', {}, false), set_config('request.headers', {}, false)",
            literal(&format!(r#"{{"sub": "{DH_USER}"}}"#)),
            literal(&format!(r#"{{"x-tenant-id": "{DIGITAL}"}}"#))
        ),
    ];
    for leftover in &leftovers {
        // Client A leaves a session-level value on the only server connection.
        let mut a = bouncer.connect("vt_att_backend");
        a.batch_execute(leftover).unwrap();
        drop(a);
        // Client B, with no context of its own, gets the same server connection.
        let mut b = bouncer.connect("vt_att_backend");
        let seen = count_prompts_by_tenant(&mut b, "");
        assert!(
            seen.is_empty(),
            "after `{leftover}` the next client saw {seen:?}"
        );
        // Its own transaction-local tenant outranks the leftover.
        let seen = count_prompts_by_tenant(
            &mut b,
            &format!("SELECT vital_tenancy.set_tenant('{DIGITAL}');"),
        );
        let tenants: Vec<&str> = seen.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(tenants, vec![PLATFORM, DIGITAL], "after `{leftover}`");
        // pre_request() says so once, with a WARNING, and the request has no context.
        let r = simple_rows(&mut b, "BEGIN; SELECT vital_tenancy.pre_request(); SELECT vital_tenancy.current_tenant_id() IS NULL;");
        assert_eq!(r.unwrap()[1][0].as_deref(), Some("t"), "after `{leftover}`");
        b.batch_execute("COMMIT; RESET ALL").unwrap();
    }
    // Session state that is not a setting (issue 31, finding 6): a WITH HOLD cursor is
    // materialised under the first client's tenant at its commit, a temp table filled
    // under it, a temp view shadows a table the next client names; each outlives the
    // transaction on the server connection. The next client's request path fails
    // closed: set_tenant() and pre_request() refuse (55000), naming what was left.
    for (make, kind, done) in [
        (
            "DECLARE vt_hold CURSOR WITH HOLD FOR SELECT DISTINCT tenant_id::text FROM public.prompts",
            "WITH HOLD cursor vt_hold",
            "CLOSE vt_hold",
        ),
        (
            "CREATE TEMP TABLE vt_left AS SELECT DISTINCT tenant_id::text AS t FROM public.prompts",
            "temporary table vt_left",
            "DROP TABLE pg_temp.vt_left",
        ),
        (
            "CREATE TEMP VIEW prompts AS SELECT * FROM public.prompts",
            "temporary view prompts",
            "DROP VIEW pg_temp.prompts",
        ),
    ] {
        let mut a = bouncer.connect("vt_att_backend");
        a.batch_execute(&format!(
            "BEGIN; SELECT vital_tenancy.set_tenant('{PHARMA}'); SET LOCAL ROLE authenticated; {make}; COMMIT"
        ))
        .unwrap();
        drop(a);
        let mut b = bouncer.connect("vt_att_backend");
        for start in [
            format!("BEGIN; SELECT vital_tenancy.set_tenant('{DIGITAL}')"),
            format!(
                "BEGIN; SELECT set_config('role', 'authenticated', true), set_config('request.jwt.claims', {}, true); SELECT vital_tenancy.pre_request()",
                literal(&format!(r#"{{"role": "authenticated", "tenant_id": "{DIGITAL}"}}"#))
            ),
        ] {
            let e = b.batch_execute(&start).expect_err("the request must not start");
            let d = e.as_db_error().expect("a database error");
            assert_eq!(d.code().code(), "55000", "{make}: {}", d.message());
            assert!(
                d.message().contains(kind),
                "{make}: the refusal names it: {}",
                d.message()
            );
            b.batch_execute("ROLLBACK").unwrap();
        }
        // Once it is gone (what DISCARD ALL does between clients), requests start again.
        b.batch_execute(done).unwrap();
        let seen = count_prompts_by_tenant(
            &mut b,
            &format!("SELECT vital_tenancy.set_tenant('{DIGITAL}');"),
        );
        assert!(!seen.is_empty(), "{make}: after {done}");
    }
    drop(bouncer);
    // Startup options and role defaults outlive transactions too: not honoured, and
    // they do not outrank the request's own claims.
    let opts = format!(
        "host={} port={} user=vt_att_backend dbname={} options='-c vital.tenant_id={PHARMA}'",
        std::env::var("VT_E2E_HOST").unwrap(),
        std::env::var("VT_E2E_PORT").unwrap(),
        db.name
    );
    let mut c = Client::connect(&opts, postgres::NoTls).unwrap();
    assert!(
        count_prompts_by_tenant(&mut c, "").is_empty(),
        "PGOPTIONS tenant honoured"
    );
    let seen = count_prompts_by_tenant(
        &mut c,
        &format!(
            "SELECT set_config('request.jwt.claims', {}, true);",
            literal(&format!(r#"{{"tenant_id": "{DIGITAL}"}}"#))
        ),
    );
    let tenants: Vec<&str> = seen.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        tenants,
        vec![PLATFORM, DIGITAL],
        "verified claims outrank a startup option"
    );
    drop(c);
    dba.batch_execute(&format!(
        "ALTER ROLE vt_att_backend IN DATABASE {} SET vital.tenant_id = '{PHARMA}'",
        db.name
    ))
    .unwrap();
    let mut c = db.connect_as("vt_att_backend");
    assert!(
        count_prompts_by_tenant(&mut c, "").is_empty(),
        "ALTER ROLE ... SET tenant honoured"
    );
    drop(c);
    // The DBA's explicit opt-in for a dedicated connection per tenant honours it.
    dba.batch_execute(&format!(
        "ALTER ROLE vt_att_backend IN DATABASE {} SET vital_tenancy.session_context = on",
        db.name
    ))
    .unwrap();
    let mut c = db.connect_as("vt_att_backend");
    let seen = count_prompts_by_tenant(&mut c, "");
    let tenants: Vec<&str> = seen.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(tenants, vec![PLATFORM, PHARMA], "session_context = on");
    // ... which only a superuser can turn on.
    let r = c.batch_execute(
        "SET vital_tenancy.session_context = off; SET vital_tenancy.session_context = on",
    );
    assert_eq!(sqlstate(r), "42501");
    dba.batch_execute(&format!(
        "ALTER ROLE vt_att_backend IN DATABASE {} RESET ALL",
        db.name
    ))
    .unwrap();
}

#[test]
fn pg_stat_activity_shows_query_text_to_the_same_login_role_only() {
    // Not closed by the extension (README, security model): sessions of one login role
    // (PostgREST's authenticator) see each other's query text, literals included.
    let (db, mut dba) = setup("att_activity");
    let secret = "vt-activity-secret-4e1";
    let name = db.name.clone();
    let runner = std::thread::spawn(move || {
        let mut c = vital_tenancy_e2e::connect(&name, "vt_att_backend");
        c.batch_execute(&format!("SELECT pg_sleep(4), '{secret}'"))
            .unwrap();
    });
    // Wait (as the DBA) until the query runs, however slow the machine.
    let running = |dba: &mut Client| -> bool {
        let n: i64 = dba
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%vt-activity-secret%' AND pid <> pg_backend_pid()",
                &[],
            )
            .unwrap()
            .get(0);
        n > 0
    };
    for _ in 0..100 {
        if running(&mut dba) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(running(&mut dba), "the query never started");
    let look = |role: &str| -> Vec<String> {
        let mut c = db.connect_as(role);
        simple_rows(
            &mut c,
            "SELECT COALESCE(query, '') FROM pg_stat_activity WHERE usename = 'vt_att_backend' AND pid <> pg_backend_pid() AND query LIKE '%pg_sleep%'",
        )
        .unwrap()
        .into_iter()
        .map(|r| r[0].clone().unwrap_or_default())
        .collect()
    };
    let same = look("vt_att_backend");
    let other = look("vt_att_direct");
    runner.join().unwrap();
    assert!(
        same.iter().any(|q| q.contains(secret)),
        "same login role sees the text: {same:?}"
    );
    assert!(
        other.iter().all(|q| !q.contains(secret)),
        "another role does not: {other:?}"
    );
}

#[test]
fn concurrent_pooled_clients_never_see_another_tenant() {
    let (db, _c) = setup("att_pool_load");
    let bouncer = std::sync::Arc::new(Bouncer::start(
        &db.name,
        &["vt_att_backend", "vt_att_authenticator"],
        2,
    ));
    const ROUNDS: usize = 40;
    // (client kind, tenant it may see besides Platform; None: nothing at all)
    let clients: Vec<(&str, Option<&str>)> = vec![
        ("set_tenant", Some(DIGITAL)),
        ("set_tenant", Some(PHARMA)),
        ("claims", Some(DIGITAL)),
        ("claims", Some(PHARMA)),
        ("none", None),
        ("none", None),
        ("misbehaving", None),
    ];
    let mut handles = Vec::new();
    for (i, (kind, tenant)) in clients.into_iter().enumerate() {
        let bouncer = bouncer.clone();
        handles.push(std::thread::spawn(move || {
            let user = if kind == "claims" { "vt_att_authenticator" } else { "vt_att_backend" };
            let mut c = bouncer.connect(user);
            let (mut runs, mut violations) = (0usize, Vec::new());
            for round in 0..ROUNDS {
                let prelude = match (kind, tenant) {
                    ("set_tenant", Some(t)) => format!("SELECT vital_tenancy.set_tenant('{t}');"),
                    ("claims", Some(t)) => format!(
                        "SELECT set_config('request.jwt.claims', {}, true);",
                        literal(&format!(r#"{{"role": "authenticated", "tenant_id": "{t}"}}"#))
                    ),
                    ("misbehaving", _) => {
                        // Session-level values every other round, then a context-less read.
                        let t = if round % 2 == 0 { PHARMA } else { DIGITAL };
                        c.batch_execute(&format!("SET vital.tenant_id = '{t}'; SET request.jwt.claims = '{{\"tenant_id\": \"{t}\"}}'"))
                            .unwrap();
                        String::new()
                    }
                    _ => String::new(),
                };
                c.batch_execute(&format!("BEGIN; {prelude} SET LOCAL ROLE authenticated"))
                    .unwrap_or_else(|e| panic!("client {i}: {e}"));
                let rows = simple_rows(&mut c, "SELECT DISTINCT tenant_id::text FROM public.prompts")
                    .unwrap_or_else(|e| panic!("client {i}: {e}"));
                c.batch_execute("COMMIT").unwrap();
                runs += 1;
                let outside: Vec<String> = rows
                    .into_iter()
                    .filter_map(|r| r[0].clone())
                    .filter(|t| match tenant {
                        Some(own) => t != own && t != PLATFORM,
                        None => true,
                    })
                    .collect();
                if !outside.is_empty() {
                    violations.push(format!("client {i} ({kind}) round {round} saw {outside:?}"));
                }
            }
            (runs, violations)
        }));
    }
    let (mut runs, mut violations) = (0, Vec::new());
    for h in handles {
        let (r, v) = h.join().expect("client thread");
        runs += r;
        violations.extend(v);
    }
    eprintln!(
        "pooled transactions: {runs}, outside their tenant and Platform: {}",
        violations.len()
    );
    assert_eq!(runs, 7 * ROUNDS);
    assert!(
        violations.is_empty(),
        "{} of {runs} transactions saw another tenant: {:?}",
        violations.len(),
        &violations[..violations.len().min(5)]
    );
}

#[test]
fn only_trusted_login_roles_choose_a_tenant() {
    let (db, _c) = setup("att_trust");
    let mut direct = db.connect_as("vt_att_direct");
    // Before the library is loaded in this backend, vital.tenant_id is a placeholder
    // PostgreSQL cannot check; when the library loads (here: by the policies of the
    // query) the value is checked and dropped with a WARNING: no context.
    let rows = simple_rows(
        &mut direct,
        &format!("BEGIN; SET LOCAL vital.tenant_id = '{PHARMA}'; SET LOCAL ROLE authenticated; SELECT count(*) FROM public.prompts"),
    )
    .unwrap();
    assert_eq!(
        rows[0][0].as_deref(),
        Some("0"),
        "a placeholder tenant was honoured"
    );
    direct.batch_execute("ROLLBACK").unwrap();
    // Once loaded (or with session_preload_libraries), the setting is refused at SET time.
    for sql in [
        format!("BEGIN; SET LOCAL vital.tenant_id = '{PHARMA}'"),
        format!("BEGIN; SELECT set_config('vital.tenant_id', '{PHARMA}', true)"),
        format!("SET vital.tenant_id = '{PHARMA}'"),
        format!("BEGIN; SELECT vital_tenancy.set_tenant('{PHARMA}')"),
    ] {
        let r = direct.batch_execute(&sql);
        assert_eq!(sqlstate(r), "42501", "{sql}");
        let _ = direct.batch_execute("ROLLBACK");
    }
    // Clearing is always allowed.
    direct
        .batch_execute("BEGIN; SET LOCAL vital.tenant_id = ''; ROLLBACK")
        .unwrap();
    // Claims and headers an untrusted session sets count for nothing: no rows, and an
    // ERROR where the context is asked for.
    for role in ["anon", "authenticated"] {
        let claims = format!(r#"{{"role": "{role}", "tenant_id": "{PHARMA}"}}"#);
        let rows = request(
            &mut direct,
            role,
            &claims,
            "{}",
            false,
            "SELECT count(*) FROM public.prompts",
        )
        .unwrap();
        assert_eq!(
            rows[0][0].as_deref(),
            Some("0"),
            "{role} chose a tenant by claims"
        );
        let r = request(
            &mut direct,
            role,
            &claims,
            "{}",
            false,
            "SELECT vital_tenancy.current_tenant_id()",
        );
        assert_eq!(r, Err("42501".into()));
        let r = request(&mut direct, role, &claims, "{}", true, "SELECT 1");
        assert_eq!(r, Err("42501".into()));
        let hdr = format!(r#"{{"x-tenant-id": "{DIGITAL}"}}"#);
        let sub = format!(r#"{{"sub": "{DH_USER}", "role": "{role}"}}"#);
        let rows = request(
            &mut direct,
            role,
            &sub,
            &hdr,
            false,
            "SELECT count(*) FROM public.prompts",
        )
        .unwrap();
        assert_eq!(
            rows[0][0].as_deref(),
            Some("0"),
            "{role} chose a tenant by header"
        );
    }
    // The same claims through PostgREST's trusted authenticator work.
    let mut pgrst = db.connect_as("vt_att_authenticator");
    let claims = format!(r#"{{"role": "authenticated", "tenant_id": "{PHARMA}"}}"#);
    let rows = request(
        &mut pgrst,
        "authenticated",
        &claims,
        "{}",
        true,
        "SELECT count(DISTINCT tenant_id) FROM public.prompts",
    )
    .unwrap();
    assert_eq!(rows[0][0].as_deref(), Some("2"));
    // The registry of trusted roles is not writable by tenants.
    let r = direct.batch_execute("GRANT vital_tenancy_context TO vt_att_direct");
    assert_eq!(sqlstate(r), "42501");
}

#[test]
fn the_context_cache_lasts_one_statement_and_one_savepoint() {
    let (db, mut dba) = setup("att_cache");
    let mut pgrst = db.connect_as("vt_att_authenticator");
    let sub = format!(r#"{{"sub": "{DH_USER}", "role": "authenticated"}}"#);
    let hdr = format!(r#"{{"x-tenant-id": "{DIGITAL}"}}"#);
    let begin = format!(
        "BEGIN ISOLATION LEVEL READ COMMITTED READ ONLY;
         SELECT set_config('role', 'authenticated', true), set_config('request.jwt.claims', {}, true),
                set_config('request.headers', {}, true);
         SELECT vital_tenancy.pre_request();",
        literal(&sub),
        literal(&hdr)
    );
    let count = |c: &mut Client| -> String {
        simple_rows(c, "SELECT count(DISTINCT tenant_id) FROM public.prompts").unwrap()[0][0]
            .clone()
            .unwrap_or_default()
    };
    // A membership revoked by another session is seen by the next statement of a
    // read-only transaction.
    simple_rows(&mut pgrst, &begin).unwrap();
    assert_eq!(count(&mut pgrst), "2");
    dba.batch_execute(&format!(
        "DELETE FROM vital_tenancy.tenant_members WHERE user_id = '{DH_USER}'"
    ))
    .unwrap();
    assert_eq!(count(&mut pgrst), "0", "revoked membership still honoured");
    pgrst.batch_execute("ROLLBACK").unwrap();
    // A membership inserted and rolled back with ROLLBACK TO SAVEPOINT is forgotten.
    let mut owner = db.dba();
    owner
        .batch_execute(&format!(
            "BEGIN;
             SELECT set_config('request.jwt.claims', {}, true), set_config('request.headers', {}, true);
             SAVEPOINT s;
             INSERT INTO vital_tenancy.tenant_members (user_id, tenant_id) VALUES ('{DH_USER}', '{DIGITAL}');
             SET LOCAL ROLE authenticated;",
            literal(&sub),
            literal(&hdr)
        ))
        .unwrap();
    assert_eq!(count(&mut owner), "2");
    owner
        .batch_execute("ROLLBACK TO SAVEPOINT s; SET LOCAL ROLE authenticated")
        .unwrap();
    assert_eq!(
        count(&mut owner),
        "0",
        "rolled-back membership still honoured"
    );
    owner.batch_execute("ROLLBACK").unwrap();
}

/// Issue 31, finding 5: SQL that runs inside a PostgREST request as `authenticated`
/// (an RPC body with dynamic SQL, an injection) chose its own tenant: it set
/// `vital.tenant_id`, or switched to `vital_tenancy_service` (PostgreSQL checks the
/// login's membership) and named any tenant in a header. Each path, as a statement of
/// the request and from inside an RPC function, must read no other tenant's row.
#[test]
fn sql_inside_a_request_does_not_choose_its_tenant() {
    let (db, mut dba) = setup("att_inside");
    dba.batch_execute(
        "GRANT vital_tenancy_service TO vt_att_authenticator;
         CREATE FUNCTION public.vt_rpc(sql text) RETURNS bigint LANGUAGE plpgsql AS $f$
           DECLARE n bigint; BEGIN EXECUTE sql INTO n; RETURN n; END $f$;
         GRANT EXECUTE ON FUNCTION public.vt_rpc(text) TO authenticated;",
    )
    .unwrap();
    let mut pgrst = db.connect_as("vt_att_authenticator");
    let claims =
        format!(r#"{{"sub": "{DH_USER}", "role": "authenticated", "tenant_id": "{DIGITAL}"}}"#);
    let pharma_rows = format!("SELECT count(*) FROM public.messages WHERE tenant_id = '{PHARMA}'");
    let as_dh = |c: &mut Client, sql: &str| request(c, "authenticated", &claims, "{}", true, sql);
    // Control: the request sees Digital Health's rows, none of Pharmaceuticals'.
    let own = format!("SELECT count(*) FROM public.messages WHERE tenant_id = '{DIGITAL}'");
    let n_own = as_dh(&mut pgrst, &own).unwrap();
    assert_ne!(
        n_own,
        vec![vec![Some("0".to_string())]],
        "the control sees its own rows"
    );
    assert_eq!(
        as_dh(&mut pgrst, &pharma_rows),
        Ok(vec![vec![Some("0".into())]])
    );
    // 1. Setting the tenant itself: refused where it is set.
    for set in [
        format!("SET LOCAL vital.tenant_id = '{PHARMA}'"),
        format!("SELECT set_config('vital.tenant_id', '{PHARMA}', true)"),
        format!("SELECT vital_tenancy.set_tenant('{PHARMA}')"),
    ] {
        assert_eq!(
            as_dh(&mut pgrst, &format!("{set}; {pharma_rows}")),
            Err("42501".into()),
            "{set}"
        );
    }
    // 2. Claims or headers of its own choosing after pre_request(), or a role switch:
    // no context.
    for (what, sql) in [
        (
            "claims naming Pharmaceuticals",
            format!(
                "SELECT set_config('request.jwt.claims', '{{\"role\": \"authenticated\", \"tenant_id\": \"{PHARMA}\"}}', true)"
            ),
        ),
        (
            "a switch to the service role with a Pharmaceuticals header",
            format!(
                "SET LOCAL ROLE vital_tenancy_service; SELECT set_config('request.headers', '{{\"x-tenant-id\": \"{PHARMA}\"}}', true)"
            ),
        ),
        (
            "back to the login role, a tenant set there, and back to authenticated",
            format!(
                "RESET ROLE; SET LOCAL vital.tenant_id = '{PHARMA}'; SET LOCAL ROLE authenticated"
            ),
        ),
    ] {
        let rows = as_dh(&mut pgrst, &format!("{sql}; {pharma_rows}; {own}"));
        let rows = rows.unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(
            rows.iter().rev().take(2).cloned().collect::<Vec<_>>(),
            vec![vec![Some("0".to_string())], vec![Some("0".to_string())]],
            "{what}: no context at all (neither tenant's rows)"
        );
        // Read from inside an RPC function's dynamic SQL: the same.
        let rpc = format!("SELECT public.vt_rpc({})", literal(&pharma_rows));
        assert_eq!(
            as_dh(&mut pgrst, &format!("{sql}; {rpc}")).map(|r| r.last().cloned()),
            Ok(Some(vec![Some("0".to_string())])),
            "{what}, read inside an RPC"
        );
    }
    // 3. From inside an RPC body: the same refusals for the tenant setting.
    let rpc_set = format!(
        "SELECT public.vt_rpc({})",
        literal(&format!(
            "SELECT count(*) FROM (SELECT set_config('vital.tenant_id', '{PHARMA}', true)) s"
        ))
    );
    assert_eq!(as_dh(&mut pgrst, &rpc_set), Err("42501".into()));
    // 4. A second pre_request() with other values is refused.
    let again = format!(
        "SELECT set_config('request.jwt.claims', '{{\"role\": \"authenticated\", \"tenant_id\": \"{PHARMA}\"}}', true); SELECT vital_tenancy.pre_request()"
    );
    assert_eq!(as_dh(&mut pgrst, &again), Err("42501".into()));
    // The real request path still works after all of it (fresh transaction).
    assert_eq!(as_dh(&mut pgrst, &own).unwrap(), n_own);
}

/// Issue 31, finding 7: EXPLAIN ANALYZE counted the rows the policies hid ("Rows
/// Removed by Filter"), so an untrusted login that sees nothing extracted another
/// tenant's secret one bit per statement, and counted the registry. Refused now
/// (42501, the same for a filter that matches the secret and one that matches
/// nothing), from a connection's first statement where the library is preloaded.
#[test]
fn explain_analyze_tells_nothing_about_invisible_rows() {
    let (db, mut dba) = setup("att_explain");
    dba.batch_execute(&format!(
        "ALTER DATABASE {} SET session_preload_libraries = 'vital_tenancy'",
        db.name
    ))
    .unwrap();
    let explain = |filter: &str| {
        format!("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) SELECT count(*) FROM public.messages WHERE {filter}")
    };
    let hit = explain("content >= 'pharma-secret-7f3a' AND content < 'pharma-secret-7f3b'");
    let miss = explain("content >= 'zzzz-nothing' AND content < 'zzzz-nothinh'");
    let failure = |c: &mut Client, sql: &str| -> (String, String) {
        let e = c
            .batch_execute(sql)
            .expect_err("EXPLAIN ANALYZE must be refused");
        let d = e.as_db_error().expect("a database error");
        (d.code().code().to_string(), d.message().to_string())
    };
    // An untrusted direct login, first statement of its connection, then again.
    for first in [true, false] {
        let mut direct = db.connect_as("vt_att_direct");
        if !first {
            direct.batch_execute("SELECT 1").unwrap();
        }
        let a = failure(&mut direct, &hit);
        let b = failure(&mut direct, &miss);
        assert_eq!(a.0, "42501", "{}", a.1);
        assert_eq!(a, b, "the same refusal whatever the filter matches");
        let r = failure(
            &mut direct,
            "EXPLAIN (ANALYZE) SELECT count(*) FROM public.tenants",
        );
        assert_eq!(r.0, "42501", "the registry: {}", r.1);
    }
    // Inside a PostgREST-shaped request, as anon and as a signed-in user.
    let mut pgrst = db.connect_as("vt_att_authenticator");
    let claims =
        format!(r#"{{"sub": "{DH_USER}", "role": "authenticated", "tenant_id": "{DIGITAL}"}}"#);
    for (role, claims) in [
        ("anon", r#"{"role": "anon"}"#.to_string()),
        ("authenticated", claims),
    ] {
        assert_eq!(
            request(&mut pgrst, role, &claims, "{}", true, &hit),
            Err("42501".into()),
            "{role}"
        );
        // Plain EXPLAIN (no execution, no counts) still works.
        assert!(request(
            &mut pgrst,
            role,
            &claims,
            "{}",
            true,
            "EXPLAIN SELECT count(*) FROM public.messages"
        )
        .is_ok());
    }
    // The owner (here the superuser DBA) is not affected and sees the counts.
    let plan = simple_rows(&mut dba, &hit).unwrap();
    assert!(!plan.is_empty());
}
