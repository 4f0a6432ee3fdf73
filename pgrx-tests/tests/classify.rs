//! Classifiers on the real fixture: exact counts per rule (derived independently in
//! SQL), rule cache invalidation across backends, and use by an application role.

use std::collections::BTreeMap;
use vital_tenancy_e2e::{sqlstate, FixtureDb};

fn setup(tag: &str) -> (FixtureDb, postgres::Client) {
    let db = FixtureDb::new(tag);
    let mut c = db.dba();
    c.batch_execute("CREATE EXTENSION vital_tenancy").unwrap();
    c.query(
        r#"SELECT * FROM vital_tenancy.ensure_tenants('public.tenants', '{"type": "industry"}')"#,
        &[],
    )
    .unwrap();
    (db, c)
}

/// (tenant slug, rule) -> rows, from preview_classification.
fn preview(c: &mut postgres::Client, kind: &str, table: &str) -> BTreeMap<(String, String), i64> {
    c.query(
        "SELECT t.slug::text, p.rule, p.row_count
           FROM vital_tenancy.preview_classification($1, $2::text::regclass) p
           JOIN public.tenants t ON t.id = p.tenant_id",
        &[&kind, &table],
    )
    .unwrap()
    .iter()
    .map(|r| ((r.get(0), r.get(1)), r.get(2)))
    .collect()
}

fn expect(pairs: &[(&str, &str, i64)]) -> BTreeMap<(String, String), i64> {
    pairs
        .iter()
        .map(|(t, r, n)| ((t.to_string(), r.to_string()), *n))
        .collect()
}

/// The default rules written again as plain SQL (normalisation with regexp_replace),
/// independently of the Rust code, to cross-check every fixture row.
const NORM: &str = "regexp_replace(lower(btrim(%s)), '[[:space:]-]+', '_', 'g')";

fn norm(col: &str) -> String {
    NORM.replace("%s", col)
}

#[test]
fn fixture_rows_per_rule_match_an_independent_sql_derivation() {
    let (_db, mut c) = setup("classify_counts");

    // Prompts. Independent derivation: CASE in rule order over normalised domains.
    let d = norm("p.domain");
    let independent = format!(
        "SELECT count(*) FROM public.prompts p WHERE vital_tenancy.classify_prompt_tenant(p.name, p.domain, p.created_by, NULL) IS DISTINCT FROM
           CASE WHEN p.name ILIKE '%prism%' OR {d} IN ('regulatory_affairs', 'clinical_research', 'pharmacovigilance')
                  THEN vital_tenancy.pharma_tenant_id()
                WHEN {d} IN ('digital_health', 'digital_medicine') THEN vital_tenancy.digital_health_tenant_id()
                WHEN p.created_by IS NULL THEN vital_tenancy.platform_tenant_id()
                ELSE vital_tenancy.digital_health_tenant_id() END"
    );
    let disagree: i64 = c.query_one(&independent, &[]).unwrap().get(0);
    assert_eq!(
        disagree, 0,
        "prompts where Rust and the SQL derivation disagree"
    );
    // By hand from NOTES.md: 39 PRISM names + 7 pharma-domain prompts (6
    // clinical-research, 1 regulatory_affairs) - 1 that is both = 45; digital: 6
    // digital-health + 1 digital_health = 7; the rest have created_by NULL: 1026.
    assert_eq!(
        preview(&mut c, "prompt", "public.prompts"),
        expect(&[
            ("pharmaceuticals", "pharma_name_or_domain", 45),
            ("digital-health-startup", "digital_health_domain", 7),
            ("vital-platform", "system_prompt", 1026),
        ])
    );

    // Agents: tiers 1 (7) and 2 (159) are Platform; no tier-3 agent has a domain in
    // either list (NOTES: none matches), so 88 fall to the default; the custom agent
    // has no tier.
    let kd = norm("k");
    let independent = format!(
        "SELECT count(*) FROM public.agents a WHERE vital_tenancy.classify_agent_tenant(a.tier, a.knowledge_domains) IS DISTINCT FROM
           CASE WHEN a.tier IN (0, 1, 2) THEN vital_tenancy.platform_tenant_id()
                WHEN EXISTS (SELECT 1 FROM unnest(a.knowledge_domains) k WHERE {kd} IN ('digital_health', 'telemedicine', 'wearables'))
                  THEN vital_tenancy.digital_health_tenant_id()
                WHEN EXISTS (SELECT 1 FROM unnest(a.knowledge_domains) k WHERE {kd} IN ('regulatory_affairs', 'clinical_trials', 'pharmacovigilance'))
                  THEN vital_tenancy.pharma_tenant_id()
                ELSE vital_tenancy.digital_health_tenant_id() END"
    );
    let disagree: i64 = c.query_one(&independent, &[]).unwrap().get(0);
    assert_eq!(
        disagree, 0,
        "agents where Rust and the SQL derivation disagree"
    );
    assert_eq!(
        preview(&mut c, "agent", "public.agents"),
        expect(&[
            ("vital-platform", "platform_tier", 166),
            ("digital-health-startup", "default", 88),
            ("digital-health-startup", "default (no tier)", 1),
        ])
    );

    // Knowledge chunks and sources: two digital_health rows each; no domain in the
    // pharma or platform lists (regulatory_affairs is not "regulatory").
    let kd = norm("x.domain");
    let tg = norm("g");
    for table in ["public.knowledge_base", "public.knowledge_sources"] {
        let independent = format!(
            "SELECT count(*) FROM {table} x WHERE vital_tenancy.classify_knowledge_tenant(x.domain, x.tags) IS DISTINCT FROM
               CASE WHEN {kd} = 'digital_health' OR EXISTS (SELECT 1 FROM unnest(x.tags) g WHERE {tg} = 'digital_medicine')
                      THEN vital_tenancy.digital_health_tenant_id()
                    WHEN {kd} IN ('regulatory', 'clinical_trials', 'pharmacovigilance') THEN vital_tenancy.pharma_tenant_id()
                    WHEN {kd} IN ('general_medicine', 'healthcare_standards') THEN vital_tenancy.platform_tenant_id()
                    ELSE vital_tenancy.digital_health_tenant_id() END"
        );
        let disagree: i64 = c.query_one(&independent, &[]).unwrap().get(0);
        assert_eq!(disagree, 0, "{table}: Rust and the SQL derivation disagree");
        assert_eq!(
            preview(&mut c, "knowledge", table),
            expect(&[
                ("digital-health-startup", "digital_health_domain_or_tag", 2),
                ("digital-health-startup", "default", 6),
            ]),
            "{table}"
        );
    }

    // Tools: none has a tenant yet, so all 213 are shared definitions.
    assert_eq!(
        preview(&mut c, "tool", "public.tools"),
        expect(&[("vital-platform", "shared_definition", 213)])
    );
}

