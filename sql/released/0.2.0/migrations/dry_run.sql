-- Dry run of the migration (scripts/migrate --dry-run): previews and checks only.
-- Run in a read-only transaction: it cannot write anything.
\set ON_ERROR_STOP on
\pset footer off
BEGIN READ ONLY;
\echo '## Tenants (002 would ensure all three exist)'
SELECT t.id, t.name, t.slug, s.slug IS NOT NULL AS present
  FROM (VALUES (vital_tenancy.platform_tenant_id(), 'platform'),
               (vital_tenancy.digital_health_tenant_id(), 'digital-health-startup'),
               (vital_tenancy.pharma_tenant_id(), 'pharmaceuticals')) v(id, want)
  LEFT JOIN public.tenants s ON s.id = v.id
  CROSS JOIN LATERAL (SELECT v.id, coalesce(s.name::text, '(missing)') AS name, v.want AS slug) t;
\echo '## Row counts now'
SELECT c.oid::regclass AS "table", c.reltuples::bigint AS estimated_rows
  FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r' ORDER BY 1::text;
\echo '## Classification preview (what 003/004 would assign)'
SELECT 'prompts' AS "table", tenant_name, rule, row_count FROM vital_tenancy.preview_classification('prompt', 'public.prompts')
UNION ALL SELECT 'agents', tenant_name, rule, row_count FROM vital_tenancy.preview_classification('agent', 'public.agents')
UNION ALL SELECT 'knowledge_sources', tenant_name, rule, row_count FROM vital_tenancy.preview_classification('knowledge', 'public.knowledge_sources')
UNION ALL SELECT 'knowledge_base', tenant_name, rule, row_count FROM vital_tenancy.preview_classification('knowledge', 'public.knowledge_base')
UNION ALL SELECT 'tools', tenant_name, rule, row_count FROM vital_tenancy.preview_classification('tool', 'public.tools');
\echo '## Messages whose agent_id matches no agent by id or name (004 assigns them to Digital Health)'
SELECT count(*) AS unmatched FROM public.messages m
 WHERE m.agent_id IS NULL OR NOT EXISTS (SELECT 1 FROM public.agents a WHERE a.id::text = m.agent_id OR a.name = m.agent_id);
ROLLBACK;
