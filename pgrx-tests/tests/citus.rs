//! Citus readiness on the migrated real fixture (plain PostgreSQL: Citus is not in this
//! machine's registries): the exact blockers, prepare_for_citus applied with data
//! unchanged and the application still working, idempotence, distribute_all refusing.

use vital_tenancy_e2e::{checksums, migrate, sqlstate, FixtureDb};

fn readiness(c: &mut postgres::Client) -> Vec<(String, String, String)> {
    c.query(
        "SELECT table_name, proposed_role, COALESCE(blocker, '') FROM vital_tenancy.citus_readiness() ORDER BY 1, 3",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

fn r(t: &str, role: &str, b: &str) -> (String, String, String) {
    (format!("public.{t}"), role.to_string(), b.to_string())
}

#[test]
fn readiness_prepare_and_distribute_on_the_migrated_fixture() {
    let db = FixtureDb::new("citus");
    let mut c = db.dba();
    c.batch_execute("CREATE EXTENSION vital_tenancy").unwrap();
    let (ok, _, err) = migrate(&db.name, &[]);
    assert!(ok, "migration failed:\n{err}");

    let trig = |t: &str| {
        format!("trigger update_{t}_updated_at: Citus runs triggers on distributed tables only with citus.enable_unsafe_triggers")
    };
    // Migration 007 made the unique keys per tenant already; its reference guards are
    // triggers Citus must be told about.
    let guard = |fk: &str| {
        format!("trigger vt_tenant_ref_{fk}: Citus runs triggers on distributed tables only with citus.enable_unsafe_triggers")
    };
    let mut expected = vec![
        r("agent_tool_assignments", "distributed", &guard("agent_tool_assignments_agent_id_fkey")),
        r("agent_tool_assignments", "distributed", &guard("agent_tool_assignments_tool_id_fkey")),
        r("knowledge_base", "distributed", &guard("knowledge_base_source_id_fkey")),
        r("messages", "distributed", &guard("messages_parent_message_id_fkey")),
        r("organizational_roles", "distributed", &guard("organizational_roles_department_id_fkey")),
        r("agent_tool_assignments", "distributed", "foreign key agent_tool_assignments_agent_id_fkey to distributed table public.agents does not include tenant_id"),
        r("agent_tool_assignments", "distributed", "foreign key agent_tool_assignments_assigned_by_fkey to local table auth.users"),
        r("agent_tool_assignments", "distributed", "primary key agent_tool_assignments_pkey (id) does not include tenant_id"),
        r("agent_tool_assignments", "distributed", &trig("agent_tool_assignments")),
        r("agents", "distributed", "primary key agents_pkey (id) does not include tenant_id"),
        r("agents", "distributed", &trig("agents")),
        r("business_functions", "reference", ""),
        r("departments", "reference", ""),
        r("knowledge_base", "distributed", "foreign key knowledge_base_source_id_fkey to distributed table public.knowledge_sources does not include tenant_id"),
        r("knowledge_base", "distributed", "primary key knowledge_base_pkey (id) does not include tenant_id"),
        r("knowledge_domains", "reference", ""),
        r("knowledge_sources", "distributed", "primary key knowledge_sources_pkey (id) does not include tenant_id"),
        r("messages", "distributed", "foreign key messages_parent_message_id_fkey to distributed table public.messages does not include tenant_id"),
        r("messages", "distributed", "primary key messages_pkey (id) does not include tenant_id"),
        r("organizational_roles", "distributed", "primary key organizational_roles_pkey (id) does not include tenant_id"),
        r("prompts", "distributed", "primary key prompts_pkey (id) does not include tenant_id"),
        r("prompts", "distributed", &trig("prompts")),
        r("tenants", "reference", ""),
        r("tool_categories", "reference", ""),
        r("tools", "reference", ""),
    ];
    expected.sort();
    assert_eq!(readiness(&mut c), expected);

    // distribute_all refuses cleanly without Citus, naming it.
    let e = c.query("SELECT * FROM vital_tenancy.distribute_all()", &[]);
    let msg =
        vital_tenancy_e2e::message(c.query("SELECT * FROM vital_tenancy.distribute_all()", &[]));
    assert_eq!(sqlstate(e), "55000");
    assert!(msg.contains("citus"), "{msg}");

    // prepare_for_citus: first the CONCURRENTLY index builds (\gexec), then the rest.
    let before = checksums(&mut c, &[]);
    let ddl: Vec<String> = c
        .query("SELECT ddl FROM vital_tenancy.prepare_for_citus() WHERE ddl LIKE 'CREATE UNIQUE INDEX CONCURRENTLY%'", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    // The seven primary keys (007 already made the three unique keys per tenant).
    assert_eq!(ddl.len(), 7);
    for d in &ddl {
        c.batch_execute(d).unwrap();
    }
    let steps: Vec<String> = c
        .query("SELECT step FROM vital_tenancy.prepare_for_citus()", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        steps
            .iter()
            .filter(|s| *s == "attach key using index")
            .count(),
        7
    );
    assert_eq!(
        steps
            .iter()
            .filter(|s| *s == "foreign key with tenant_id")
            .count(),
        3
    );
    assert_eq!(
        checksums(&mut c, &[]),
        before,
        "prepare_for_citus changed data"
    );

    // What is left: the triggers (the application's and 007's five reference guards) and
    // the auth.users foreign key, for the DBA to decide.
    let left: Vec<String> = readiness(&mut c)
        .into_iter()
        .filter(|x| !x.2.is_empty())
        .map(|x| x.2)
        .collect();
    assert_eq!(left.len(), 9, "{left:?}");
    assert!(
        left.iter()
            .all(|b| b.starts_with("trigger") || b.contains("auth.users")),
        "{left:?}"
    );
    // Idempotent: a third call does nothing more.
    let steps: Vec<String> = c
        .query("SELECT step FROM vital_tenancy.prepare_for_citus()", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(steps.iter().all(|s| s == "left for the DBA"), "{steps:?}");
    assert_eq!(checksums(&mut c, &[]), before);

    // The keys now include tenant_id, and the application and RLS still work.
    let pk: String = c
        .query_one(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'agents_pkey'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(pk, "PRIMARY KEY (tenant_id, id)");
    let blocking: i64 = c
        .query_one("SELECT count(*) FROM vital_tenancy.validate() WHERE severity = 'blocking' AND failing > 0", &[])
        .unwrap()
        .get(0);
    assert_eq!(blocking, 0);
    c.batch_execute(
        "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'vt_citus_app') THEN CREATE ROLE vt_citus_app LOGIN; END IF; END $$;
         GRANT USAGE ON SCHEMA public TO vt_citus_app;
         GRANT vital_tenancy_context TO vt_citus_app;
         GRANT SELECT, INSERT, DELETE ON public.messages TO vt_citus_app;",
    )
    .unwrap();
    let mut app = db.connect_as("vt_citus_app");
    let mut tx = app.transaction().unwrap();
    tx.execute(
        "SELECT vital_tenancy.set_tenant(vital_tenancy.digital_health_tenant_id())",
        &[],
    )
    .unwrap();
    let n: i64 = tx
        .query_one("SELECT count(*) FROM public.messages", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 6);
    // A reply must now be in its parent's tenant: the rewritten key enforces it.
    tx.execute(
        "INSERT INTO public.messages (role, content, parent_message_id)
         SELECT 'user', 'follow-up', id FROM public.messages WHERE parent_message_id IS NULL ORDER BY id LIMIT 1",
        &[],
    )
    .unwrap();
    tx.rollback().unwrap();
    let mut tx = app.transaction().unwrap();
    tx.execute(
        "SELECT vital_tenancy.set_tenant(vital_tenancy.pharma_tenant_id())",
        &[],
    )
    .unwrap();
    let n: i64 = tx
        .query_one("SELECT count(*) FROM public.messages", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}
