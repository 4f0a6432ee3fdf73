-- Tenant classifiers on the real VITAL fixture: rules, order conflicts,
-- normalisation, tiers, jsonb rows, explain/preview, configurable rules.
\set ON_ERROR_ROLLBACK on
\set SHOW_CONTEXT never
begin;
create extension vital_tenancy;
select * from vital_tenancy.ensure_tenants('public.tenants', '{"type": "industry"}') where action = 'created';
-- Show tenants by slug so the output reads as rules.
create temp view t(id, slug) as select id, slug::text from public.tenants;

-- Prompt rules, in order: (1) PRISM name or pharma domain, (2) digital-health domain,
-- (3) system prompt (no creator, or flagged), (4) default Digital Health.
select v.label, t.slug
  from (values
    ('1 PRISM name',               vital_tenancy.classify_prompt_tenant('My PrIsM prompt', 'general', 'aaaaaaaa-0000-4000-8000-000000000001', false)),
    ('1 pharma domain, kebab',     vital_tenancy.classify_prompt_tenant('x', 'Clinical-Research', 'aaaaaaaa-0000-4000-8000-000000000001', false)),
    ('1 beats system prompt',      vital_tenancy.classify_prompt_tenant('PRISM', 'general', NULL, true)),
    ('2 digital domain, spaced',   vital_tenancy.classify_prompt_tenant('x', '  Digital  Health ', 'aaaaaaaa-0000-4000-8000-000000000001', false)),
    ('2 beats system prompt',      vital_tenancy.classify_prompt_tenant('x', 'digital_medicine', NULL, true)),
    ('3 created_by NULL',          vital_tenancy.classify_prompt_tenant('x', 'general', NULL, NULL)),
    ('3 flagged system',           vital_tenancy.classify_prompt_tenant('x', 'general', 'aaaaaaaa-0000-4000-8000-000000000001', true)),
    ('4 default',                  vital_tenancy.classify_prompt_tenant('x', 'general', 'aaaaaaaa-0000-4000-8000-000000000001', false)),
    ('all NULL',                   vital_tenancy.classify_prompt_tenant(NULL, NULL, NULL, NULL))
  ) v(label, tenant) join t on t.id = v.tenant order by v.label;

-- Knowledge rules: (1) digital_health domain or digital_medicine tag, (2) pharma
-- domains, (3) platform domains, (4) default.
select v.label, t.slug
  from (values
    ('1 domain',            vital_tenancy.classify_knowledge_tenant('digital-health', '{}')),
    ('1 tag beats domain',  vital_tenancy.classify_knowledge_tenant('regulatory', array['FDA', 'Digital Medicine'])),
    ('2 pharma domain',     vital_tenancy.classify_knowledge_tenant('Clinical Trials', NULL)),
    ('3 platform domain',   vital_tenancy.classify_knowledge_tenant('healthcare_standards', array[NULL])),
    ('4 default',           vital_tenancy.classify_knowledge_tenant('regulatory_affairs', '{}')),
    ('all NULL',            vital_tenancy.classify_knowledge_tenant(NULL, NULL))
  ) v(label, tenant) join t on t.id = v.tenant order by v.label;

-- Agent rules: (1) tier 0-2, (2) digital-health domain, (3) pharma domain, (4) default.
select v.label, t.slug
  from (values
    ('1 tier 0 (Core), int',           vital_tenancy.classify_agent_tenant(0, array['pharmacovigilance'])),
    ('1 tier text spellings',          vital_tenancy.classify_agent_tenant('Tier 2', NULL)),
    ('2 digital beats pharma',         vital_tenancy.classify_agent_tenant(3, array['Pharmacovigilance', ' TeleMedicine '])),
    ('3 pharma domain',                vital_tenancy.classify_agent_tenant('tier_3', array['clinical trials'])),
    ('4 default',                      vital_tenancy.classify_agent_tenant(3, array['FDA regulations'])),
    ('no tier: rules 2-4 decide',      vital_tenancy.classify_agent_tenant('gold', array['regulatory-affairs'])),
    ('tier 4 is no tier',              vital_tenancy.classify_agent_tenant(4, NULL)),
    ('all NULL',                       vital_tenancy.classify_agent_tenant(NULL::int, NULL))
  ) v(label, tenant) join t on t.id = v.tenant order by v.label;

-- Every accepted tier spelling is tier 2 (Platform); the rest are no tier.
select s as tier, (vital_tenancy.explain_tenant('agent', jsonb_build_object('tier', s))).rule
  from unnest(array['2', 'tier_2', 'Tier 2', 'TIER-2', 'tier2', ' tier 2 ', 'tier 4', 'two', '', 'Core']) s;
