-- 005: validation. One transaction: every blocking check must pass
-- (assert_valid raises one ERROR listing all failures, and nothing is changed);
-- then tenant_id becomes NOT NULL with a valid foreign key on every table (online
-- steps under lock_timeout), and the post-migration counts must equal 000's (the
-- tenants table excepted: it gains the tenants 002 created).
\set ON_ERROR_STOP on
BEGIN;
SELECT vital_tenancy.assert_valid();
SELECT t AS "table", e.step
  FROM unnest(ARRAY['public.tool_categories', 'public.tools', 'public.knowledge_domains', 'public.agents',
                    'public.agent_tool_assignments', 'public.prompts', 'public.knowledge_sources',
                    'public.knowledge_base', 'public.messages', 'public.business_functions',
                    'public.departments', 'public.organizational_roles']) t,
       LATERAL vital_tenancy.enforce_tenant_column(t::regclass) e;
SELECT count(*) AS post_counts FROM vital_tenancy.snapshot_counts('post_migration', replace => true);
DO $$
DECLARE bad text;
BEGIN
  SELECT string_agg(format('%s: %s -> %s', table_name, before, after), '; ') INTO bad
    FROM vital_tenancy.compare_counts('pre_migration', 'post_migration')
   WHERE before IS NOT NULL AND after IS DISTINCT FROM before
     -- the tenants table gains the tenants 002 created, by design
     AND table_name::regclass IS DISTINCT FROM vital_tenancy.tenants_table();
  IF bad IS NOT NULL THEN
    RAISE EXCEPTION 'row counts changed during the migration: %', bad USING ERRCODE = 'data_exception';
  END IF;
END $$;
SELECT check_name, severity, table_name, failing, detail FROM vital_tenancy.validate() ORDER BY severity, check_name;
COMMIT;
