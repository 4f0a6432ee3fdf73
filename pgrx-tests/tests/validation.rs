//! Validation on the migrated real fixture: every check finds exactly the problems
//! planted, reads only, and refuses bad input; health, index advice, usage, export.

use vital_tenancy_e2e::{checksums, sqlstate, FixtureDb};

fn migrated(tag: &str) -> (FixtureDb, postgres::Client) {
    let (db, c) = FixtureDb::migrated(tag);
    (db, c)
}

fn failing(c: &mut postgres::Client) -> Vec<(String, String, i64)> {
    c.query(
        "SELECT check_name, COALESCE(table_name, ''), failing FROM vital_tenancy.validate()
          WHERE failing > 0 AND check_name <> 'rls_bypass_roles' ORDER BY 1, 2",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

#[test]
fn each_check_reports_exactly_the_planted_problems() {
    let (_db, mut c) = migrated("val_plant");
    // Clean: only the real data's duplicate tool names (28 names, 56 rows), a warning.
    assert_eq!(
        failing(&mut c),
        vec![("duplicate_names".into(), "public.tools".into(), 56)]
    );
    let dups: i64 = c
        .query_one(
            "SELECT count(*) FROM vital_tenancy.duplicates('public.tools', ARRAY['name'])",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(dups, 28);

    // Plant one problem of each kind (triggers and FK checks off, as a careless bulk
    // load or a manual fix would).
    c.batch_execute(
        "BEGIN;
         SET LOCAL session_replication_role = replica;
         -- an assignment whose agent does not exist
         INSERT INTO public.agent_tool_assignments (id, agent_id, tool_id, tenant_id)
         SELECT gen_random_uuid(), gen_random_uuid(), (SELECT id FROM public.tools ORDER BY id LIMIT 1), vital_tenancy.platform_tenant_id();
         -- a tool whose tenant does not exist
         UPDATE public.tools SET tenant_id = '99999999-9999-9999-9999-999999999999'
          WHERE id = (SELECT id FROM public.tools ORDER BY id OFFSET 1 LIMIT 1);
         -- an assignment of a Digital Health agent moved to Pharmaceuticals
         UPDATE public.agent_tool_assignments SET tenant_id = vital_tenancy.pharma_tenant_id()
          WHERE id = (SELECT x.id FROM public.agent_tool_assignments x JOIN public.agents a ON a.id = x.agent_id
                       WHERE a.tenant_id = vital_tenancy.digital_health_tenant_id() ORDER BY x.id LIMIT 1);
         -- two tools whose category text no longer matches their category
         UPDATE public.tools SET category = 'Wrong'
          WHERE id IN (SELECT id FROM public.tools WHERE category_id IS NOT NULL ORDER BY id OFFSET 5 LIMIT 2);
         COMMIT;
         -- a tenant table without RLS, and one with rows lacking a tenant
         SELECT * FROM vital_tenancy.disable_tenant_rls('public.knowledge_domains');
         CREATE TABLE public.extra_notes (id int PRIMARY KEY, tenant_id uuid);
         INSERT INTO public.extra_notes VALUES (1, NULL), (2, NULL), (3, vital_tenancy.platform_tenant_id());",
    )
    .unwrap();
    let before = checksums(&mut c, &[]);
    let got = failing(&mut c);
    assert_eq!(
        got,
        vec![
            ("category_mismatches".into(), "public.tools".into(), 2),
            (
                "cross_tenant_references".into(),
                "public.agent_tool_assignments".into(),
                1
            ),
            ("duplicate_names".into(), "public.tools".into(), 56),
            (
                "orphaned_references".into(),
                "public.agent_tool_assignments".into(),
                1
            ),
            ("orphaned_tenant_refs".into(), "public.tools".into(), 1),
            ("rls_coverage".into(), "public.extra_notes".into(), 1),
            ("rls_coverage".into(), "public.knowledge_domains".into(), 1),
            ("tenant_id_coverage".into(), "public.extra_notes".into(), 2),
        ]
    );
    // The individual functions agree.
    let orphans: (String, String, String, i64) = {
        let r = c.query_one("SELECT table_name, column_name, referenced_table, orphan_count FROM vital_tenancy.orphaned_references() WHERE orphan_count > 0", &[]).unwrap();
        (r.get(0), r.get(1), r.get(2), r.get(3))
    };
    assert_eq!(
        orphans,
        (
            "public.agent_tool_assignments".into(),
            "agent_id".into(),
            "public.agents".into(),
            1
        )
    );
    let refs: (String, String) = {
        let r = c
            .query_one(
                "SELECT table_name, tenant_id::text FROM vital_tenancy.orphaned_tenant_refs()",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(
        refs,
        (
            "public.tools".into(),
            "99999999-9999-9999-9999-999999999999".into()
        )
    );
    let cov: (i64, i64, i64) = {
        let r = c.query_one("SELECT total, with_tenant, missing FROM vital_tenancy.tenant_id_coverage() WHERE table_name = 'public.extra_notes'", &[]).unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!(cov, (3, 1, 2));
    let problem: String = c
        .query_one("SELECT problem FROM vital_tenancy.rls_coverage() WHERE table_name = 'public.knowledge_domains' AND problem NOT LIKE 'role %'", &[])
        .unwrap()
        .get(0);
    // disable_tenant_rls put back the fixture's own state: RLS on, not forced, its
    // USING (true) policies only.
    assert!(
        problem.contains("not forced") && problem.contains("cannot use the tenant index"),
        "{problem}"
    );
    let problem: String = c
        .query_one("SELECT problem FROM vital_tenancy.rls_coverage() WHERE table_name = 'public.extra_notes' AND problem NOT LIKE 'role %'", &[])
        .unwrap()
        .get(0);
    assert!(
        problem.contains("row level security is off") && problem.contains("no policies"),
        "{problem}"
    );
    // assert_valid lists every blocking failure in one ERROR.
    let e = c
        .query("SELECT vital_tenancy.assert_valid()", &[])
        .unwrap_err();
    let db = e.as_db_error().unwrap();
    assert_eq!(db.code().code(), "23514");
    assert!(
        db.message().contains("4 blocking problem(s)"),
        "{}",
        db.message()
    );
    let detail = db.detail().unwrap_or_default();
    for needle in [
        "tenant_id_coverage",
        "orphaned_tenant_refs",
        "orphaned_references",
        "cross_tenant_references",
    ] {
        assert!(detail.contains(needle), "{detail}");
    }
    // Health says degraded, and why.
    let h: serde_json::Value = c
        .query_one("SELECT vital_tenancy.health()::text", &[])
        .map(|r| serde_json::from_str(r.get(0)).unwrap())
        .unwrap();
    assert_eq!(h["status"], "degraded");
    assert_eq!(h["referential_integrity"]["orphaned_references"], 1);
    assert_eq!(h["rls"]["status"], "degraded");
    // Validation read only.
    assert_eq!(checksums(&mut c, &[]), before);
}

#[test]
fn health_advice_usage_and_export_on_a_clean_migration() {
    let (_db, mut c) = migrated("val_health");
    let health = |c: &mut postgres::Client| -> serde_json::Value {
        c.query_one("SELECT vital_tenancy.health()::text", &[])
            .map(|r| serde_json::from_str(r.get(0)).unwrap())
            .unwrap()
    };
    // The fixture's service_role (BYPASSRLS, with every privilege on the tenant tables,
    // as Supabase has it) skips the boundary: health names it, on every tenant table.
    let h = health(&mut c);
    assert_eq!(h["status"], "degraded", "{h}");
    assert_eq!(
        h["rls"]["bypass_roles"],
        serde_json::json!(["service_role"]),
        "{h}"
    );
    let bypass: Vec<(String, i64)> = c
        .query(
            "SELECT table_name, failing FROM vital_tenancy.validate() WHERE check_name = 'rls_bypass_roles' AND failing > 0 ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    // Every tenant table service_role holds privileges on (the fixture grants it all of
    // public; the tables 001 creates it got none).
    let held: Vec<String> = c
        .query(
            "SELECT n.nspname || '.' || c.relname FROM vital_tenancy.rls_tables r
               JOIN pg_class c ON c.oid = r.tbl JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE has_table_privilege('service_role', r.tbl, 'SELECT, INSERT, UPDATE, DELETE') ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(held.len() >= 9, "{held:?}");
    assert_eq!(bypass.iter().map(|b| b.0.clone()).collect::<Vec<_>>(), held);
    assert!(bypass.iter().all(|(_, n)| *n == 1));
    let problem: String = c
        .query_one(
            "SELECT problem FROM vital_tenancy.rls_coverage() WHERE table_name = 'public.prompts'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(
        problem.contains("service_role") && problem.contains("vital_tenancy_service"),
        "{problem}"
    );
    // Without its privileges on the tenant tables it no longer counts: healthy.
    c.batch_execute("REVOKE ALL ON ALL TABLES IN SCHEMA public FROM service_role")
        .unwrap();
    let h = health(&mut c);
    assert_eq!(h["status"], "healthy", "{h}");
    assert_eq!(h["tenants"]["status"], "healthy");
    assert_eq!(h["last_migration"]["status"], "completed");
    for t in h["tenants"]["tenants"].as_array().unwrap() {
        assert!(t["rows"].as_i64().unwrap() > 0, "{t}");
    }
    // Every tenant table has its index: 100% coverage; the advice is the plan's composites.
    let cov: String = c
        .query_one("SELECT vital_tenancy.index_coverage()::text", &[])
        .unwrap()
        .get(0);
    assert_eq!(cov, "100.00");
    let advice: Vec<(String, Vec<String>)> = c
        .query(
            "SELECT table_name, columns FROM vital_tenancy.index_advice() ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        advice,
        vec![
            (
                "public.agents".to_string(),
                vec!["tenant_id".to_string(), "tier".into(), "status".into()]
            ),
            (
                "public.prompts".to_string(),
                vec!["tenant_id".to_string(), "domain".into()]
            ),
        ]
    );
    // The advised DDL runs (outside a transaction), after which there is no advice.
    let ddl: Vec<String> = c
        .query("SELECT ddl FROM vital_tenancy.index_advice()", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for d in ddl {
        c.batch_execute(&d).unwrap();
    }
    let left: i64 = c
        .query_one("SELECT count(*) FROM vital_tenancy.index_advice()", &[])
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    // Usage adds up to the distribution; the export of a tenant is exactly its rows.
    let usage: i64 = c.query_one("SELECT sum(rows)::bigint FROM vital_tenancy.tenant_usage() WHERE tenant = 'Pharmaceuticals'", &[]).unwrap().get(0);
    assert_eq!(usage, 45);
    let exported: Vec<(String, i64)> = c
        .query(
            "SELECT table_name, count(*) FROM vital_tenancy.export_tenant(vital_tenancy.digital_health_tenant_id()) GROUP BY 1 ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    // The registry row comes with the tenant's rows (import_tenant() creates the tenant
    // from it).
    let dist: Vec<(String, i64)> = c
        .query(
            "SELECT table_name, row_count FROM vital_tenancy.tenant_distribution()
              WHERE tenant_id = vital_tenancy.digital_health_tenant_id()
             UNION ALL SELECT 'public.tenants', 1 ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(exported, dist);
    // Streamed through COPY.
    let mut out = String::new();
    use std::io::Read;
    c.copy_out("COPY (SELECT * FROM vital_tenancy.export_tenant(vital_tenancy.pharma_tenant_id())) TO STDOUT")
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert_eq!(out.lines().count(), 46);
    assert!(out.lines().next().unwrap().starts_with("public.tenants\t{"));
    assert!(out
        .lines()
        .skip(1)
        .all(|l| l.starts_with("public.prompts\t{")));
}

#[test]
fn bad_input_is_refused() {
    let (_db, mut c) = migrated("val_bad");
    for (sql, code) in [
        (
            "SELECT * FROM vital_tenancy.validate(ARRAY['no_such_schema'])",
            "3F000",
        ),
        (
            "SELECT * FROM vital_tenancy.tenant_id_coverage(ARRAY['public', 'nope'])",
            "3F000",
        ),
        (
            "SELECT * FROM vital_tenancy.duplicates('public.tools', ARRAY['no_such_column'])",
            "42703",
        ),
        (
            "SELECT * FROM vital_tenancy.duplicates('public.tenants', ARRAY['name'])",
            "42703",
        ),
        (
            "SELECT * FROM vital_tenancy.duplicates('public.tools', ARRAY[]::text[])",
            "22023",
        ),
        (
            "SELECT * FROM vital_tenancy.duplicates('public.no_such_table', ARRAY['name'])",
            "42P01",
        ),
        (
            "SELECT * FROM vital_tenancy.export_tenant('99999999-9999-9999-9999-999999999999')",
            "42704",
        ),
        (
            "SELECT vital_tenancy.declare_reference('public.messages', 'nope', 'public.agents')",
            "42703",
        ),
        (
            "SELECT * FROM vital_tenancy.index_advice(ARRAY['nope'])",
            "3F000",
        ),
    ] {
        assert_eq!(sqlstate(c.query(sql, &[])), code, "{sql}");
    }
    let ok: Vec<String> = c
        .query(
            "SELECT table_name FROM vital_tenancy.tenant_id_coverage(ARRAY['auth'])",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(ok.is_empty(), "the auth schema has no tenant tables");
}
