-- The main job's report on the freshly loaded fixture. Later issues extend it to
-- the full migration 000-006 and its validation report.
\pset footer off
\echo
\echo '# vital_tenancy report'
CREATE EXTENSION IF NOT EXISTS vital_tenancy;
SELECT extname AS extension, extversion AS version, extnamespace::regnamespace AS schema
  FROM pg_extension WHERE extname = 'vital_tenancy';

\echo
\echo '## Tenants before'
SELECT id, name, slug, type FROM public.tenants ORDER BY id;

\echo
\echo '## ensure_tenants(''public.tenants'', ''{"type": "industry"}'')'
SELECT * FROM vital_tenancy.ensure_tenants('public.tenants', '{"type": "industry"}');

\echo
\echo '## Second run (must be a no-op: nothing created)'
SELECT action, count(*) FROM vital_tenancy.ensure_tenants('public.tenants', '{"type": "industry"}')
 GROUP BY action ORDER BY action;

\echo
\echo '## Tenants after'
SELECT id, name, slug, type FROM public.tenants ORDER BY id;

\echo
\echo '## Application tables (row counts, unchanged by the extension)'
SELECT c.relname AS table, (xpath('/row/n/text()',
         query_to_xml(format('SELECT count(*) AS n FROM %I.%I', n.nspname, c.relname), false, true, '')))[1]::text::bigint AS rows
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'public' AND c.relkind = 'r'
 ORDER BY 1;

\echo
\echo '## Classification preview (dry run: which rule sends how many rows where)'
SELECT 'prompts' AS "table", tenant_name, rule, row_count
  FROM vital_tenancy.preview_classification('prompt', 'public.prompts')
UNION ALL
SELECT 'agents', tenant_name, rule, row_count
  FROM vital_tenancy.preview_classification('agent', 'public.agents')
UNION ALL
SELECT 'knowledge_base', tenant_name, rule, row_count
  FROM vital_tenancy.preview_classification('knowledge', 'public.knowledge_base')
UNION ALL
SELECT 'knowledge_sources', tenant_name, rule, row_count
  FROM vital_tenancy.preview_classification('knowledge', 'public.knowledge_sources')
UNION ALL
SELECT 'tools', tenant_name, rule, row_count
  FROM vital_tenancy.preview_classification('tool', 'public.tools');
