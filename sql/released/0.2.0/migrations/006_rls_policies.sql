-- 006: tenant row-level security on every tenant table (enabled and forced;
-- restrictive tenant boundary; shared tables readable by every tenant; messages are
-- private to their tenant); the server-side role's grants; the registry protected. One transaction; re-running replaces only the
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
-- The application's API routes run as vital_tenancy_service (no BYPASSRLS) instead of
-- the service key: it gets on every tenant table what the application's signed-in
-- role has, and reads the tenants registry. Idempotent.
GRANT USAGE ON SCHEMA public TO vital_tenancy_service;
SELECT pg_catalog.format('GRANT %s ON %s TO vital_tenancy_service', p.privs, r.tbl)
  FROM vital_tenancy.rls_tables r
  JOIN pg_catalog.pg_roles a ON a.rolname = 'authenticated'
  CROSS JOIN LATERAL (
    SELECT pg_catalog.string_agg(priv, ', ' ORDER BY o) AS privs
      FROM unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE']) WITH ORDINALITY x(priv, o)
     WHERE pg_catalog.has_table_privilege(a.oid, r.tbl, priv)) p
 WHERE p.privs IS NOT NULL
 ORDER BY r.tbl::text
\gexec
GRANT SELECT ON public.tenants TO vital_tenancy_service;
-- The registry itself: tenants read their own row and Platform's; only DBAs and
-- vital_tenancy_admin write it (the fixture let authenticated write and anon list it).
SELECT * FROM vital_tenancy.protect_tenants_table();
SELECT * FROM vital_tenancy.rls_status();
COMMIT;
