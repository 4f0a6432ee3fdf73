//! Citus readiness on the migrated real fixture (plain PostgreSQL: Citus is not in this
//! machine's registries): the exact blockers, prepare_for_citus applied with data
//! unchanged and the application still working, idempotence, distribute_all refusing.

use vital_tenancy_e2e::{checksums, sqlstate, FixtureDb};

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
    let (db, mut c) = FixtureDb::migrated("citus");

    let trig = |t: &str| {
        format!("trigger update_{t}_updated_at: Citus runs triggers on distributed tables only with citus.enable_unsafe_triggers")
    };
    // Migration 007 made the unique keys per tenant already; its reference guards are
    // triggers Citus must be told about.
    let guard = |fk: &str| {
        format!("trigger vt_tenant_ref_{fk}: Citus runs triggers on distributed tables only with citus.enable_unsafe_triggers")
    };
    let parent = "trigger vt_tenant_parent_guard: Citus runs triggers on distributed tables only with citus.enable_unsafe_triggers".to_string();
    let mut expected = vec![
        r("agent_tool_assignments", "distributed", &guard("agent_tool_assignments_agent_id_fkey")),
        r("agent_tool_assignments", "distributed", &guard("agent_tool_assignments_tool_id_fkey")),
        r("knowledge_base", "distributed", &guard("knowledge_base_source_id_fkey")),
        r("messages", "distributed", &guard("messages_parent_message_id_fkey")),
        r("organizational_roles", "distributed", &guard("organizational_roles_department_id_fkey")),
        // ... and the parent guards of the referenced distributed tables.
        r("agents", "distributed", &parent),
        r("knowledge_sources", "distributed", &parent),
        r("messages", "distributed", &parent),
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

    // A foreign key with every option PostgreSQL has: the rewrite must keep them all.
    c.batch_execute(
        "ALTER TABLE public.knowledge_base DROP CONSTRAINT knowledge_base_source_id_fkey;
         ALTER TABLE public.knowledge_base ADD CONSTRAINT knowledge_base_source_id_fkey FOREIGN KEY (source_id)
           REFERENCES public.knowledge_sources (id) ON UPDATE CASCADE ON DELETE SET NULL DEFERRABLE INITIALLY DEFERRED;",
    )
    .unwrap();

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

    let kept: String = c
        .query_one(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'knowledge_base_source_id_fkey'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        kept,
        "FOREIGN KEY (tenant_id, source_id) REFERENCES knowledge_sources(tenant_id, id) ON UPDATE CASCADE ON DELETE SET NULL (source_id) DEFERRABLE INITIALLY DEFERRED"
    );

    // What is left: the triggers (the application's, 007's five reference guards and
    // three parent guards of distributed tables) and the auth.users foreign key, for the
    // DBA to decide (008 sets the guards aside).
    let left: Vec<String> = readiness(&mut c)
        .into_iter()
        .filter(|x| !x.2.is_empty())
        .map(|x| x.2)
        .collect();
    assert_eq!(left.len(), 12, "{left:?}");
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

    // A sequence default on a column that is not bigint is reported (found through
    // pg_depend, not the default's text); a bigint one is not.
    c.batch_execute(
        "CREATE TABLE public.vt_seq (n serial, m bigserial, tenant_id uuid REFERENCES public.tenants (id));
         INSERT INTO public.vt_seq (tenant_id) VALUES (vital_tenancy.pharma_tenant_id());",
    )
    .unwrap();
    let seq: Vec<String> = c
        .query(
            "SELECT blocker FROM vital_tenancy.citus_readiness() WHERE table_name = 'public.vt_seq' AND blocker LIKE '%sequence%'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        seq,
        vec!["column n takes a sequence default but is not bigint".to_string()]
    );
}

