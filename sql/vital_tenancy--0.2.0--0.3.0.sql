-- vital_tenancy 0.2.0 -> 0.3.0 (ALTER EXTENSION vital_tenancy UPDATE). tests/upgrade checks
-- that 0.1.0 and 0.2.0, each updated with the scripts up to this one, equal a fresh 0.3.0.
\echo Use "ALTER EXTENSION vital_tenancy UPDATE TO '0.3.0'" to load this file. \quit

SET LOCAL search_path = vital_tenancy, pg_catalog;

-- Issue 31, finding 1: 0.2.0's reference guard was a PL/pgSQL SECURITY DEFINER function
-- executable by PUBLIC that took the parent from its trigger arguments; any role could
-- attach it to a temp table and have a temp view read as the superuser. It becomes a C
-- function, SECURITY INVOKER (CREATE OR REPLACE resets SECURITY DEFINER), that runs only
-- as a guard matching a recorded foreign key; the triggers 007 created keep pointing at
-- it (same OID). EXECUTE is revoked from PUBLIC by the privileges block below.
CREATE OR REPLACE FUNCTION vital_tenancy.tenant_reference_check() RETURNS trigger
    LANGUAGE c VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'tenant_reference_check_wrapper';

COMMENT ON FUNCTION vital_tenancy.tenant_reference_check() IS
    'Trigger guarding a reference between tenant tables (created by apply_tenant_keys()): the parent must belong to the row''s tenant, or to Platform where the parent table is shared; the same 23503 whether the parent does not exist or belongs to another tenant; a row of a tenant the writer may not write is left to the policies'' one error. Runs only as a guard matching a recorded foreign key (else 42501); not executable by PUBLIC.';

-- Privileges, default deny: no routine of the extension is executable by PUBLIC except
-- those an application role must call itself (a policy, a column DEFAULT, PostgREST's
-- pre-request hook, a trusted backend's set_tenant(), the classifiers). Each of them
-- is reviewed, with why, in tests/pg_regress/sql/privileges.sql, which fails when one
-- appears unreviewed. A routine added later starts revoked. (The same block ends
-- every upgrade script.)
DO $privileges$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT pg_catalog.format('%s %I.%I(%s)', CASE p.prokind WHEN 'p' THEN 'PROCEDURE' ELSE 'FUNCTION' END,
                                 n.nspname, p.proname, pg_catalog.pg_get_function_identity_arguments(p.oid)) AS routine
          FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname = 'vital_tenancy'
           AND p.proname OPERATOR(pg_catalog.<>) ALL (ARRAY[
                 -- called by the policies, the tenant column's DEFAULT, PostgREST and backends
                 'current_tenant_id', 'visible_tenant_ids', 'writable_tenant_ids', 'pre_request', 'set_tenant',
                 'tenant_id_by_slug', 'tenants_table',
                 'platform_tenant_id', 'digital_health_tenant_id', 'pharma_tenant_id',
                 -- the classifiers: functions of their arguments and the PUBLIC-readable rules
                 'classify_prompt_tenant', 'classify_knowledge_tenant', 'classify_agent_tenant',
                 'classify_tool_tenant', 'map_domain_to_suite', 'tool_category_name', 'explain_tenant', 'rules'
               ]::pg_catalog.name[])
           AND pg_catalog.has_function_privilege('public', p.oid, 'EXECUTE')
    LOOP
        EXECUTE pg_catalog.format('REVOKE EXECUTE ON %s FROM PUBLIC', r.routine);
    END LOOP;
END
$privileges$;
