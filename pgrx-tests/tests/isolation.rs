//! Tenant isolation, proven as an ordinary non-owner login role on the real fixture:
//! the matrix 3 tenants × SELECT/INSERT/UPDATE/DELETE × own / other / Platform rows,
//! on a table whose own policies say USING (true) (messages) and on one without
//! policies; then the edges: no context, empty and malformed settings, a spoofed
//! header, JWT claims, views, COPY, a role that owns nothing, a malicious search_path,
//! and the platform-admin role.

use postgres::Client;
use vital_tenancy_e2e::{message, sqlstate, FixtureDb, DIGITAL, PHARMA, PLATFORM};

const TENANTS: [&str; 3] = [PLATFORM, DIGITAL, PHARMA];
const USER: &str = "aaaaaaaa-0000-4000-8000-000000000001";

/// Fixture + extension + tenants; messages and a new table `notes` under tenant RLS,
/// each with one row per tenant; login role `vt_iso_app` with table privileges only.
fn setup(tag: &str) -> (FixtureDb, Client) {
    let db = FixtureDb::new(tag);
    let mut c = db.dba();
    for sql in [
        "CREATE EXTENSION vital_tenancy",
        r#"SELECT * FROM vital_tenancy.ensure_tenants('public.tenants', '{"type": "industry"}')"#,
        "ALTER TABLE public.messages ADD COLUMN tenant_id uuid REFERENCES public.tenants (id)",
        "DELETE FROM public.messages",
        "CREATE TABLE public.notes (id bigserial PRIMARY KEY, tenant_id uuid NOT NULL REFERENCES public.tenants (id), body text)",
        "SELECT * FROM vital_tenancy.enable_tenant_rls('public.messages')",
        "SELECT * FROM vital_tenancy.enable_tenant_rls('public.notes')",
        "DO $$ BEGIN PERFORM pg_catalog.pg_advisory_xact_lock(74657374); -- roles are cluster-wide: one test at a time creates them
           IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'vt_iso_app') THEN CREATE ROLE vt_iso_app LOGIN; END IF;
           IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'vt_iso_nobody') THEN CREATE ROLE vt_iso_nobody LOGIN; END IF;
           IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'vt_iso_admin') THEN CREATE ROLE vt_iso_admin LOGIN IN ROLE vital_tenancy_admin; END IF;
         END $$",
        "GRANT USAGE ON SCHEMA public TO vt_iso_app, vt_iso_admin",
        // The app backend's login role is trusted to choose a tenant.
        "GRANT vital_tenancy_context TO vt_iso_app, vt_iso_admin",
        "GRANT SELECT, INSERT, UPDATE, DELETE ON public.messages, public.notes TO vt_iso_app, vt_iso_admin",
        "GRANT USAGE ON SEQUENCE public.notes_id_seq TO vt_iso_app, vt_iso_admin",
    ] {
        c.batch_execute(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    for t in TENANTS {
        c.execute(
            "INSERT INTO public.messages (role, content, tenant_id) VALUES ('user', $1, $1::text::uuid)",
            &[&t],
        )
        .unwrap();
        c.execute(
            "INSERT INTO public.notes (body, tenant_id) VALUES ($1, $1::text::uuid)",
            &[&t],
        )
        .unwrap();
    }
    (db, c)
}

fn in_tenant<T>(
    app: &mut Client,
    tenant: &str,
    f: impl FnOnce(&mut postgres::Transaction<'_>) -> T,
) -> T {
    let mut tx = app.transaction().unwrap();
    tx.execute(
        "SELECT vital_tenancy.set_tenant($1::text::uuid)",
        &[&tenant],
    )
    .unwrap_or_else(|e| panic!("set_tenant({tenant}): {e:?}"));
    let out = f(&mut tx);
    tx.rollback().unwrap();
    out
}

#[test]
fn matrix_tenants_by_commands_by_row_owner() {
    let (db, _c) = setup("iso_matrix");
    let mut app = db.connect_as("vt_iso_app");
    for table in ["public.messages", "public.notes"] {
        for me in TENANTS {
            for owner in TENANTS {
                let own = owner == me;
                let platform_row = owner == PLATFORM;
                // SELECT: own rows and Platform's shared rows; never another tenant's.
                let seen: i64 = in_tenant(&mut app, me, |tx| {
                    tx.query_one(
                        &format!("SELECT count(*) FROM {table} WHERE tenant_id = $1::text::uuid"),
                        &[&owner],
                    )
                    .unwrap()
                    .get(0)
                });
                assert_eq!(
                    seen,
                    i64::from(own || platform_row),
                    "{table}: {me} SELECT rows of {owner}"
                );
                // UPDATE / DELETE: own rows only (Platform rows are read-only to tenants).
                let updated = in_tenant(&mut app, me, |tx| {
                    tx.execute(&format!("UPDATE {table} SET tenant_id = tenant_id WHERE tenant_id = $1::text::uuid"), &[&owner])
                        .unwrap()
                });
                assert_eq!(
                    updated,
                    u64::from(own),
                    "{table}: {me} UPDATE rows of {owner}"
                );
                let deleted = in_tenant(&mut app, me, |tx| {
                    tx.execute(
                        &format!("DELETE FROM {table} WHERE tenant_id = $1::text::uuid"),
                        &[&owner],
                    )
                    .unwrap()
                });
                assert_eq!(
                    deleted,
                    u64::from(own),
                    "{table}: {me} DELETE rows of {owner}"
                );
                // INSERT: only for its own tenant; anything else is refused (42501).
                let col = if table == "public.messages" {
                    "(role, content, tenant_id) VALUES ('user', 'x',"
                } else {
                    "(body, tenant_id) VALUES ('x',"
                };
                let inserted = in_tenant(&mut app, me, |tx| {
                    tx.execute(
                        &format!("INSERT INTO {table} {col} $1::text::uuid)"),
                        &[&owner],
                    )
                    .map_err(|e| {
                        e.as_db_error()
                            .map(|d| d.code().code().to_string())
                            .unwrap_or_default()
                    })
                });
                if own {
                    assert_eq!(inserted, Ok(1), "{table}: {me} INSERT own row");
                } else {
                    assert_eq!(
                        inserted,
                        Err("42501".into()),
                        "{table}: {me} INSERT a row of {owner}"
                    );
                }
            }
            // Moving an own row to another tenant is refused.
            let other = if me == DIGITAL { PHARMA } else { DIGITAL };
            let moved = in_tenant(&mut app, me, |tx| {
                tx.execute(
                    &format!("UPDATE {table} SET tenant_id = $1::text::uuid"),
                    &[&other],
                )
                .map_err(|e| {
                    e.as_db_error()
                        .map(|d| d.code().code().to_string())
                        .unwrap_or_default()
                })
            });
            assert_eq!(
                moved,
                Err("42501".into()),
                "{table}: {me} moving rows to {other}"
            );
            // An INSERT without tenant_id takes the context's tenant (column default).
            let col = if table == "public.messages" {
                "(role, content) VALUES ('user', 'x')"
            } else {
                "(body) VALUES ('x')"
            };
            let t: String = in_tenant(&mut app, me, |tx| {
                tx.query_one(
                    &format!("INSERT INTO {table} {col} RETURNING tenant_id::text"),
                    &[],
                )
                .unwrap()
                .get(0)
            });
            assert_eq!(t, me);
        }
    }
}

#[test]
fn no_context_empty_and_malformed_settings_fail_closed() {
    let (db, _c) = setup("iso_context");
    let mut app = db.connect_as("vt_iso_app");
    for table in ["public.messages", "public.notes"] {
        let n: i64 = app
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .unwrap()
            .get(0);
        assert_eq!(n, 0, "{table}: nothing visible without a tenant context");
        let r = app
            .execute(&format!("UPDATE {table} SET tenant_id = tenant_id"), &[])
            .unwrap();
        assert_eq!(r, 0);
        let r = app.execute(&format!("DELETE FROM {table}"), &[]).unwrap();
        assert_eq!(r, 0);
    }
    let r = app.execute("INSERT INTO public.notes (body) VALUES ('x')", &[]);
    assert_eq!(sqlstate(r), "42501", "no context: no tenant may be written");
    // Empty strings count as unset.
    app.batch_execute(
        "BEGIN; SET LOCAL vital.tenant_id = ''; SET LOCAL request.jwt.claims = ''; SET LOCAL request.headers = ''",
    )
    .unwrap();
    let n: i64 = app
        .query_one("SELECT count(*) FROM public.notes", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    app.batch_execute("ROLLBACK").unwrap();
    // Malformed values are errors naming their source where the context is asked
    // for (current_tenant_id(), pre_request()), never a silent fallback; inside the
    // policies they count as no context (an error there would depend on the rows).
    // A malformed vital.tenant_id is refused when it is set.
    let mut tx = app.transaction().unwrap();
    tx.batch_execute("SAVEPOINT s").unwrap();
    let r = tx.execute(
        "SELECT set_config('vital.tenant_id', 'not-a-uuid', true)",
        &[],
    );
    tx.batch_execute("ROLLBACK TO SAVEPOINT s").unwrap();
    let msg = message(tx.execute(
        "SELECT set_config('vital.tenant_id', 'not-a-uuid', true)",
        &[],
    ));
    drop(tx);
    assert_eq!(sqlstate(r), "22P02");
    assert!(msg.contains("vital.tenant_id"), "{msg}");
    for (setting, value, code, source) in [
        ("request.jwt.claims", "{oops", "22P02", "request.jwt.claims"),
        (
            "request.jwt.claims",
            r#"{"tenant_id": "nope"}"#,
            "22P02",
            "request.jwt.claims",
        ),
        (
            "vital.tenant_id",
            "99999999-9999-9999-9999-999999999999",
            "42704",
            "vital.tenant_id",
        ),
    ] {
        let mut tx = app.transaction().unwrap();
        tx.execute("SELECT set_config($1, $2, true)", &[&setting, &value])
            .unwrap();
        let n: i64 = tx
            .query_one("SELECT count(*) FROM public.notes", &[])
            .unwrap()
            .get(0);
        assert_eq!(n, 0, "{setting}={value}: no context inside the policies");
        for f in [
            "vital_tenancy.current_tenant_id()",
            "vital_tenancy.pre_request()",
        ] {
            let sql = format!("SELECT {f}::text");
            tx.batch_execute("SAVEPOINT s").unwrap();
            let r = tx.query(&sql, &[]);
            tx.batch_execute("ROLLBACK TO SAVEPOINT s").unwrap();
            let msg = message(tx.query(&sql, &[]));
            tx.batch_execute("ROLLBACK TO SAVEPOINT s").unwrap();
            assert_eq!(sqlstate(r), code, "{f} with {setting}={value}: {msg}");
            assert!(msg.contains(source), "{msg}");
        }
    }
}

#[test]
fn jwt_claims_and_headers() {
    let (db, mut c) = setup("iso_jwt");
    let mut app = db.connect_as("vt_iso_app");
    let with = |app: &mut Client,
                claims: &str,
                headers: &str|
     -> Result<Vec<String>, postgres::Error> {
        let mut tx = app.transaction()?;
        tx.execute(
            "SELECT set_config('request.jwt.claims', $1, true), set_config('request.headers', $2, true)",
            &[&claims, &headers],
        )?;
        let tenants = tx
            .query("SELECT tenant_id::text FROM public.notes ORDER BY 1", &[])?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let tenant: Option<String> = tx
            .query_one("SELECT vital_tenancy.current_tenant_id()::text", &[])?
            .get(0);
        assert_eq!(tenant.is_some(), !Vec::<String>::is_empty(&tenants));
        Ok(tenants)
    };
    // Claims with a tenant.
    let claims =
        format!(r#"{{"sub": "{USER}", "role": "authenticated", "tenant_id": "{PHARMA}"}}"#);
    assert_eq!(
        with(&mut app, &claims, "").unwrap(),
        vec![PLATFORM.to_string(), PHARMA.to_string()]
    );
    // Claims without a tenant: nothing.
    let claims = format!(r#"{{"sub": "{USER}", "role": "authenticated"}}"#);
    assert!(with(&mut app, &claims, "").unwrap().is_empty());
    // A spoofed header: the user is not a member of Digital Health. Asking for the
    // context is an ERROR naming user and tenant.
    let header = format!(r#"{{"x-tenant-id": "{DIGITAL}"}}"#);
    let r = with(&mut app, &claims, &header);
    let msg = message(with(&mut app, &claims, &header));
    assert_eq!(sqlstate(r), "42501");
    assert!(
        msg.contains(USER) && msg.contains(DIGITAL),
        "names user and tenant: {msg}"
    );
    // With the membership, the header works.
    c.execute(
        "INSERT INTO vital_tenancy.tenant_members (user_id, tenant_id) VALUES ($1::text::uuid, $2::text::uuid)",
        &[&USER, &DIGITAL],
    )
    .unwrap();
    assert_eq!(
        with(&mut app, &claims, &header).unwrap(),
        vec![PLATFORM.to_string(), DIGITAL.to_string()]
    );
    // The membership table is not readable by the application role.
    let r = app.query("SELECT * FROM vital_tenancy.tenant_members", &[]);
    assert_eq!(sqlstate(r), "42501");
}

#[test]
fn views_copy_and_roles_without_privileges() {
    let (db, mut c) = setup("iso_views");
    c.batch_execute(
        "CREATE VIEW public.notes_invoker WITH (security_invoker = true) AS SELECT * FROM public.notes;
         GRANT SELECT ON public.notes_invoker TO vt_iso_app",
    )
    .unwrap();
    let mut app = db.connect_as("vt_iso_app");
    let n: i64 = in_tenant(&mut app, PHARMA, |tx| {
        tx.query_one("SELECT count(*) FROM public.notes_invoker", &[])
            .unwrap()
            .get(0)
    });
    assert_eq!(
        n, 2,
        "a security_invoker view applies the caller's tenant policies"
    );
    // COPY TO applies the SELECT policies; COPY FROM is refused under RLS.
    let copied = in_tenant(&mut app, DIGITAL, |tx| {
        let mut out = String::new();
        use std::io::Read;
        tx.copy_out("COPY public.notes (tenant_id) TO STDOUT")
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        let mut lines: Vec<String> = out.lines().map(String::from).collect();
        lines.sort();
        lines
    });
    assert_eq!(copied, vec![PLATFORM.to_string(), DIGITAL.to_string()]);
    let mut copier = db.connect_as("vt_iso_app");
    let mut tx = copier.transaction().unwrap();
    tx.execute(
        "SELECT set_config('vital.tenant_id', $1, true)",
        &[&DIGITAL],
    )
    .unwrap();
    let r = tx
        .copy_in::<str>("COPY public.notes (body) FROM STDIN")
        .map(|_| ());
    assert_eq!(sqlstate(r), "0A000");
    drop(tx);
    drop(copier);
    // A role that owns nothing and has no privileges: refused before RLS.
    let mut nobody = db.connect_as("vt_iso_nobody");
    let r = nobody.query("SELECT count(*) FROM public.notes", &[]);
    assert_eq!(sqlstate(r), "42501");
}

#[test]
fn platform_admin_reads_and_writes_everything() {
    let (db, _c) = setup("iso_admin");
    let mut admin = db.connect_as("vt_iso_admin");
    let n: i64 = admin
        .query_one("SELECT count(*) FROM public.notes", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 3, "the admin role sees every tenant without a context");
    let n = admin
        .execute("UPDATE public.notes SET body = body", &[])
        .unwrap();
    assert_eq!(n, 3);
    admin
        .execute(
            "INSERT INTO public.notes (body, tenant_id) VALUES ('x', $1::text::uuid)",
            &[&PHARMA],
        )
        .unwrap();
    // The tenant policies have no OR for the admin: the plan is still an index condition.
    admin.batch_execute("SET enable_seqscan = off").unwrap();
    let plan: String = admin
        .query("EXPLAIN (COSTS OFF) SELECT * FROM public.notes", &[])
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect::<Vec<_>>()
        .join("\n")
        // PostgreSQL 17 and later print an InitPlan's output as (InitPlan N).col1.
        .replace("(InitPlan 1).col1", "$0")
        .replace("(InitPlan 2).col1", "$1");
    // The boundary and the admin policy both name the column: both are index conditions.
    assert!(
        plan.contains("Index Cond: ((tenant_id = ANY ($0)) AND (tenant_id = ANY ($1)))"),
        "{plan}"
    );
    assert!(!plan.contains("Filter"), "{plan}");
}

#[test]
fn security_definer_functions_resist_a_malicious_search_path() {
    let (db, mut c) = setup("iso_searchpath");
    // An attacker's schema shadowing everything the functions use, first on the path:
    // a fake membership table, a fake tenants table, look-alike functions and an `=`
    // on uuid that is always true.
    c.batch_execute(&format!(
        "CREATE SCHEMA evil;
         GRANT USAGE ON SCHEMA evil TO PUBLIC;
         CREATE TABLE evil.tenant_members (user_id uuid, tenant_id uuid);
         INSERT INTO evil.tenant_members VALUES ('{USER}', '{DIGITAL}');
         CREATE TABLE evil.tenants (id uuid, name text);
         INSERT INTO evil.tenants VALUES ('99999999-9999-9999-9999-999999999999', 'fake');
         CREATE FUNCTION evil.current_setting(text, boolean) RETURNS text LANGUAGE sql AS $$ SELECT '{DIGITAL}' $$;
         CREATE FUNCTION evil.to_regclass(text) RETURNS regclass LANGUAGE sql AS $$ SELECT 'evil.tenants'::regclass $$;
         CREATE FUNCTION evil.eq(uuid, uuid) RETURNS boolean LANGUAGE sql AS $$ SELECT true $$;
         CREATE OPERATOR evil.= (LEFTARG = uuid, RIGHTARG = uuid, FUNCTION = evil.eq);
         GRANT SELECT ON ALL TABLES IN SCHEMA evil TO PUBLIC;
         -- Someone else's real membership: an `=` that is always true would match it.
         INSERT INTO vital_tenancy.tenant_members (user_id, tenant_id)
         VALUES ('bbbbbbbb-0000-4000-8000-000000000002', '{DIGITAL}');"
    ))
    .unwrap();
    let mut app = db.connect_as("vt_iso_app");
    app.batch_execute("SET search_path = evil, pg_temp, public, pg_catalog")
        .unwrap();
    // In one transaction, as a request would: the spoofed membership must not count
    // (no rows), and asking for the context is 42501.
    let probe = |app: &mut Client| -> (i64, String) {
        let mut tx = app.transaction().unwrap();
        tx.execute(
            "SELECT set_config('request.jwt.claims', $1, true), set_config('request.headers', $2, true)",
            &[
                &format!(r#"{{"sub": "{USER}"}}"#),
                &format!(r#"{{"x-tenant-id": "{DIGITAL}"}}"#),
            ],
        )
        .unwrap();
        let n: i64 = tx
            .query_one("SELECT count(*) FROM public.notes", &[])
            .unwrap()
            .get(0);
        let code = sqlstate(tx.query("SELECT vital_tenancy.current_tenant_id()", &[]));
        (n, code)
    };
    assert_eq!(
        probe(&mut app),
        (0, "42501".to_string()),
        "the fake membership table must not be consulted"
    );
    let r = app.query(
        "SELECT vital_tenancy.set_tenant('99999999-9999-9999-9999-999999999999')",
        &[],
    );
    assert_eq!(
        sqlstate(r),
        "42704",
        "the fake tenants table must not be consulted"
    );
    // A temp table named like the membership table does not help either.
    app.batch_execute(&format!(
        "CREATE TEMP TABLE tenant_members (user_id uuid, tenant_id uuid);
         INSERT INTO pg_temp.tenant_members VALUES ('{USER}', '{DIGITAL}');"
    ))
    .unwrap();
    assert_eq!(probe(&mut app), (0, "42501".to_string()));
}
