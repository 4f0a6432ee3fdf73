//! The shipped migration 000–006 on the real fixture, end to end: success criteria,
//! idempotence, the fixture variants, a failing 005, and revert_run.

use vital_tenancy_e2e::{checksums, migrate, psql_file, repo_root, FixtureDb};

const APP_TABLES: [&str; 12] = [
    "agent_tool_assignments",
    "agents",
    "business_functions",
    "departments",
    "knowledge_base",
    "knowledge_domains",
    "knowledge_sources",
    "messages",
    "organizational_roles",
    "prompts",
    "tool_categories",
    "tools",
];

fn install(db: &FixtureDb) -> postgres::Client {
    let mut c = db.dba();
    c.batch_execute("CREATE EXTENSION vital_tenancy").unwrap();
    c
}

fn distribution(c: &mut postgres::Client, table: &str) -> Vec<(String, i64)> {
    c.query(
        &format!("SELECT t.slug::text, count(*) FROM public.{table} x JOIN public.tenants t ON t.id = x.tenant_id GROUP BY 1 ORDER BY 1"),
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

fn d(pairs: &[(&str, i64)]) -> Vec<(String, i64)> {
    pairs.iter().map(|(s, n)| (s.to_string(), *n)).collect()
}

#[test]
fn full_migration_meets_the_success_criteria_and_is_idempotent() {
    let db = FixtureDb::new("mig_full");
    let mut c = install(&db);
    let before = checksums(&mut c, &[]);
    let (ok, out, err) = migrate(&db.name, &[]);
    assert!(ok, "migration failed:\n{err}");
    assert!(
        out.contains("# Migration report: vital-multi-tenant"),
        "{out}"
    );

    // Every row preserved: the data minus the columns the migration adds is unchanged
    // (tenants gains Pharmaceuticals; the org tables are new).
    let after = checksums(&mut c, &["tenant_id"]);
    let after_tools = checksums(&mut c, &["tenant_id", "category"]);
    for (t, sum) in &before {
        if t != "tenants" {
            let source = if t == "tools" { &after_tools } else { &after };
            let a = source.iter().find(|(x, _)| x == t).map(|(_, s)| s.clone());
            assert_eq!(a.as_deref(), Some(sum.as_str()), "{t} changed");
        }
    }

    // Every application table: tenant_id uuid NOT NULL, a valid FK to tenants, an
    // index, RLS enabled and forced.
    for t in APP_TABLES {
        let r = c
            .query_one(
                "SELECT a.attnotnull,
                        EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conrelid = a.attrelid AND k.contype = 'f'
                                 AND k.conkey = ARRAY[a.attnum] AND k.confrelid = 'public.tenants'::regclass AND k.convalidated),
                        EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = a.attrelid AND i.indkey[0] = a.attnum AND i.indisvalid),
                        c.relrowsecurity AND c.relforcerowsecurity
                   FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
                  WHERE a.attrelid = ('public.' || $1)::regclass AND a.attname = 'tenant_id'",
                &[&t],
            )
            .unwrap_or_else(|e| panic!("{t}: {e}"));
        let flags: (bool, bool, bool, bool) = (r.get(0), r.get(1), r.get(2), r.get(3));
        assert_eq!(
            flags,
            (true, true, true, true),
            "{t}: not null, fk, index, rls"
        );
    }

    // Each row's tenant, by the rules (see the classification tests for the derivation).
    assert_eq!(
        distribution(&mut c, "prompts"),
        d(&[
            ("digital-health-startup", 7),
            ("pharmaceuticals", 45),
            ("vital-platform", 1026)
        ])
    );
    assert_eq!(
        distribution(&mut c, "agents"),
        d(&[("digital-health-startup", 89), ("vital-platform", 166)])
    );
    assert_eq!(distribution(&mut c, "tools"), d(&[("vital-platform", 213)]));
    assert_eq!(
        distribution(&mut c, "tool_categories"),
        d(&[("vital-platform", 59)])
    );
    assert_eq!(
        distribution(&mut c, "knowledge_domains"),
        d(&[("vital-platform", 30)])
    );
    assert_eq!(
        distribution(&mut c, "knowledge_base"),
        d(&[("digital-health-startup", 8)])
    );
    // Assignments follow their agent.
    let mismatched: i64 = c
        .query_one(
            "SELECT count(*) FROM public.agent_tool_assignments x JOIN public.agents a ON a.id = x.agent_id WHERE a.tenant_id <> x.tenant_id",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(mismatched, 0);
    // Messages stay private: never Platform.
    assert_eq!(
        distribution(&mut c, "messages"),
        d(&[("digital-health-startup", 6)])
    );
    // tools.category follows category_id (and the trigger keeps it so).
    let mism: i64 = c
        .query_one(
            "SELECT count(*) FROM vital_tenancy.category_mismatches()",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(mism, 0);
    c.batch_execute(
        "UPDATE public.tool_categories SET name = name || ' (renamed)' WHERE name = 'Statistics'",
    )
    .unwrap();
    let mism: i64 = c
        .query_one(
            "SELECT count(*) FROM vital_tenancy.category_mismatches()",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(mism, 0, "renaming a category updates tools.category");
    c.batch_execute("UPDATE public.tool_categories SET name = replace(name, ' (renamed)', '')")
        .unwrap();
    // No blocking validation failure.
    let blocking: i64 = c
        .query_one("SELECT count(*) FROM vital_tenancy.validate() WHERE severity = 'blocking' AND failing > 0", &[])
        .unwrap()
        .get(0);
    assert_eq!(blocking, 0);

    // A second run changes nothing.
    let sums = checksums(&mut c, &[]);
    let runs: i64 = c
        .query_one("SELECT count(*) FROM vital_tenancy.migration_runs", &[])
        .unwrap()
        .get(0);
    let (ok, _, err) = migrate(&db.name, &[]);
    assert!(ok, "second run failed:\n{err}");
    assert_eq!(checksums(&mut c, &[]), sums, "a second run changed data");
    let runs2: i64 = c
        .query_one("SELECT count(*) FROM vital_tenancy.migration_runs", &[])
        .unwrap()
        .get(0);
    assert_eq!(runs, runs2);
}

/// The backfill writes only what must change: on the real fixture, each table the
/// migration gives a tenant column keeps the rows that stay in its majority tenant
/// exactly where they were (same ctid, same xmin: never rewritten), and the step
/// says how many it rewrote.
#[test]
fn rows_that_stay_in_the_majority_tenant_are_not_rewritten() {
    let db = FixtureDb::new("mig_untouched");
    let mut c = install(&db);
    let tables = [
        "agents",
        "prompts",
        "knowledge_sources",
        "knowledge_base",
        "messages",
        "tool_categories",
        "knowledge_domains",
    ];
    for t in tables {
        c.batch_execute(&format!(
            "CREATE TABLE public.vt_before_{t} AS SELECT id::text AS id, ctid::text AS tid, xmin::text AS txmin FROM public.{t}"
        ))
        .unwrap();
    }
    let (ok, _, err) = migrate(&db.name, &[]);
    assert!(ok, "migration failed:\n{err}");
    for t in tables {
        let r = c
            .query_one(
                &format!(
                    "SELECT s.default_tenant::text, s.rows_rewritten, s.rows_changed,
                            count(*) FILTER (WHERE x.tenant_id = s.default_tenant),
                            count(*) FILTER (WHERE x.tenant_id = s.default_tenant AND (x.ctid::text <> b.tid OR x.xmin::text <> b.txmin)),
                            count(*) FILTER (WHERE x.tenant_id IS DISTINCT FROM s.default_tenant),
                            count(*)
                       FROM public.{t} x JOIN public.vt_before_{t} b ON b.id = x.id::text
                      CROSS JOIN vital_tenancy.migration_steps s
                      WHERE s.tbl = 'public.{t}'::regclass
                      GROUP BY 1, 2, 3"
                ),
                &[],
            )
            .unwrap();
        let (default, rewritten, changed, majority, moved, others, total): (
            Option<String>,
            i64,
            i64,
            i64,
            i64,
            i64,
            i64,
        ) = (
            r.get(0),
            r.get(1),
            r.get(2),
            r.get(3),
            r.get(4),
            r.get(5),
            r.get(6),
        );
        assert!(
            default.is_some(),
            "{t}: the backfill added the column with a catalog default"
        );
        assert_eq!(
            moved, 0,
            "{t}: {moved} of the {majority} rows left in the catalog default were rewritten"
        );
        assert!(
            majority >= others,
            "{t}: the default is the majority ({majority} vs {others})"
        );
        assert_eq!(
            rewritten, others,
            "{t}: only the rows that classify elsewhere are rewritten"
        );
        assert_eq!(
            changed, total,
            "{t}: every row was given a tenant (and journaled)"
        );
    }
}

/// The catalog-default path with a classifier that cannot place every row: the column
/// gets the most frequent tenant; rows of another tenant are rewritten, rows placed
/// nowhere are written back to NULL (counted unclassified, not journaled); revert puts
/// every row back to no tenant.
#[test]
fn a_column_the_backfill_adds_holds_null_where_the_classifier_places_nothing() {
    const DH: &str = "11111111-1111-1111-1111-111111111111";
    const PHARMA: &str = "f7aa6fd4-0af9-4706-8b31-034f1f7accda";
    let db = FixtureDb::new("mig_default_nulls");
    let mut c = install(&db);
    c.batch_execute(&format!(
        "SELECT count(*) FROM vital_tenancy.ensure_tenants('public.tenants', '{{\"type\": \"industry\"}}');
         CREATE TABLE public.vt_parent (id int PRIMARY KEY, tenant_id uuid);
         INSERT INTO public.vt_parent VALUES (1, '{DH}'), (2, '{DH}'), (3, '{PHARMA}');
         CREATE TABLE public.vt_child (id bigint PRIMARY KEY, parent_id int);
         -- parents 4 and 5 do not exist: 20 of the 50 rows match nothing
         INSERT INTO public.vt_child SELECT g, g % 5 + 1 FROM generate_series(1, 50) g;"
    ))
    .unwrap();
    let opts = r#"{"column": "parent_id", "parent": "public.vt_parent", "match": ["id"]}"#;
    c.batch_execute(&format!(
        "CALL vital_tenancy.backfill('public.vt_child', 'parent', batch_size => 7, options => '{opts}', run_name => 'dn')"
    ))
    .unwrap();
    let r = c
        .query_one(
            "SELECT s.default_tenant::text, s.rows_changed, s.rows_rewritten, s.rows_failed,
                    (SELECT count(*) FROM vital_tenancy.migration_journal j WHERE j.run_id = s.run_id),
                    (SELECT count(*) FROM public.vt_child c LEFT JOIN public.vt_parent p ON p.id = c.parent_id
                      WHERE c.tenant_id IS DISTINCT FROM p.tenant_id)
               FROM vital_tenancy.migration_steps s WHERE s.tbl = 'public.vt_child'::regclass",
            &[],
        )
        .unwrap();
    let got: (Option<String>, i64, i64, i64, i64, i64) =
        (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5));
    // 20 rows → DH (the majority), 10 → Pharmaceuticals, 20 → nowhere.
    assert_eq!(got, (Some(DH.to_string()), 30, 30, 20, 30, 0));
    let run: i64 = c
        .query_one("SELECT vital_tenancy.finish_run('dn')", &[])
        .unwrap()
        .get(0);
    c.query("SELECT * FROM vital_tenancy.revert_run($1)", &[&run])
        .unwrap();
    let left: i64 = c
        .query_one(
            "SELECT count(*) FROM public.vt_child WHERE tenant_id IS NOT NULL",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
}

#[test]
fn fixture_variants_with_partial_tenant_columns_and_org_tables() {
    let db = FixtureDb::with_env(
        "mig_variant",
        &[("WITH_ORG_TABLES", "1"), ("WITH_PARTIAL_TENANT", "1")],
    );
    let mut c = install(&db);
    let orgs: i64 = c
        .query_one("SELECT count(*) FROM public.organizational_roles", &[])
        .unwrap()
        .get(0);
    assert_eq!(orgs, 132);
    let (ok, _, err) = migrate(&db.name, &[]);
    assert!(ok, "migration failed:\n{err}");
    // The real org rows are shared definitions; the pre-existing (all NULL) tenant
    // columns were filled like new ones.
    assert_eq!(
        distribution(&mut c, "organizational_roles"),
        d(&[("vital-platform", 132)])
    );
    assert_eq!(
        distribution(&mut c, "departments"),
        d(&[("vital-platform", 31)])
    );
    assert_eq!(
        distribution(&mut c, "agents"),
        d(&[("digital-health-startup", 89), ("vital-platform", 166)])
    );
    let nulls: i64 = c
        .query_one(
            "SELECT sum(missing)::bigint FROM vital_tenancy.tenant_id_coverage()",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(nulls, 0);
}

#[test]
fn a_failing_005_leaves_the_database_as_it_was() {
    let db = FixtureDb::new("mig_fail");
    let mut c = install(&db);
    let dir = repo_root().join("sql/migrations");
    for f in [
        "000_pre_migration_counts.sql",
        "001_schema_fixes.sql",
        "002_tenant_setup.sql",
        "003_platform_data.sql",
        "004_tenant_data.sql",
    ] {
        let (ok, err) = psql_file(&db.name, &dir.join(f));
        assert!(ok, "{f}: {err}");
    }
    // Plant a cross-tenant reference: a Digital Health assignment of a Platform
    // agent is fine, but a Pharmaceuticals message replying to a Digital Health one is not.
    c.batch_execute(
        "UPDATE public.messages SET tenant_id = vital_tenancy.pharma_tenant_id()
          WHERE id = (SELECT id FROM public.messages WHERE parent_message_id IS NOT NULL ORDER BY id LIMIT 1)",
    )
    .unwrap();
    let state = |c: &mut postgres::Client| {
        let sums = checksums(c, &[]);
        let cat: Vec<(String, bool, i64)> = c
            .query(
                "SELECT a.attrelid::regclass::text, a.attnotnull,
                        (SELECT count(*) FROM pg_constraint k WHERE k.conrelid = a.attrelid)
                   FROM pg_attribute a WHERE a.attname = 'tenant_id' AND a.attrelid::regclass::text NOT LIKE 'vital_tenancy.%'
                  ORDER BY 1",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        let snaps: i64 = c
            .query_one("SELECT count(*) FROM vital_tenancy.count_snapshots", &[])
            .unwrap()
            .get(0);
        (sums, cat, snaps)
    };
    let before = state(&mut c);
    let (ok, err) = psql_file(&db.name, &dir.join("005_validation.sql"));
    assert!(!ok, "005 must fail on a cross-tenant reference");
    assert!(
        err.contains("cross_tenant_references") && err.contains("public.messages"),
        "{err}"
    );
    assert_eq!(state(&mut c), before, "a failing 005 changed the database");
}

#[test]
fn revert_run_restores_the_pre_migration_tenant_values() {
    let db = FixtureDb::with_env("mig_revert", &[("WITH_PARTIAL_TENANT", "1")]);
    let mut c = install(&db);
    // The variant has nullable tenant_id columns, all NULL, before the migration.
    let before = checksums(&mut c, &[]);
    let (ok, _, err) = migrate(&db.name, &[]);
    assert!(ok, "migration failed:\n{err}");
    let run: i64 = c
        .query_one("SELECT max(run_id) FROM vital_tenancy.migration_runs", &[])
        .unwrap()
        .get(0);
    let reverted: Vec<(String, i64, i64)> = c
        .query(
            "SELECT table_name, reverted, skipped_changed_since FROM vital_tenancy.revert_run($1)",
            &[&run],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert!(reverted.iter().all(|r| r.2 == 0), "{reverted:?}");
    let agents = reverted
        .iter()
        .find(|r| r.0 == "public.agents")
        .map(|r| r.1);
    assert_eq!(agents, Some(255));
    // Tables that had a tenant column before are exactly as before, tenant values
    // included; the others differ only by the added columns.
    let after = checksums(&mut c, &[]);
    for t in ["agents", "knowledge_sources", "knowledge_base"] {
        let b = before.iter().find(|(x, _)| x == t).unwrap();
        let a = after.iter().find(|(x, _)| x == t).unwrap();
        assert_eq!(a, b, "{t} after revert");
    }
    let still_set: i64 = c
        .query_one(
            "SELECT count(*) FROM public.prompts WHERE tenant_id IS NOT NULL",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(still_set, 0);
    // Reverting again is a no-op.
    let again = c
        .query("SELECT * FROM vital_tenancy.revert_run($1)", &[&run])
        .unwrap();
    assert!(again.is_empty());
}

/// A parent lookup without a fallback can find nothing: those rows keep their NULL and
/// are counted as failed, the others get their parent's tenant and are journaled. Then
/// an overwrite run journals the old values it replaced, and revert_run puts them back.
#[test]
fn parent_backfill_without_fallback_and_an_overwrite_run_with_its_revert() {
    const DH: &str = "11111111-1111-1111-1111-111111111111";
    const PHARMA: &str = "f7aa6fd4-0af9-4706-8b31-034f1f7accda";
    const PLATFORM: &str = "00000000-0000-0000-0000-000000000001";
    let db = FixtureDb::new("mig_parent_nulls");
    let mut c = install(&db);
    c.batch_execute(&format!(
        "CREATE TABLE public.vt_parent (id int PRIMARY KEY, tenant_id uuid);
         INSERT INTO public.vt_parent VALUES (1, '{DH}'), (2, '{PHARMA}'), (3, '{PLATFORM}');
         CREATE TABLE public.vt_child (id bigint PRIMARY KEY, parent_id int, tenant_id uuid);
         -- parents 4 and 5 do not exist: 20 of the 50 rows match nothing
         INSERT INTO public.vt_child SELECT g, g % 5 + 1, NULL FROM generate_series(1, 50) g;"
    ))
    .unwrap();
    let opts = r#"{"column": "parent_id", "parent": "public.vt_parent", "match": ["id"]}"#;
    let may_null: String = c
        .query_one(
            "SELECT vital_tenancy.backfill_plan('public.vt_child', 'parent', $1::text::jsonb) ->> 'may_return_null'",
            &[&opts],
        )
        .unwrap()
        .get(0);
    assert_eq!(may_null, "true");
    c.batch_execute(&format!(
        "CALL vital_tenancy.backfill('public.vt_child', 'parent', batch_size => 7, options => '{opts}', run_name => 'nulls')"
    ))
    .unwrap();
    let counts = |c: &mut postgres::Client| -> (i64, i64) {
        let r = c
            .query_one(
                "SELECT count(*) FILTER (WHERE c.tenant_id IS NULL),
                        count(*) FILTER (WHERE c.tenant_id IS DISTINCT FROM p.tenant_id)
                   FROM public.vt_child c LEFT JOIN public.vt_parent p ON p.id = c.parent_id",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    // 20 rows without a parent stay NULL (and NULL is "not distinct" from no parent).
    assert_eq!(counts(&mut c), (20, 0));
    let (changed, failed, journaled, old_null): (i64, i64, i64, bool) = {
        let r = c
            .query_one(
                "SELECT s.rows_changed, s.rows_failed,
                        (SELECT count(*) FROM vital_tenancy.migration_journal j WHERE j.run_id = s.run_id),
                        (SELECT bool_and(j.old_tenant IS NULL) FROM vital_tenancy.migration_journal j WHERE j.run_id = s.run_id)
                   FROM vital_tenancy.migration_steps s JOIN vital_tenancy.migration_runs r USING (run_id)
                  WHERE r.name = 'nulls'",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1), r.get(2), r.get(3))
    };
    assert_eq!((changed, failed, journaled, old_null), (30, 20, 30, true));
    let metric_failed: i64 = c
        .query_one(
            "SELECT records_failed FROM vital_tenancy.migration_metrics
              WHERE migration_name = 'nulls:public.vt_child' AND phase = 'catch_up'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(metric_failed, 20);

    // Parent 1 moves to Platform; an overwrite run re-derives its 10 children.
    c.batch_execute(&format!(
        "UPDATE public.vt_parent SET tenant_id = '{PLATFORM}' WHERE id = 1"
    ))
    .unwrap();
    // (One statement per call: a multi-statement string is one transaction, and the
    // procedure must commit.)
    c.batch_execute(&format!(
        "CALL vital_tenancy.backfill('public.vt_child', 'parent', batch_size => 7, options => '{opts}',
                                     overwrite => true, run_name => 'over')"
    ))
    .unwrap();
    assert_eq!(counts(&mut c), (20, 0));
    let pairs: Vec<(String, String, i64)> = c
        .query(
            "SELECT j.old_tenant::text, j.new_tenant::text, count(*)
               FROM vital_tenancy.migration_journal j JOIN vital_tenancy.migration_runs r USING (run_id)
              WHERE r.name = 'over' GROUP BY 1, 2",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(pairs, vec![(DH.to_string(), PLATFORM.to_string(), 10)]);
    // A run is reverted once finished (revert_run refuses a running one).
    let run: i64 = c
        .query_one("SELECT vital_tenancy.finish_run('over')", &[])
        .unwrap()
        .get(0);
    let reverted: i64 = c
        .query_one(
            "SELECT reverted FROM vital_tenancy.revert_run($1) WHERE table_name = 'public.vt_child'",
            &[&run],
        )
        .unwrap()
        .get(0);
    assert_eq!(reverted, 10);
    let back_to_dh: i64 = c
        .query_one(
            &format!(
                "SELECT count(*) FROM public.vt_child WHERE parent_id = 1 AND tenant_id = '{DH}'"
            ),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(back_to_dh, 10);
}
