-- 006: tenant row-level security on every tenant table (enabled and forced;
-- restrictive tenant boundary; shared tables readable by every tenant; messages are
-- private to their tenant). One transaction; re-running replaces only the
-- extension's own policies.
\set ON_ERROR_STOP on
BEGIN;
SELECT t AS "table", count(*) AS actions
  FROM unnest(ARRAY['public.tool_categories', 'public.tools', 'public.knowledge_domains', 'public.agents',
                    'public.agent_tool_assignments', 'public.prompts', 'public.knowledge_sources',
                    'public.knowledge_base', 'public.business_functions', 'public.departments',
                    'public.organizational_roles']) t,
       LATERAL vital_tenancy.enable_tenant_rls(t::regclass) e
 GROUP BY t ORDER BY t;
SELECT count(*) AS actions FROM vital_tenancy.enable_tenant_rls('public.messages', shared => false);
SELECT * FROM vital_tenancy.rls_status();
COMMIT;
