//! The application's own API path, isolated: the VITAL API routes' queries replayed as
//! PostgREST sends them for a server-side request (`role` vital_tenancy_service, the
//! tenant in the `x-tenant-id` header) on the migrated real fixture, for each tenant;
//! the plan's Phase 6.2 checks (tool isolation, shared data with show-all); and the
//! ways that path must stay closed to anonymous and user requests.

use postgres::Client;
use vital_tenancy_e2e::{literal, simple_rows, sqlstate, FixtureDb, DIGITAL, PHARMA, PLATFORM};

fn setup(tag: &str) -> (FixtureDb, Client) {
    let (db, mut c) = FixtureDb::migrated(tag);
    c.batch_execute(
        "DO $$ BEGIN PERFORM pg_catalog.pg_advisory_xact_lock(74657374); -- roles are cluster-wide: one test at a time creates them
           IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'vt_api_authenticator') THEN
             CREATE ROLE vt_api_authenticator LOGIN NOINHERIT; END IF;
           IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'vt_api_user') THEN
             CREATE ROLE vt_api_user LOGIN; END IF;
           IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'vt_api_untrusted_server') THEN
             CREATE ROLE vt_api_untrusted_server LOGIN; END IF;
         END $$;
         -- PostgREST's authenticator may switch to the server-side role (a JWT whose role
         -- claim names it, minted with the JWT secret, kept server-side).
         GRANT anon, authenticated, vital_tenancy_service TO vt_api_authenticator;
         GRANT vital_tenancy_context TO vt_api_authenticator;
         -- A direct login as an application role.
         GRANT anon, authenticated TO vt_api_user;
         -- A login that holds the service role but is not a trusted context role.
         GRANT vital_tenancy_service TO vt_api_untrusted_server;",
    )
    .unwrap();
    (db, c)
}

type Rows = Vec<Vec<Option<String>>>;

/// A server-side request as PostgREST runs it: role and headers set transaction-locally,
/// the pre-request hook, then the route's statements; rolled back unless `commit`.
fn service(
    c: &mut Client,
    headers: &str,
    statements: &[&str],
    commit: bool,
) -> Result<Vec<Rows>, String> {
    let begin = format!(
        "BEGIN;
         SELECT set_config('role', 'vital_tenancy_service', true),
                set_config('request.jwt.claims', '{{\"role\": \"vital_tenancy_service\"}}', true),
                set_config('request.headers', {}, true);
         SELECT vital_tenancy.pre_request();",
        literal(headers)
    );
    let run = |c: &mut Client| -> Result<Vec<Rows>, postgres::Error> {
        simple_rows(c, &begin)?;
        let mut out = Vec::new();
        for s in statements {
            out.push(simple_rows(c, s)?);
        }
        Ok(out)
    };
    let r = run(c).map_err(|e| {
        e.as_db_error()
            .map(|d| d.code().code().to_string())
            .unwrap_or_else(|| e.to_string())
    });
    let _ = c.batch_execute(if commit && r.is_ok() {
        "COMMIT"
    } else {
        "ROLLBACK"
    });
    r
}