select (vital_tenancy.explain_tenant('agent', '{"tier": 2}')).rule as int_tier,
       (vital_tenancy.explain_tenant('agent', '{"tier": 2.5}')).rule as fractional_tier;

-- jsonb rows: missing keys are NULL, extra keys ignored.
select t.slug from t where t.id = vital_tenancy.classify_prompt_tenant('{"name": "PRISM", "unknown": [1]}');
select t.slug from t where t.id = vital_tenancy.classify_prompt_tenant('{}'::jsonb);
select t.slug from t where t.id = vital_tenancy.classify_prompt_tenant('{"created_by": "aaaaaaaa-0000-4000-8000-000000000001"}'::jsonb);
select t.slug from t where t.id = vital_tenancy.classify_knowledge_tenant('{"tags": ["x", null, "digital_medicine"]}'::jsonb);
select t.slug from t where t.id = vital_tenancy.classify_agent_tenant('{"tier": "tier_1"}'::jsonb);
select t.slug from t where t.id = vital_tenancy.classify_agent_tenant(NULL::jsonb);
-- The real rows, as to_jsonb(row), agree with the column form.
select count(*) as prompts_disagreeing from public.prompts p
 where vital_tenancy.classify_prompt_tenant(to_jsonb(p)) <> vital_tenancy.classify_prompt_tenant(p.name, p.domain, p.created_by, NULL);
select count(*) as agents_disagreeing from public.agents a
 where vital_tenancy.classify_agent_tenant(to_jsonb(a)) <> vital_tenancy.classify_agent_tenant(a.tier, a.knowledge_domains);

-- Bad rows: ERROR 22023 naming the field (22P02 for a malformed uuid).
select vital_tenancy.classify_prompt_tenant('[1, 2]'::jsonb);
\echo :LAST_ERROR_SQLSTATE
select vital_tenancy.classify_agent_tenant('{"tier": [2]}'::jsonb);
\echo :LAST_ERROR_SQLSTATE
select vital_tenancy.classify_prompt_tenant('{"name": 42}'::jsonb);
\echo :LAST_ERROR_SQLSTATE
select vital_tenancy.classify_prompt_tenant('{"is_system_prompt": "yes"}'::jsonb);
\echo :LAST_ERROR_SQLSTATE
select vital_tenancy.classify_knowledge_tenant('{"tags": "digital_medicine"}'::jsonb);
\echo :LAST_ERROR_SQLSTATE
select vital_tenancy.classify_agent_tenant('{"knowledge_domains": ["a", 1]}'::jsonb);
\echo :LAST_ERROR_SQLSTATE
select vital_tenancy.classify_prompt_tenant('{"created_by": "not-a-uuid"}'::jsonb);
\echo :LAST_ERROR_SQLSTATE

-- Huge strings work (8 MB name).
select t.slug from t where t.id = vital_tenancy.classify_prompt_tenant(repeat('x', 8000000) || 'prism', NULL, NULL, NULL);

-- Tools, suites, categories.
select t.slug from t where t.id = vital_tenancy.classify_tool_tenant(NULL);
select vital_tenancy.classify_tool_tenant(vital_tenancy.pharma_tenant_id()) = vital_tenancy.pharma_tenant_id() as keeps_own;
select d, vital_tenancy.map_domain_to_suite(d)
  from unnest(array['regulatory_affairs', 'Clinical-Research', 'pharmacovigilance', 'market_access', 'digital-health', 'digital_medicine', 'general']) d;
select vital_tenancy.tool_category_name(c.id) = c.name as same_name, vital_tenancy.tool_category_name(NULL) is null as null_is_null
  from public.tool_categories c order by c.name limit 1;
select vital_tenancy.tool_category_name('00000000-0000-0000-0000-0000000000ff') is null as unknown_is_null;

-- explain_tenant names the rule; preview_classification is a dry run per table.
select * from vital_tenancy.explain_tenant('prompt', '{"name": "PRISM RULES", "created_by": null}');
select * from vital_tenancy.explain_tenant('tool', '{"tenant_id": null}');
select * from vital_tenancy.explain_tenant('widget', '{}');
\echo :LAST_ERROR_SQLSTATE
select tenant_name, rule, row_count, cardinality(sample_ids) as samples
  from vital_tenancy.preview_classification('prompt', 'public.prompts');
select tenant_name, rule, row_count from vital_tenancy.preview_classification('agent', 'public.agents');
select tenant_name, rule, row_count from vital_tenancy.preview_classification('knowledge', 'public.knowledge_base');
select tenant_name, rule, row_count from vital_tenancy.preview_classification('knowledge', 'public.knowledge_sources');
select tenant_name, rule, row_count from vital_tenancy.preview_classification('tool', 'public.tools');
select * from vital_tenancy.preview_classification('prompt', 'public.no_such_table');
\echo :LAST_ERROR_SQLSTATE

