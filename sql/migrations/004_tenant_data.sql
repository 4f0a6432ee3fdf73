-- 004: tenant data, by the classification rules: agents, prompts, knowledge sources
-- and chunks; tool assignments and messages follow their agent (messages.agent_id is
-- text and sometimes holds the agent's name: matched by id, then by name, else
-- Digital Health); existing organisational rows are shared definitions (Platform).
-- Each backfill adds its table's tenant column (the majority tenant in the catalog,
-- the other rows rewritten). Not a transaction: backfill COMMITs per batch (and
-- resumes after a crash).
\set ON_ERROR_STOP on
CALL vital_tenancy.backfill('public.agents', 'agent', run_name => 'vital-multi-tenant');
CALL vital_tenancy.backfill('public.prompts', 'prompt', run_name => 'vital-multi-tenant');
CALL vital_tenancy.backfill('public.knowledge_sources', 'knowledge', run_name => 'vital-multi-tenant');
CALL vital_tenancy.backfill('public.knowledge_base', 'knowledge', run_name => 'vital-multi-tenant');
CALL vital_tenancy.backfill('public.agent_tool_assignments', 'parent', run_name => 'vital-multi-tenant',
     options => '{"column": "agent_id", "parent": "public.agents"}');
CALL vital_tenancy.backfill('public.messages', 'parent', run_name => 'vital-multi-tenant',
     options => '{"column": "agent_id", "parent": "public.agents", "match": ["id", "name"],
                  "private": true, "fallback": "11111111-1111-1111-1111-111111111111"}');
CALL vital_tenancy.backfill('public.business_functions', 'platform', run_name => 'vital-multi-tenant');
CALL vital_tenancy.backfill('public.departments', 'platform', run_name => 'vital-multi-tenant');
CALL vital_tenancy.backfill('public.organizational_roles', 'platform', run_name => 'vital-multi-tenant');
SELECT vital_tenancy.finish_run('vital-multi-tenant') AS finished_run;
-- The foreign keys to the tenants table (NOT VALID: 005 validates them) where a table
-- had its tenant column before, then the tenant indexes, CONCURRENTLY (no write lock
-- on the tables; CREATE INDEX CONCURRENTLY cannot run in a transaction, so one
-- statement each through \gexec). Built after the backfill, so that the rows it
-- rewrote could be HOT updates.
SELECT a.ddl
  FROM unnest(ARRAY['public.tool_categories', 'public.tools', 'public.knowledge_domains', 'public.agents',
                    'public.agent_tool_assignments', 'public.prompts', 'public.knowledge_sources',
                    'public.knowledge_base', 'public.messages', 'public.business_functions',
                    'public.departments', 'public.organizational_roles']) t,
       LATERAL vital_tenancy.add_tenant_column(t::regclass) a
 WHERE a.ddl IS NOT NULL \gexec
-- The old-name view again, now that messages has its tenant column (without queueing
-- behind a long transaction: give up instead; the script can run again).
SET lock_timeout = '10s';
SET statement_timeout = '1min';
CREATE OR REPLACE VIEW public.chat_messages WITH (security_invoker = true) AS SELECT * FROM public.messages;
RESET lock_timeout;
RESET statement_timeout;
\echo 'messages: matched to a tenant-specific agent / to a shared agent / to no agent (the last two: Digital Health)'
SELECT count(*) FILTER (WHERE a.tenant_id IS NOT NULL AND a.tenant_id <> vital_tenancy.platform_tenant_id()) AS tenant_agent,
       count(*) FILTER (WHERE a.tenant_id = vital_tenancy.platform_tenant_id()) AS shared_agent,
       count(*) FILTER (WHERE a.id IS NULL) AS unmatched
  FROM public.messages m
  LEFT JOIN LATERAL (SELECT a.id, a.tenant_id FROM public.agents a
                      WHERE a.id::text = m.agent_id OR a.name = m.agent_id LIMIT 1) a ON true;
