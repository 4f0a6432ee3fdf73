-- 003: shared (Platform) data: tool categories and knowledge domains are shared
-- definitions; tools without a tenant are shared tool definitions.
-- Each backfill adds its table's tenant column with Platform in the catalog: no row
-- is rewritten. Not a transaction: backfill COMMITs per batch (and resumes after a
-- crash).
-- Journaled under the run 'vital-multi-tenant' (revert_run undoes it).
\set ON_ERROR_STOP on
CALL vital_tenancy.backfill('public.tool_categories', 'platform', run_name => 'vital-multi-tenant');
CALL vital_tenancy.backfill('public.knowledge_domains', 'platform', run_name => 'vital-multi-tenant');
CALL vital_tenancy.backfill('public.tools', 'tool', run_name => 'vital-multi-tenant');