-- Configurable rules: set, used at once, validated, reset.
select kind, is_default, jsonb_array_length(rules -> 'rules') as rules from vital_tenancy.rules();
select vital_tenancy.set_rules('agent', '{"rules": [
    {"name": "fda_is_pharma", "tenant": "f7aa6fd4-0af9-4706-8b31-034f1f7accda", "knowledge_domains_any": ["FDA regulations"]},
    {"name": "core", "tenant": "00000000-0000-0000-0000-000000000001", "tier_in": [0]}],
  "default_tenant": "11111111-1111-1111-1111-111111111111"}');
select kind, is_default from vital_tenancy.rules() where kind = 'agent';
select t.slug from t where t.id = vital_tenancy.classify_agent_tenant(3, array['fda_regulations']);
select tenant_name, rule, row_count from vital_tenancy.preview_classification('agent', 'public.agents');
-- Invalid rules: ERROR 22023 naming the field; the rules in force stay.
select vital_tenancy.set_rules('agent', '{"rules": [{"name": "x", "tenant": "00000000-0000-0000-0000-000000000001", "domains": ["a"]}], "default_tenant": "11111111-1111-1111-1111-111111111111"}');
\echo :LAST_ERROR_SQLSTATE
select vital_tenancy.set_rules('agent', '{"rules": [{"name": "x", "tenant": "00000000-0000-0000-0000-000000000001", "tier_in": "0"}], "default_tenant": "11111111-1111-1111-1111-111111111111"}');
\echo :LAST_ERROR_SQLSTATE
select vital_tenancy.set_rules('agent', '{"rules": [{"name": "x", "tenant": "99999999-0000-0000-0000-000000000000", "tier_in": [0]}], "default_tenant": "11111111-1111-1111-1111-111111111111"}');
\echo :LAST_ERROR_SQLSTATE
select vital_tenancy.set_rules('prompt', '{"rules": [{"name": "x", "tenant": "00000000-0000-0000-0000-000000000001", "tier_in": [0]}], "default_tenant": "11111111-1111-1111-1111-111111111111"}');
\echo :LAST_ERROR_SQLSTATE
select vital_tenancy.set_rules('agent', '"rules"');
\echo :LAST_ERROR_SQLSTATE
select vital_tenancy.set_rules('tool', '{}');
\echo :LAST_ERROR_SQLSTATE
select vital_tenancy.set_rules('widget', '{}');
\echo :LAST_ERROR_SQLSTATE
-- Writing the table directly is validated too.
update vital_tenancy.classification_rules set rules = '{"rules": 1, "default_tenant": "x"}' where kind = 'agent';
\echo :LAST_ERROR_SQLSTATE
select t.slug from t where t.id = vital_tenancy.classify_agent_tenant(3, array['fda_regulations']);
select vital_tenancy.reset_rules('agent');
select kind, is_default from vital_tenancy.rules() where kind = 'agent';
select t.slug from t where t.id = vital_tenancy.classify_agent_tenant(3, array['fda_regulations']);
-- Direct writes name only tenants that exist, as set_rules checks (F15).
insert into vital_tenancy.classification_rules (kind, rules)
values ('prompt', '{"rules": [], "default_tenant": "99999999-9999-9999-9999-999999999999"}');
\echo :LAST_ERROR_SQLSTATE
select vital_tenancy.classify_prompt_tenant('x', 'general', null, false) = vital_tenancy.platform_tenant_id() as still_built_in;
-- A uuid PostgreSQL would not read is no tenant (F14).
select vital_tenancy.set_rules('prompt', '{"rules": [], "default_tenant": "----11111111111111111111111111111111"}');
\echo :LAST_ERROR_SQLSTATE
-- In a parallel query of a transaction that has written (this one has), the
-- classifiers run in the leader: they read the rules through SPI, which a parallel
-- worker could not do here.
set local parallel_setup_cost = 0;
set local parallel_tuple_cost = 0;
set local min_parallel_table_scan_size = 0;
-- (force_parallel_mode is called debug_parallel_query from PostgreSQL 16 on)
select set_config(case when current_setting('server_version_num')::int >= 160000 then 'debug_parallel_query'
                       else 'force_parallel_mode' end, 'on', true) as parallel_forced;
create table public.vt_parallel as
  select id, vital_tenancy.classify_prompt_tenant(name, domain, created_by, null) as tenant from public.prompts;
select count(*) from public.vt_parallel;
select proname, proparallel from pg_proc
 where pronamespace = 'vital_tenancy'::regnamespace and proname like 'classify%' order by 1, 2;
rollback;
