//! The tenants registry is inside the boundary after migration 006: a tenant's request
//! reads its own row and Platform's, an anonymous one none, no tenant role writes it;
//! platform admins read and write it; a slug resolves without opening it. Before the
//! migration the fixture's grants let a tenant rename another (the control).

use postgres::Client;
use vital_tenancy_e2e::{sqlstate, FixtureDb, DIGITAL, PHARMA, PLATFORM};

fn roles(c: &mut Client) {
    c.batch_execute(
        "DO $$ BEGIN PERFORM pg_catalog.pg_advisory_xact_lock(74657374); -- roles are cluster-wide: one test at a time creates them
           IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'vt_reg_authenticator') THEN
             CREATE ROLE vt_reg_authenticator LOGIN NOINHERIT; END IF;
           IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'vt_reg_admin') THEN
             CREATE ROLE vt_reg_admin LOGIN; END IF;
         END $$;
         GRANT anon, authenticated TO vt_reg_authenticator;
         GRANT vital_tenancy_context TO vt_reg_authenticator;
         GRANT vital_tenancy_admin TO vt_reg_admin;",
    )
    .unwrap();
}

/// One PostgREST-shaped request without headers; its rows, or its SQLSTATE.
fn request(
    c: &mut Client,
    role: &str,
    claims: &str,
    sql: &str,
) -> Result<vital_tenancy_e2e::Rows, String> {
    vital_tenancy_e2e::postgrest(c, role, claims, "{}", true, sql).map_err(|e| e.0)
}

#[test]
fn the_registry_is_inside_the_boundary() {
    // Control: the fixture as it comes lets a tenant's user rename another tenant.
    let before = FixtureDb::new("reg_before");
    let mut c = before.dba();
    c.batch_execute("CREATE EXTENSION vital_tenancy").unwrap();
    c.batch_execute(
        r#"SELECT * FROM vital_tenancy.ensure_tenants('public.tenants', '{"type": "industry"}')"#,
    )
    .unwrap();
    roles(&mut c);
    let problems: Vec<String> = c
        .query("SELECT problem FROM vital_tenancy.rls_coverage() WHERE table_name = 'public.tenants' ORDER BY 1", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems[0].contains("row level security is off") && problems[1].contains("writable by"),
        "{problems:?}"
    );
    let mut pgrst = before.connect_as("vt_reg_authenticator");
    let dh = format!(r#"{{"role": "authenticated", "tenant_id": "{DIGITAL}"}}"#);
    let r = request(
        &mut pgrst,
        "authenticated",
        &dh,
        &format!("UPDATE public.tenants SET name = 'renamed' WHERE id = '{PHARMA}' RETURNING id"),
    );
    assert_eq!(
        r.unwrap().len(),
        1,
        "the control: before 006 a tenant renames another"
    );
    drop(pgrst);
    drop(c);
    drop(before);

    let (db, mut c) = FixtureDb::migrated("reg_after");
    roles(&mut c);
    let n: i64 = c
        .query_one(
            "SELECT count(*) FROM vital_tenancy.rls_coverage() WHERE table_name = 'public.tenants'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "006 leaves no registry problem");
    let mut pgrst = db.connect_as("vt_reg_authenticator");
    let ids = |rows: Vec<Vec<Option<String>>>| -> Vec<String> {
        rows.into_iter()
            .map(|r| r[0].clone().unwrap_or_default())
            .collect()
    };
    // A tenant reads its own row and Platform's.
    for t in [DIGITAL, PHARMA] {
        let claims = format!(r#"{{"role": "authenticated", "tenant_id": "{t}"}}"#);
        let got = ids(request(
            &mut pgrst,
            "authenticated",
            &claims,
            "SELECT id::text FROM public.tenants ORDER BY 1",
        )
        .unwrap());
        let mut want = vec![PLATFORM.to_string(), t.to_string()];
        want.sort();
        assert_eq!(got, want, "{t}");
        // Every write is refused, for its own row, another's, or a new one.
        for sql in [
            format!("UPDATE public.tenants SET name = 'renamed' WHERE id = '{PHARMA}'"),
            format!("UPDATE public.tenants SET status = 'suspended' WHERE id = '{t}'"),
            format!("DELETE FROM public.tenants WHERE id = '{DIGITAL}'"),
            "INSERT INTO public.tenants (id, name, slug, type) VALUES (gen_random_uuid(), 'x', 'x', 'industry')".to_string(),
        ] {
            assert_eq!(request(&mut pgrst, "authenticated", &claims, &sql), Err("42501".into()), "{sql}");
        }
        // The list of all tenants is not a tenant's.
        assert_eq!(
            request(
                &mut pgrst,
                "authenticated",
                &claims,
                "SELECT vital_tenancy.all_tenant_ids()"
            ),
            Err("42501".into())
        );
    }
    // Anonymous: no row, but the narrow slug lookup for before sign-in.
    let anon = r#"{"role": "anon"}"#;
    assert!(
        request(&mut pgrst, "anon", anon, "SELECT id FROM public.tenants")
            .unwrap()
            .is_empty()
    );
    let id = request(
        &mut pgrst,
        "anon",
        anon,
        "SELECT vital_tenancy.tenant_id_by_slug('pharmaceuticals')::text",
    )
    .unwrap();
    assert_eq!(id[0][0].as_deref(), Some(PHARMA));
    let none = request(
        &mut pgrst,
        "anon",
        anon,
        "SELECT vital_tenancy.tenant_id_by_slug('no-such-tenant')",
    )
    .unwrap();
    assert_eq!(none[0][0], None);
    // Platform admins read and write the registry.
    let mut admin = db.connect_as("vt_reg_admin");
    let n: i64 = admin
        .query_one("SELECT count(*) FROM public.tenants", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 3);
    let n: i64 = admin
        .query_one(
            "SELECT cardinality(vital_tenancy.all_tenant_ids())::bigint",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 3);
    let mut tx = admin.transaction().unwrap();
    assert_eq!(
        tx.execute(
            &format!("UPDATE public.tenants SET name = name WHERE id = '{PHARMA}'"),
            &[]
        )
        .unwrap(),
        1
    );
    tx.execute(
        "INSERT INTO public.tenants (id, name, slug, type) VALUES ('33333333-3333-4333-8333-333333333333', 'Fourth', 'fourth', 'industry')",
        &[],
    )
    .unwrap();
    tx.rollback().unwrap();
    // Idempotent.
    let again: i64 = c
        .query_one("SELECT count(*) FROM vital_tenancy.protect_tenants_table() WHERE action LIKE 'REVOKE%'", &[])
        .unwrap()
        .get(0);
    assert_eq!(again, 0, "nothing left to revoke");
    // Only DBAs run it.
    let r = admin.query("SELECT * FROM vital_tenancy.protect_tenants_table()", &[]);
    assert_eq!(sqlstate(r), "42501");
}