fn hdr(t: &str) -> String {
    format!(r#"{{"x-tenant-id": "{t}"}}"#)
}

fn one(rows: &Rows) -> String {
    rows[0][0].clone().unwrap_or_default()
}

#[test]
fn prompts_crud_route_per_tenant() {
    let (db, mut dba) = setup("api_prompts");
    let mut pgrst = db.connect_as("vt_api_authenticator");
    // GET /api/prompts-crud?domain=&search=&status=active: count exact, newest first, a page.
    let filter = "status = 'active' AND (name ILIKE '%a%' OR display_name ILIKE '%a%')";
    let list = format!(
        "SELECT id, tenant_id::text, name FROM public.prompts WHERE {filter} ORDER BY created_at DESC LIMIT 25 OFFSET 0"
    );
    let count = format!("SELECT count(*) FROM public.prompts WHERE {filter}");
    for tenant in [DIGITAL, PHARMA] {
        let out = service(
            &mut pgrst,
            &hdr(tenant),
            &[
                &list,
                &count,
                "SELECT DISTINCT tenant_id::text FROM public.prompts",
            ],
            false,
        )
        .unwrap();
        let expected: i64 = dba
            .query_one(
                &format!("SELECT count(*) FROM public.prompts WHERE {filter} AND tenant_id IN ($1::text::uuid, $2::text::uuid)"),
                &[&tenant, &PLATFORM],
            )
            .unwrap()
            .get(0);
        assert!(expected > 0);
        assert_eq!(one(&out[1]), expected.to_string(), "{tenant}: exact count");
        assert!(out[0].len() <= 25 && !out[0].is_empty());
        let tenants: Vec<String> = out[2]
            .iter()
            .map(|r| r[0].clone().unwrap_or_default())
            .collect();
        let mut want = vec![PLATFORM.to_string(), tenant.to_string()];
        want.sort();
        let mut got = tenants.clone();
        got.sort();
        assert_eq!(got, want, "{tenant}: only its own and Platform's prompts");
        // Domain filter by domain of the real data, still within the tenant.
        let by_domain = service(
            &mut pgrst,
            &hdr(tenant),
            &["SELECT count(*) FILTER (WHERE tenant_id NOT IN ('00000000-0000-0000-0000-000000000001', (SELECT vital_tenancy.current_tenant_id()))) FROM public.prompts WHERE domain = 'regulatory_affairs'"],
            false,
        )
        .unwrap();
        assert_eq!(one(&by_domain[0]), "0");
    }
    // POST with the route's duplicate-name check, per tenant: the row lands in the tenant.
    for tenant in [DIGITAL, PHARMA] {
        let name = format!("api-route-prompt-{}", &tenant[..8]);
        let out = service(
            &mut pgrst,
            &hdr(tenant),
            &[
                &format!("SELECT count(*) FROM public.prompts WHERE name = {}", literal(&name)),
                &format!(
                    "INSERT INTO public.prompts (name, display_name, description, domain) VALUES ({}, 'API route prompt', 'created through the API path', 'general') RETURNING tenant_id::text",
                    literal(&name)
                ),
            ],
            true,
        )
        .unwrap();
        assert_eq!(one(&out[0]), "0", "no duplicate yet");
        assert_eq!(
            one(&out[1]),
            tenant,
            "the new prompt lands in the request's tenant"
        );
        let dup = service(
            &mut pgrst,
            &hdr(tenant),
            &[&format!(
                "SELECT count(*) FROM public.prompts WHERE name = {}",
                literal(&name)
            )],
            false,
        )
        .unwrap();
        assert_eq!(one(&dup[0]), "1", "the duplicate check sees it");
    }
    // Writing another tenant (or Platform) is refused by the boundary.
    let r = service(
        &mut pgrst,
        &hdr(DIGITAL),
        &[&format!("INSERT INTO public.prompts (name, display_name, description, tenant_id) VALUES ('api-x', 'x', 'x', '{PHARMA}')")],
        false,
    );
    assert_eq!(r, Err("42501".into()));
    // PUT/DELETE of another tenant's or a Platform prompt change nothing.
    let pharma_prompt: String = dba
        .query_one(
            "SELECT id::text FROM public.prompts WHERE name = 'api-route-prompt-f7aa6fd4'",
            &[],
        )
        .unwrap()
        .get(0);
    let platform_prompt: String = dba
        .query_one("SELECT id::text FROM public.prompts WHERE tenant_id = $1::text::uuid ORDER BY id LIMIT 1", &[&PLATFORM])
        .unwrap()
        .get(0);
    let before = vital_tenancy_e2e::checksums(&mut dba, &[]);
    for id in [&pharma_prompt, &platform_prompt] {
        let out = service(
            &mut pgrst,
            &hdr(DIGITAL),
            &[
                &format!("UPDATE public.prompts SET display_name = 'hijacked' WHERE id = '{id}' RETURNING id"),
                &format!("DELETE FROM public.prompts WHERE id = '{id}' RETURNING id"),
            ],
            true,
        )
        .unwrap();
        assert!(
            out[0].is_empty() && out[1].is_empty(),
            "{id} changed by another tenant"
        );
    }
    assert_eq!(vital_tenancy_e2e::checksums(&mut dba, &[]), before);
    // Its own prompt: PUT and DELETE work.
    let out = service(
        &mut pgrst,
        &hdr(PHARMA),
        &[&format!("UPDATE public.prompts SET display_name = 'edited' WHERE id = '{pharma_prompt}' RETURNING id")],
        false,
    )
    .unwrap();
    assert_eq!(out[0].len(), 1);
    // No header: nothing, and nothing written.
    let out = service(
        &mut pgrst,
        "{}",
        &[&count, "SELECT count(*) FROM public.tools"],
        false,
    )
    .unwrap();
    assert_eq!((one(&out[0]), one(&out[1])), ("0".into(), "0".into()));
    let r = service(&mut pgrst, "{}", &["INSERT INTO public.prompts (name, display_name, description) VALUES ('api-none', 'x', 'x')"], false);
    assert_eq!(r, Err("42501".into()));
}

#[test]
fn phase_6_2_tool_isolation_and_shared_data_with_show_all() {
    let (db, mut dba) = setup("api_tools");
    let mut pgrst = db.connect_as("vt_api_authenticator");
    // Give each tenant a tool of its own next to the shared (Platform) catalogue.
    for (t, key) in [(DIGITAL, "dh_only_tool"), (PHARMA, "pharma_only_tool")] {
        dba.execute(
            "INSERT INTO public.tools (tool_key, name, description, tenant_id)
             SELECT $1, $1, 'tenant tool', $2::text::uuid",
            &[&key, &t],
        )
        .unwrap_or_else(|e| panic!("insert tool: {e}"));
    }
    let platform_tools: i64 = dba
        .query_one(
            "SELECT count(*) FROM public.tools WHERE tenant_id = $1::text::uuid",
            &[&PLATFORM],
        )
        .unwrap()
        .get(0);
    assert!(platform_tools > 0);
    let q = "SELECT tenant_id::text, count(*) FROM public.tools GROUP BY 1 ORDER BY 1";
    for (tenant, own_key) in [(DIGITAL, "dh_only_tool"), (PHARMA, "pharma_only_tool")] {
        // curl -H "x-tenant-id: …" /api/tools-crud: the tenant's own tools only.
        let own = service(
            &mut pgrst,
            &format!(r#"{{"x-tenant-id": "{tenant}", "x-tenant-scope": "own"}}"#),
            &[q, "SELECT tool_key FROM public.tools"],
            false,
        )
        .unwrap();
        assert_eq!(
            own[0],
            vec![vec![Some(tenant.to_string()), Some("1".into())]]
        );
        assert_eq!(own[1], vec![vec![Some(own_key.to_string())]]);
        // ?showAll=true: the tenant's tools plus the shared Platform catalogue.
        let all = service(
            &mut pgrst,
            &format!(r#"{{"x-tenant-id": "{tenant}", "x-tenant-scope": "shared"}}"#),
            &[q],
            false,
        )
        .unwrap();
        let mut want = vec![
            vec![Some(PLATFORM.to_string()), Some(platform_tools.to_string())],
            vec![Some(tenant.to_string()), Some("1".into())],
        ];
        want.sort();
        assert_eq!(all[0], want, "{tenant}: show all");
    }
    // A scope that is neither own nor shared is a clear error from the hook.
    let r = service(
        &mut pgrst,
        &format!(r#"{{"x-tenant-id": "{DIGITAL}", "x-tenant-scope": "everything"}}"#),
        &[q],
        false,
    );
    assert_eq!(r, Err("22023".into()));
}

#[test]
fn the_service_path_stays_closed_to_anonymous_and_user_requests() {
    let (db, _dba) = setup("api_closed");
    // anon and authenticated cannot become the service role.
    let mut user = db.connect_as("vt_api_user");
    for role in ["anon", "authenticated"] {
        let r = user.batch_execute(&format!(
            "BEGIN; SET LOCAL ROLE {role}; SET LOCAL ROLE vital_tenancy_service"
        ));
        assert_eq!(sqlstate(r), "42501", "{role} became vital_tenancy_service");
        user.batch_execute("ROLLBACK").unwrap();
    }
    let r = user.batch_execute("SET ROLE vital_tenancy_service");
    assert_eq!(sqlstate(r), "42501");
    // Through PostgREST, an anonymous or user request with only a header gets nothing:
    // the header needs a member user, which anon is not.
    let mut pgrst = db.connect_as("vt_api_authenticator");
    for (role, claims) in [
        ("anon", r#"{"role": "anon"}"#),
        (
            "authenticated",
            r#"{"role": "authenticated", "sub": "aaaaaaaa-0000-4000-8000-00000000beef"}"#,
        ),
    ] {
        let rows = simple_rows(
            &mut pgrst,
            &format!(
                "BEGIN; SELECT set_config('role', '{role}', true), set_config('request.jwt.claims', {}, true), set_config('request.headers', {}, true);
                 SELECT count(*) FROM public.prompts;",
                literal(claims),
                literal(&hdr(PHARMA))
            ),
        )
        .unwrap();
        pgrst.batch_execute("ROLLBACK").unwrap();
        assert_eq!(
            rows[1][0].as_deref(),
            Some("0"),
            "{role} with a bare header"
        );
    }
    // A login holding the service role but not trusted to choose tenants: nothing.
    let mut untrusted = db.connect_as("vt_api_untrusted_server");
    let r = service(
        &mut untrusted,
        &hdr(PHARMA),
        &["SELECT count(*) FROM public.prompts"],
        false,
    );
    assert_eq!(
        r,
        Err("42501".into()),
        "pre_request refuses the untrusted login"
    );
    let rows = simple_rows(
        &mut untrusted,
        &format!(
            "BEGIN; SELECT set_config('role', 'vital_tenancy_service', true), set_config('request.headers', {}, true);
             SELECT count(*) FROM public.prompts;",
            literal(&hdr(PHARMA))
        ),
    )
    .unwrap();
    untrusted.batch_execute("ROLLBACK").unwrap();
    assert_eq!(rows[1][0].as_deref(), Some("0"));
}