/// The Citus shape on plain PostgreSQL (what CI can run): after citus_safe_policies()
/// no managed table keeps a restrictive policy, so Citus dropping `AS RESTRICTIVE` on
/// shards changes nothing; every policy read as permissive holds the boundary; an
/// ordinary role sees the same rows as before; a new application policy without the
/// boundary is reported; disable_tenant_rls() puts the application's policies back.
#[test]
fn citus_shape_holds_the_boundary_with_permissive_policies_only() {
    let (db, mut c) = FixtureDb::migrated("citus_shape");
    // A restrictive application policy is refused (Citus would make it permissive),
    // naming it, and nothing changes.
    c.batch_execute(
        r#"CREATE POLICY "narrow" ON public.messages AS RESTRICTIVE FOR SELECT USING (true)"#,
    )
    .unwrap();
    let q = "SELECT * FROM vital_tenancy.citus_safe_policies('public.messages')";
    assert_eq!(sqlstate(c.query(q, &[])), "0A000");
    let msg = vital_tenancy_e2e::message(c.query(q, &[]));
    assert!(
        msg.contains("restrictive policy \"narrow\" on public.messages"),
        "{msg}"
    );
    let shape: String = c
        .query_one("SELECT policy_shape FROM vital_tenancy.rls_tables WHERE tbl = 'public.messages'::regclass", &[])
        .unwrap()
        .get(0);
    assert_eq!(shape, "restrictive");
    c.batch_execute(r#"DROP POLICY "narrow" ON public.messages"#)
        .unwrap();
    // The sub-select policies are refused unless set aside, naming them (0A000).
    let e = c.query(
        "SELECT * FROM vital_tenancy.citus_safe_policies('public.agent_tool_assignments')",
        &[],
    );
    assert_eq!(sqlstate(e), "0A000");
    c.batch_execute(
        "SELECT count(*) FROM vital_tenancy.rls_tables r, vital_tenancy.citus_safe_policies(r.tbl, set_aside_subselects => true);
         SELECT count(*) FROM vital_tenancy.citus_safe_policies(vital_tenancy.tenants_table());",
    )
    .unwrap();
    let restrictive: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_policy WHERE NOT polpermissive
                AND (polrelid IN (SELECT tbl FROM vital_tenancy.rls_tables) OR polrelid = vital_tenancy.tenants_table())",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(restrictive, 0);
    let problems: Vec<String> = c
        .query(
            "SELECT problem FROM vital_tenancy.citus_boundary_status() WHERE problem IS NOT NULL",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(problems.is_empty(), "{problems:?}");
    let originals: i64 = c
        .query_one(
            "SELECT count(*) FROM vital_tenancy.originals WHERE action = 'set aside'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        originals, 2,
        "the two sub-select policies of agent_tool_assignments"
    );

    c.batch_execute(
        "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'vt_citus_shape_app') THEN CREATE ROLE vt_citus_shape_app LOGIN; END IF; END $$;
         GRANT vital_tenancy_context, authenticated TO vt_citus_shape_app;",
    )
    .unwrap();
    let mut app = db.connect_as("vt_citus_shape_app");
    let none: i64 = app
        .query_one("SELECT count(*) FROM public.prompts", &[])
        .unwrap()
        .get(0);
    assert_eq!(none, 0, "no context, no rows");
    let mut tx = app.transaction().unwrap();
    tx.execute(
        "SET LOCAL vital.tenant_id = 'f7aa6fd4-0af9-4706-8b31-034f1f7accda'",
        &[],
    )
    .unwrap();
    let r = tx
        .query_one(
            "SELECT count(*) FILTER (WHERE tenant_id = vital_tenancy.pharma_tenant_id()),
                    count(*) FILTER (WHERE tenant_id = vital_tenancy.platform_tenant_id()),
                    count(*) FILTER (WHERE tenant_id = vital_tenancy.digital_health_tenant_id())
               FROM public.prompts",
            &[],
        )
        .unwrap();
    assert_eq!(
        (r.get::<_, i64>(0), r.get::<_, i64>(1), r.get::<_, i64>(2)),
        (45, 1026, 0)
    );
    let deleted = tx
        .execute(
            "DELETE FROM public.prompts WHERE tenant_id = vital_tenancy.platform_tenant_id()",
            &[],
        )
        .unwrap();
    assert_eq!(deleted, 0, "a tenant cannot delete Platform's shared rows");
    tx.rollback().unwrap();

    // A policy the application adds later without the boundary is reported.
    c.batch_execute(r#"CREATE POLICY "late" ON public.prompts FOR SELECT USING (true)"#)
        .unwrap();
    let late: Vec<String> = c
        .query(
            "SELECT p FROM vital_tenancy.boundary_problems('public.prompts') p",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(late.len(), 1, "{late:?}");
    assert!(
        late[0].starts_with("policy \"late\" (FOR SELECT, permissive): its USING lacks"),
        "{late:?}"
    );
    c.batch_execute(r#"DROP POLICY "late" ON public.prompts"#)
        .unwrap();

    // disable_tenant_rls() restores the application's policies as they were.
    let before: i64 = c
        .query_one("SELECT count(*) FROM vital_tenancy.originals WHERE tbl = 'public.agent_tool_assignments'::regclass", &[])
        .unwrap()
        .get(0);
    assert!(before >= 2);
    c.batch_execute(
        "SELECT * FROM vital_tenancy.disable_tenant_rls('public.agent_tool_assignments')",
    )
    .unwrap();
    let back: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_policy WHERE polrelid = 'public.agent_tool_assignments'::regclass
                AND polname IN ('Users can view their agent tool assignments', 'Users can manage their agent tool assignments')
                AND pg_get_expr(polqual, polrelid) LIKE '%auth.uid()%' AND pg_get_expr(polqual, polrelid) NOT LIKE '%tenant_ids%'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(back, 2);
}

const PHARMA: &str = "f7aa6fd4-0af9-4706-8b31-034f1f7accda";
const DH: &str = "11111111-1111-1111-1111-111111111111";
const PLATFORM: &str = "00000000-0000-0000-0000-000000000001";

/// The three ways a request chooses its tenant, each run inside the request's
/// transaction.
fn context_paths(tenant: &str) -> [String; 3] {
    [
        format!("SET LOCAL vital.tenant_id = '{tenant}'"),
        format!("SELECT vital_tenancy.set_tenant('{tenant}')"),
        format!(
            "SELECT set_config('request.jwt.claims', '{{\"tenant_id\":\"{tenant}\"}}', true), vital_tenancy.pre_request()"
        ),
    ]
}

/// Per tenant table: (table, rows visible, rows of `other`, rows of Platform).
type TableReads = Vec<(String, i64, i64, i64)>;

/// [`TableReads`] in one transaction after `setup` (none: no context at all).
fn reads(
    c: &mut postgres::Client,
    tables: &[(String, String)],
    setup: Option<&str>,
    other: &str,
) -> TableReads {
    let mut tx = c.transaction().unwrap();
    if let Some(setup) = setup {
        tx.batch_execute(setup).unwrap();
    }
    let out = tables
        .iter()
        .map(|(t, col)| {
            let r = tx
                .query_one(
                    &format!(
                        "SELECT count(*), count(*) FILTER (WHERE {col} = '{other}'), count(*) FILTER (WHERE {col} = '{PLATFORM}') FROM {t}"
                    ),
                    &[],
                )
                .unwrap_or_else(|e| panic!("{t} after {setup:?}: {:?}", e.as_db_error()));
            (t.clone(), r.get(0), r.get(1), r.get(2))
        })
        .collect();
    tx.rollback().unwrap();
    out
}

/// Writes into another tenant and into Platform: nothing changes, an INSERT is
/// refused (42501). Returns (rows updated, rows deleted, insert SQLSTATE).
fn foreign_writes(
    c: &mut postgres::Client,
    setup: &str,
    other: &str,
) -> Vec<(String, u64, u64, String)> {
    [other, PLATFORM]
        .iter()
        .map(|target| {
            let mut tx = c.transaction().unwrap();
            tx.batch_execute(setup).unwrap();
            let updated = tx
                .execute(&format!("UPDATE public.prompts SET description = 'x' WHERE tenant_id = '{target}'"), &[])
                .unwrap();
            let deleted = tx
                .execute(&format!("DELETE FROM public.agent_tool_assignments WHERE tenant_id = '{target}'"), &[])
                .unwrap();
            let inserted = vital_tenancy_e2e::sqlstate(tx.execute(
                &format!(
                    "INSERT INTO public.prompts (name, display_name, description, tenant_id) VALUES ('vt-citus-probe', 'p', 'p', '{target}')"
                ),
                &[],
            ));
            tx.rollback().unwrap();
            (target.to_string(), updated, deleted, inserted)
        })
        .collect()
}

/// What a LOGIN application role reads, for both tenants and every context path, plus
/// a context-less request.
fn tenant_view(c: &mut postgres::Client, tables: &[(String, String)]) -> Vec<(String, TableReads)> {
    tenant_view_as(c, tables, "")
}

/// [`tenant_view`] with `prefix` run first in each transaction (e.g. a SET ROLE);
/// labelled without it.
fn tenant_view_as(
    c: &mut postgres::Client,
    tables: &[(String, String)],
    prefix: &str,
) -> Vec<(String, TableReads)> {
    let none = (!prefix.is_empty()).then_some(prefix);
    let mut out = vec![("no context".to_string(), reads(c, tables, none, PHARMA))];
    for (tenant, other) in [(PHARMA, DH), (DH, PHARMA)] {
        for setup in context_paths(tenant) {
            let r = reads(c, tables, Some(&format!("{prefix}{setup}")), other);
            out.push((setup, r));
        }
    }
    out
}

fn application_role(c: &mut postgres::Client, role: &str) {
    c.batch_execute(&format!(
        "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') THEN CREATE ROLE {role} LOGIN; END IF; END $$;
         GRANT vital_tenancy_context, authenticated TO {role};"
    ))
    .unwrap();
}

/// Pharmaceuticals' shard of prompts, the worker port it is on, and the other worker's.
fn pharma_prompts_shard(c: &mut postgres::Client) -> (i64, i32, i32) {
    let r = c
        .query_one(
            "SELECT s.shardid, n.nodeport, (SELECT nodeport FROM pg_dist_node WHERE nodeport <> n.nodeport AND groupid <> 0 AND isactive LIMIT 1)
               FROM pg_dist_shard s JOIN pg_dist_placement p USING (shardid) JOIN pg_dist_node n USING (groupid)
              WHERE s.shardid = get_shard_id_for_distribution_column('public.prompts', $1::text::uuid)",
            &[&PHARMA],
        )
        .unwrap();
    (r.get(0), r.get(1), r.get(2))
}

/// Move a shard (and its co-located ones) from one worker to another, writes held.
fn move_shard(c: &mut postgres::Client, shard: i64, from: i32, to: i32) {
    c.batch_execute(&format!(
        "SELECT citus_move_shard_placement({shard}, '127.0.0.1', {from}, '127.0.0.1', {to}, shard_transfer_mode => 'block_writes')"
    ))
    .unwrap();
}

/// The task counts `EXPLAIN sql` shows after `setup`, in one transaction.
fn task_counts(c: &mut postgres::Client, setup: &str, sql: &str) -> Vec<i64> {
    let mut tx = c.transaction().unwrap();
    // One statement at a time (see `unrouted_prompts`).
    for s in setup.split("; ") {
        tx.batch_execute(s).unwrap();
    }
    tx.query(&format!("EXPLAIN {sql}"), &[])
        .unwrap()
        .iter()
        .filter_map(|r| {
            let line: String = r.get(0);
            line.trim()
                .strip_prefix("Task Count: ")
                .map(|n| n.parse().unwrap())
        })
        .collect()
}

/// The prompts a request reads after `setup`, planned without routing (what the
/// policies alone give).
fn unrouted_prompts(c: &mut postgres::Client, setup: &str, filter: &str) -> Vec<String> {
    let mut tx = c.transaction().unwrap();
    // One statement at a time: Citus propagates a SET LOCAL to the workers as the
    // text of the whole query string it came in.
    tx.batch_execute("SET LOCAL vital_tenancy.citus_routing = off")
        .unwrap();
    tx.batch_execute(setup).unwrap();
    tx.query(
        &format!("SELECT id::text FROM public.prompts WHERE {filter} ORDER BY 1"),
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

const POINT: &str = "00000000-0000-0000-0000-0000000000aa";

/// Routing from the context: through every context path a tenant's read plans at
/// most 2 tasks (its shard and Platform's), its writes 1, and 32 with routing off;
/// prepared statements (generic and custom plans) executed for one tenant and then
/// another on one connection, directly and through PgBouncer, give each exactly
/// what the policies alone give it.
fn check_routing(c: &mut postgres::Client, app: &mut postgres::Client, db: &str, when: &str) {
    let shards: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_dist_shard WHERE logicalrelid = 'public.prompts'::regclass",
            &[],
        )
        .unwrap()
        .get(0);
    for t in [DH, PHARMA] {
        for setup in context_paths(t) {
            let read = task_counts(
                app,
                &setup,
                &format!("SELECT * FROM public.prompts WHERE id = '{POINT}'"),
            );
            assert!(
                read.len() == 1 && (1..=2).contains(&read[0]),
                "{when}, {setup}: a read plans {read:?} tasks"
            );
            let all = task_counts(app, &setup, "SELECT count(*) FROM public.prompts");
            assert!(all[0] <= 2, "{when}, {setup}: a scan plans {all:?} tasks");
            for write in [
                format!("UPDATE public.prompts SET name = name WHERE id = '{POINT}'"),
                format!("DELETE FROM public.prompts WHERE id = '{POINT}'"),
                format!("INSERT INTO public.prompts (id, tenant_id, name) VALUES ('{POINT}', '{t}', 'x')"),
            ] {
                assert_eq!(
                    task_counts(app, &setup, &write),
                    vec![1],
                    "{when}, {setup}: {write}"
                );
            }
            assert_eq!(
                task_counts(
                    app,
                    &format!("SET LOCAL vital_tenancy.citus_routing = off; {setup}"),
                    &format!("SELECT * FROM public.prompts WHERE id = '{POINT}'"),
                ),
                vec![shards],
                "{when}: without routing every shard"
            );
        }
    }
    // The server-side role with x-tenant-id (through pre_request, which carries the
    // context to the workers).
    let mut svc = postgres::Client::connect(
        &format!("host=127.0.0.1 port=54350 user=vt_citus_e2e_svc dbname={db}"),
        postgres::NoTls,
    )
    .unwrap();
    for t in [DH, PHARMA] {
        let setup = format!(
            "SELECT set_config('request.headers', '{{\"x-tenant-id\":\"{t}\"}}', true), vital_tenancy.pre_request()"
        );
        let read = task_counts(&mut svc, &setup, "SELECT count(*) FROM public.prompts");
        assert!(read[0] <= 2, "{when}, service as {t}: {read:?}");
        assert_eq!(
            task_counts(
                &mut svc,
                &setup,
                &format!("UPDATE public.prompts SET name = name WHERE id = '{POINT}'")
            ),
            vec![1],
            "{when}, service as {t}"
        );
        let mut tx = svc.transaction().unwrap();
        tx.batch_execute(&setup).unwrap();
        let routed: Vec<String> = tx
            .query("SELECT id::text FROM public.prompts ORDER BY 1", &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        drop(tx);
        let unrouted = unrouted_prompts(&mut svc, &setup, "true");
        assert!(!unrouted.is_empty());
        assert_eq!(routed, unrouted, "{when}, service as {t}");
    }

    // Outer joins: the constant goes where it filters as the policies do (the ON clause
    // of the nullable side), never turning the join into an inner one; a FULL JOIN's
    // sides are left unrouted. Each reads exactly what the policies alone give.
    let ids = |c: &mut postgres::Client, routing: &str, setup: &str, sql: &str| -> Vec<String> {
        let mut tx = c.transaction().unwrap();
        tx.batch_execute(&format!(
            "SET LOCAL vital_tenancy.citus_routing = {routing}"
        ))
        .unwrap();
        tx.batch_execute(setup).unwrap();
        tx.query(sql, &[])
            .unwrap()
            .iter()
            .map(|r| {
                format!(
                    "{:?}|{:?}",
                    r.get::<_, Option<String>>(0),
                    r.get::<_, Option<String>>(1)
                )
            })
            .collect()
    };
    for join in ["LEFT", "RIGHT", "FULL"] {
        let sql = format!(
            "SELECT a.id::text, p.id::text FROM public.agents a {join} JOIN public.prompts p
                 ON p.tenant_id = a.tenant_id AND p.name = a.name ORDER BY 1, 2"
        );
        for setup in context_paths(PHARMA) {
            let unrouted = ids(app, "off", &setup, &sql);
            assert!(
                unrouted.iter().any(|r| r.contains("None")),
                "{when}, {join} JOIN: rows without a match are part of the test"
            );
            assert_eq!(
                ids(app, "on", &setup, &sql),
                unrouted,
                "{when}, {join} JOIN, {setup}"
            );
            let n = task_counts(app, &setup, &sql);
            if join != "FULL" {
                assert!(
                    n.iter().all(|n| *n <= 2),
                    "{when}, {join} JOIN: {n:?} tasks"
                );
            }
        }
    }

    // Inside one statement: PL/pgSQL's cached plans, the tenant switched between two.
    c.batch_execute(
        "CREATE OR REPLACE FUNCTION public.vt_route_two(a uuid, b uuid) RETURNS SETOF bigint
         LANGUAGE plpgsql AS $$
         BEGIN
           EXECUTE format('SET LOCAL vital.tenant_id = %L', a);
           RETURN QUERY SELECT count(*) FROM public.prompts;
           EXECUTE format('SET LOCAL vital.tenant_id = %L', b);
           RETURN QUERY SELECT count(*) FROM public.prompts;
         END $$;
         GRANT EXECUTE ON FUNCTION public.vt_route_two(uuid, uuid) TO vt_citus_e2e_app;",
    )
    .unwrap();
    let two = |app: &mut postgres::Client, routing: &str| -> Vec<i64> {
        let mut tx = app.transaction().unwrap();
        tx.batch_execute(&format!(
            "SET LOCAL vital_tenancy.citus_routing = {routing}"
        ))
        .unwrap();
        let mut out = Vec::new();
        for (a, b) in [(DH, PHARMA), (PHARMA, DH), (DH, PHARMA)] {
            out.extend(
                tx.query(
                    "SELECT * FROM public.vt_route_two($1::text::uuid, $2::text::uuid)",
                    &[&a, &b],
                )
                .unwrap()
                .iter()
                .map(|r| r.get::<_, i64>(0)),
            );
        }
        out
    };
    let unrouted = two(app, "off");
    assert_ne!(unrouted[0], unrouted[1]);
    assert_eq!(
        two(app, "on"),
        unrouted,
        "{when}: the tenant switched inside a statement"
    );

    // Claims (or the service role's header) without pre_request(): they would not
    // reach the workers, so every statement on a tenant table says so, routing or not,
    // instead of reading nothing.
    for (client, routing) in [(&mut *app, "on"), (&mut svc, "off")] {
        let setting = if routing == "on" {
            format!(
                "SELECT set_config('request.jwt.claims', '{{\"tenant_id\":\"{PHARMA}\"}}', true)"
            )
        } else {
            format!(
                "SELECT set_config('request.headers', '{{\"x-tenant-id\":\"{PHARMA}\"}}', true)"
            )
        };
        for sql in [
            "SELECT count(*) FROM public.prompts",
            "SELECT count(*) FROM public.agents WHERE id = '00000000-0000-0000-0000-0000000000aa'",
            "UPDATE public.prompts SET name = name WHERE false",
        ] {
            let mut tx = client.transaction().unwrap();
            tx.batch_execute(&format!(
                "SET LOCAL vital_tenancy.citus_routing = {routing}"
            ))
            .unwrap();
            tx.batch_execute(&setting).unwrap();
            let r = tx.query(sql, &[]);
            let m = match &r {
                Err(e) => e.as_db_error().map(|d| {
                    (
                        d.code().code().to_string(),
                        d.hint().unwrap_or("").to_string(),
                    )
                }),
                Ok(_) => None,
            };
            assert!(
                matches!(&m, Some((code, hint)) if code == "55000" && hint.contains("db-pre-request")),
                "{when}, routing {routing}, {setting}: {sql}: {r:?}"
            );
        }
    }

    // No context: no tenant's shard at all.
    assert!(
        task_counts(app, "SELECT 1", "SELECT count(*) FROM public.prompts")
            .iter()
            .all(|n| *n <= 1),
        "{when}: no context"
    );

    // One connection, one prepared statement, tenant after tenant, through every
    // context path: generic plans (no parameters) and custom ones.
    let expected: Vec<(String, Vec<String>, Vec<String>)> = [DH, PHARMA, DH, PHARMA]
        .iter()
        .flat_map(|t| context_paths(t))
        .map(|setup| {
            let all = unrouted_prompts(app, &setup, "true");
            let active = unrouted_prompts(app, &setup, "status = 'active'");
            (setup, all, active)
        })
        .collect();
    assert!(expected.iter().all(|(_, all, _)| !all.is_empty()));
    assert_ne!(
        expected[0].1, expected[3].1,
        "the tenants read different rows"
    );
    for mode in ["auto", "force_custom_plan", "force_generic_plan"] {
        app.batch_execute(&format!("SET plan_cache_mode = {mode}"))
            .unwrap();
        let generic = app
            .prepare("SELECT id::text FROM public.prompts ORDER BY 1")
            .unwrap();
        let custom = app
            .prepare("SELECT id::text FROM public.prompts WHERE status = $1 ORDER BY 1")
            .unwrap();
        for round in 0..2 {
            for (setup, all, active) in &expected {
                let mut tx = app.transaction().unwrap();
                tx.batch_execute(setup).unwrap();
                let got: Vec<String> = tx
                    .query(&generic, &[])
                    .unwrap()
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                assert_eq!(&got, all, "{when}, {mode}, round {round}: {setup}");
                // Citus itself plans no generic multi-shard plan with parameters.
                if mode != "force_generic_plan" {
                    let got: Vec<String> = tx
                        .query(&custom, &[&"active"])
                        .unwrap()
                        .iter()
                        .map(|r| r.get(0))
                        .collect();
                    assert_eq!(&got, active, "{when}, {mode}, round {round}: {setup} ($1)");
                }
                tx.commit().unwrap();
            }
        }
    }
    app.batch_execute("RESET plan_cache_mode").unwrap();

    // Through PgBouncer (transaction pooling, one server connection): a statement one
    // client prepared on the server connection, executed by the next client for
    // another tenant.
    let bouncer =
        vital_tenancy_e2e::Bouncer::start_at("127.0.0.1", "54350", db, &["vt_citus_e2e_app"], 1);
    let mut a = bouncer.connect("vt_citus_e2e_app");
    let mut b = bouncer.connect("vt_citus_e2e_app");
    a.batch_execute("PREPARE vt_route_q AS SELECT id::text FROM public.prompts ORDER BY 1")
        .unwrap();
    let set_local = |t: &str| format!("SET LOCAL vital.tenant_id = '{t}'");
    let expect = |t: &str| {
        expected
            .iter()
            .find(|(s, _, _)| *s == set_local(t))
            .unwrap()
            .1
            .clone()
    };
    for (first, t) in [(true, DH), (false, PHARMA), (true, PHARMA), (false, DH)] {
        let client = if first { &mut a } else { &mut b };
        client.batch_execute("BEGIN").unwrap();
        client.batch_execute(&set_local(t)).unwrap();
        let rows = vital_tenancy_e2e::simple_rows(client, "EXECUTE vt_route_q").unwrap();
        client.batch_execute("COMMIT").unwrap();
        let got: Vec<String> = rows.into_iter().map(|r| r[0].clone().unwrap()).collect();
        assert_eq!(got, expect(t), "{when}: through PgBouncer as {t}");
    }
    a.batch_execute("DEALLOCATE vt_route_q").unwrap();
}

/// On a real 3-node Citus cluster (scripts/citus-cluster), when citus.so is installed:
/// the shipped scripts migrate the real fixture and 008 distributes it; every tenant
/// table is distributed by its tenant column (or is a reference table) with shards on
/// both workers; every shard placement holds the boundary; through each of the three
/// context paths a LOGIN application role reads exactly what it reads on one node,
/// nothing of the other tenant, and cannot write into it or into Platform; a
/// context-less request reads nothing; each request is routed to its tenants' shards
/// ([`check_routing`]); all of it again after a shard move and after
/// `isolate_tenant_to_new_shard`. Reports itself skipped, by name, where Citus is absent.
#[test]
fn citus_cluster_distribute_and_isolate_on_three_nodes() {
    if !vital_tenancy_e2e::server_has_library("citus") {
        eprintln!("SKIPPED citus_cluster_distribute_and_isolate_on_three_nodes: citus.so is not installed");
        return;
    }
    let root = vital_tenancy_e2e::repo_root();
    let run = |args: &[&str]| {
        let out = std::process::Command::new("bash")
            .args(args)
            .current_dir(&root)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    // The same fixture and shipped scripts on one node, for what each tenant reads.
    let (single, mut sc) = FixtureDb::migrated("citus_single");
    application_role(&mut sc, "vt_citus_e2e_app");

    let conn = run(&["scripts/citus-cluster", "start", "vt_citus_e2e", "--fresh"]);
    // Roles are cluster-wide and outlive the database: undo what an earlier run did.
    for port in ["54350", "54351", "54352"] {
        let mut n = postgres::Client::connect(
            &conn.replace("port=54350", &format!("port={port}")),
            postgres::NoTls,
        )
        .unwrap();
        n.batch_execute(
            "SET citus.enable_alter_role_propagation = off;
             DO $$ BEGIN
               IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated') THEN
                 ALTER ROLE authenticated NOLOGIN;
               END IF;
             END $$;",
        )
        .unwrap();
        if port == "54350" {
            n.batch_execute(
                "DO $$ BEGIN
                   IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated')
                      AND EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'vital_tenancy_context') THEN
                     REVOKE vital_tenancy_context FROM authenticated;
                   END IF;
                 END $$;",
            )
            .unwrap();
        }
    }
    let fixture = std::env::var("VT_FIXTURE").unwrap();
    run(&[&format!("{fixture}/load.sh"), &conn]);
    let mut c = postgres::Client::connect(&conn, postgres::NoTls).unwrap();
    c.batch_execute("CREATE EXTENSION vital_tenancy").unwrap();
    run(&[
        "scripts/migrate",
        &conn,
        "--no-backup",
        "--report",
        "/tmp/vt-citus-e2e-report.md",
    ]);

    // Every tenant table is distributed by its tenant column, with shards on both
    // workers; the registry and the shared catalogues are reference tables.
    let tables: Vec<(String, String)> = c
        .query(
            "SELECT tbl::text, quote_ident(tenant_column) FROM vital_tenancy.rls_tables ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(tables.len() >= 10, "{tables:?}");
    let layout: Vec<(String, String, String, i64)> = c
        .query(
            "SELECT r.tbl::text, p.partmethod::text, COALESCE(quote_ident(column_to_column_name(p.logicalrelid, p.partkey)), ''),
                    (SELECT count(DISTINCT pl.groupid) FROM pg_dist_shard s JOIN pg_dist_placement pl USING (shardid)
                      WHERE s.logicalrelid = r.tbl AND pl.groupid <> 0)
               FROM vital_tenancy.rls_tables r LEFT JOIN pg_dist_partition p ON p.logicalrelid = r.tbl ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    for ((t, col), (_, method, key, groups)) in tables.iter().zip(&layout) {
        match method.as_str() {
            "h" => {
                assert_eq!(key, col, "{t} distributed by its tenant column");
                assert_eq!(*groups, 2, "{t}: shards on both workers");
            }
            "n" => assert!(*groups >= 2, "{t}: a reference table on every worker"),
            other => panic!("{t} is not distributed ({other:?})"),
        }
    }
    let registry: String = c
        .query_one(
            "SELECT partmethod::text FROM pg_dist_partition WHERE logicalrelid = vital_tenancy.tenants_table()",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(registry, "n", "the tenants table is a reference table");

    let placements = |c: &mut postgres::Client| -> (i64, i64) {
        let r = c
            .query_one(
                "SELECT count(*), count(problem) FROM vital_tenancy.citus_boundary_status()",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    let (checked, problems) = placements(&mut c);
    assert!(checked > 200, "placements checked: {checked}");
    assert_eq!(problems, 0);

    application_role(&mut c, "vt_citus_e2e_app");
    // A server-side application role (the API routes' way: x-tenant-id).
    c.batch_execute(
        "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'vt_citus_e2e_svc') THEN CREATE ROLE vt_citus_e2e_svc LOGIN; END IF; END $$;
         GRANT vital_tenancy_context, vital_tenancy_service TO vt_citus_e2e_svc;",
    )
    .unwrap();
    // The tables the application role may read at all (the fixture grants nothing on
    // the organisation tables).
    let tables: Vec<(String, String)> = c
        .query(
            "SELECT tbl::text, quote_ident(tenant_column) FROM vital_tenancy.rls_tables
              WHERE has_table_privilege('vt_citus_e2e_app', tbl, 'SELECT') ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(tables.len() >= 8, "{tables:?}");
    let app_conn = conn.replace("user=postgres", "user=vt_citus_e2e_app");
    let mut app = postgres::Client::connect(&app_conn, postgres::NoTls).unwrap();
    let mut single_app = single.connect_as("vt_citus_e2e_app");

    let expected = tenant_view(&mut single_app, &tables);
    for (setup, rows) in &expected {
        for (t, _, other, platform) in rows {
            assert_eq!(*other, 0, "one node, {setup}: {t} shows the other tenant");
            if setup == "no context" {
                assert_eq!(*platform, 0, "one node, no context: {t}");
            }
        }
    }
    assert!(
        expected[1].1.iter().any(|(_, n, _, _)| *n > 0),
        "the tenant reads something on one node"
    );
    let writes_expected: Vec<_> = [(PHARMA, DH), (DH, PHARMA)]
        .iter()
        .flat_map(|(t, o)| {
            context_paths(t)
                .into_iter()
                .flat_map(|s| foreign_writes(&mut single_app, &s, o))
                .collect::<Vec<_>>()
        })
        .collect();
    for (target, updated, deleted, inserted) in &writes_expected {
        assert_eq!(
            (*updated, *deleted, inserted.as_str()),
            (0, 0, "42501"),
            "one node, into {target}"
        );
    }

    let check_cluster = |app: &mut postgres::Client, when: &str| {
        assert_eq!(
            tenant_view(app, &tables),
            expected,
            "{when}: the cluster reads what one node reads"
        );
        let writes: Vec<_> = [(PHARMA, DH), (DH, PHARMA)]
            .iter()
            .flat_map(|(t, o)| {
                context_paths(t)
                    .into_iter()
                    .flat_map(|s| foreign_writes(app, &s, o))
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(
            writes, writes_expected,
            "{when}: writes into another tenant or Platform"
        );
    };
    check_cluster(&mut app, "after 008");
    check_routing(&mut c, &mut app, "vt_citus_e2e", "after 008");

    // Move one shard of prompts to the other worker: the moved placement is created
    // again by Citus, from the table's policies.
    let (shard, from, to) = pharma_prompts_shard(&mut c);
    move_shard(&mut c, shard, from, to);
    let moved: i32 = c
        .query_one(
            "SELECT n.nodeport FROM pg_dist_placement p JOIN pg_dist_node n USING (groupid) WHERE p.shardid = $1",
            &[&shard],
        )
        .unwrap()
        .get(0);
    assert_eq!(moved, to);
    let (_, problems) = placements(&mut c);
    assert_eq!(problems, 0, "after the move");
    let mut app = postgres::Client::connect(&app_conn, postgres::NoTls).unwrap();
    check_cluster(&mut app, "after citus_move_shard_placement");
    check_routing(
        &mut c,
        &mut app,
        "vt_citus_e2e",
        "after citus_move_shard_placement",
    );

    // Pharmaceuticals on a shard of its own: routing follows Citus's new shard map.
    c.batch_execute(&format!(
        "SELECT isolate_tenant_to_new_shard('public.prompts', '{PHARMA}'::uuid, 'CASCADE', shard_transfer_mode => 'block_writes')"
    ))
    .unwrap();
    // ... and that shard on a worker of its own: the other one.
    let (shard, from, to) = pharma_prompts_shard(&mut c);
    let isolated: (i64, i64) = {
        let r = c
            .query_one(
                "SELECT shardminvalue::bigint, shardmaxvalue::bigint FROM pg_dist_shard WHERE shardid = $1",
                &[&shard],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(
        isolated.0, isolated.1,
        "Pharmaceuticals' shard holds one hash value"
    );
    move_shard(&mut c, shard, from, to);
    let (checked, problems) = placements(&mut c);
    assert!(checked > 200);
    assert_eq!(
        problems, 0,
        "after isolate_tenant_to_new_shard and the move"
    );
    let mut app = postgres::Client::connect(&app_conn, postgres::NoTls).unwrap();
    check_cluster(&mut app, "after isolate_tenant_to_new_shard");
    check_routing(
        &mut c,
        &mut app,
        "vt_citus_e2e",
        "after isolate_tenant_to_new_shard",
    );

    // PostgREST's NOLOGIN roles: Citus opens its worker connections as the current
    // role, so after SET ROLE authenticated every distributed query fails to log in.
    // (With a tenant context: without one, routing sends the query to no worker.)
    let mut tx = app.transaction().unwrap();
    tx.batch_execute(&format!("SET LOCAL vital.tenant_id = '{DH}'"))
        .unwrap();
    tx.batch_execute("SET LOCAL ROLE authenticated").unwrap();
    let m = vital_tenancy_e2e::message(tx.query_one("SELECT count(*) FROM public.prompts", &[]));
    assert!(m.contains("not permitted to log in"), "{m}");
    drop(tx);
    // The way documented in docs/citus.md: LOGIN on the workers only (role propagation
    // off: ALTER ROLE run on a worker otherwise reaches every node, the coordinator
    // too), the role trusted to carry the context there (its session on a worker is
    // the role itself), the coordinator still refusing it.
    for port in ["54351", "54352"] {
        let mut w = postgres::Client::connect(
            &conn.replace("port=54350", &format!("port={port}")),
            postgres::NoTls,
        )
        .unwrap();
        w.batch_execute(
            "SET citus.enable_alter_role_propagation = off; ALTER ROLE authenticated LOGIN",
        )
        .unwrap();
    }
    c.batch_execute("GRANT vital_tenancy_context TO authenticated")
        .unwrap();
    let refused = postgres::Client::connect(
        &conn.replace("user=postgres", "user=authenticated"),
        postgres::NoTls,
    );
    let refusal = refused
        .err()
        .and_then(|e| e.as_db_error().map(|d| d.message().to_string()))
        .unwrap_or_default();
    assert!(
        refusal.contains("not permitted to log in"),
        "the coordinator still refuses a login as authenticated: {refusal:?}"
    );
    let as_authenticated: Vec<(String, TableReads)> =
        tenant_view_as(&mut app, &tables, "SET LOCAL ROLE authenticated; ");
    assert_eq!(
        as_authenticated, expected,
        "after SET ROLE authenticated: what one node reads"
    );
}