#[test]
fn rule_changes_reach_other_backends_without_reconnecting() {
    let (db, mut admin) = setup("classify_cache");
    let mut other = db.dba();
    let q = "SELECT t.slug::text FROM public.tenants t
              WHERE t.id = vital_tenancy.classify_agent_tenant(3, ARRAY['FDA regulations'])";
    // `other` caches the built-in rules.
    let slug: String = other.query_one(q, &[]).unwrap().get(0);
    assert_eq!(slug, "digital-health-startup");

    let set = r#"SELECT vital_tenancy.set_rules('agent', '{"rules": [{"name": "fda", "tenant": "f7aa6fd4-0af9-4706-8b31-034f1f7accda", "knowledge_domains_any": ["fda_regulations"]}], "default_tenant": "11111111-1111-1111-1111-111111111111"}')"#;
    // Not yet committed: the other backend keeps the old rules.
    admin.batch_execute("BEGIN").unwrap();
    admin.query(set, &[]).unwrap();
    let slug: String = admin.query_one(q, &[]).unwrap().get(0);
    assert_eq!(
        slug, "pharmaceuticals",
        "the writing backend sees its change at once"
    );
    let slug: String = other.query_one(q, &[]).unwrap().get(0);
    assert_eq!(
        slug, "digital-health-startup",
        "uncommitted rules are invisible elsewhere"
    );
    admin.batch_execute("COMMIT").unwrap();
    let slug: String = other.query_one(q, &[]).unwrap().get(0);
    assert_eq!(
        slug, "pharmaceuticals",
        "committed rules reach the other backend"
    );

    // A rolled-back reset leaves the new rules in force, everywhere.
    admin.batch_execute("BEGIN").unwrap();
    admin
        .query("SELECT vital_tenancy.reset_rules('agent')", &[])
        .unwrap();
    let slug: String = admin.query_one(q, &[]).unwrap().get(0);
    assert_eq!(slug, "digital-health-startup");
    admin.batch_execute("ROLLBACK").unwrap();
    let slug: String = admin.query_one(q, &[]).unwrap().get(0);
    assert_eq!(
        slug, "pharmaceuticals",
        "rollback restores the cached rules"
    );

    // A direct DELETE by a DBA is seen too (the trigger invalidates).
    admin
        .batch_execute("DELETE FROM vital_tenancy.classification_rules")
        .unwrap();
    let slug: String = other.query_one(q, &[]).unwrap().get(0);
    assert_eq!(slug, "digital-health-startup");
}

#[test]
fn application_role_classifies_but_cannot_change_rules() {
    let (db, mut c) = setup("classify_role");
    c.batch_execute(
        "DO $$ BEGIN PERFORM pg_catalog.pg_advisory_xact_lock(74657374); -- roles are cluster-wide: one test at a time creates them
           IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'vt_e2e_classifier') THEN
             CREATE ROLE vt_e2e_classifier LOGIN;
           END IF;
         END $$",
    )
    .unwrap();
    c.batch_execute("GRANT USAGE ON SCHEMA public TO vt_e2e_classifier")
        .unwrap();
    c.batch_execute("GRANT SELECT ON public.prompts, public.tenants TO vt_e2e_classifier")
        .unwrap();
    let mut app = db.connect_as("vt_e2e_classifier");
    let n: i64 = app
        .query_one(
            "SELECT count(*) FROM public.prompts p
              WHERE vital_tenancy.classify_prompt_tenant(p.name, p.domain, p.created_by, NULL) = vital_tenancy.pharma_tenant_id()",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 45);
    let rule: String = app
        .query_one(
            "SELECT rule FROM vital_tenancy.explain_tenant('prompt', '{\"name\": \"PRISM\"}')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(rule, "pharma_name_or_domain");
    let r = app.query("SELECT vital_tenancy.reset_rules('prompt')", &[]);
    assert_eq!(sqlstate(r), "42501");
    let r = app.query("DELETE FROM vital_tenancy.classification_rules", &[]);
    assert_eq!(sqlstate(r), "42501");
}
