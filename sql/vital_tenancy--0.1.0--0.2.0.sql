-- vital_tenancy 0.1.0 -> 0.2.0 (ALTER EXTENSION vital_tenancy UPDATE TO '0.2.0').
-- The tenant context holds on real request paths: only trusted login roles choose a
-- tenant, only values set inside the current transaction count, policies never raise
-- for a bad context, and PostgREST gets a pre-request hook. tests/upgrade checks that
-- 0.1.0 + this script equals a fresh 0.2.0 install. The policies change too (a policy
-- for vital_tenancy_service; the admin policy names the tenant column): they are
-- re-created on every managed table at the end, each statement under lock_timeout with
-- retries (if a long transaction holds a table, the update fails whole: run it again).
\echo Use "ALTER EXTENSION vital_tenancy UPDATE TO '0.2.0'" to load this file. \quit

-- The trusted-context role (see bootstrap.sql).
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'vital_tenancy_context') THEN
    CREATE ROLE vital_tenancy_context NOLOGIN;
  END IF;
END $$;

-- The server-side role of the application's API routes (see bootstrap.sql).
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'vital_tenancy_service') THEN
    CREATE ROLE vital_tenancy_service NOLOGIN;
  END IF;
END $$;

-- PostgREST's db-pre-request hook.
CREATE FUNCTION @extschema@.pre_request() RETURNS void
    SECURITY DEFINER
    SET search_path TO pg_catalog, pg_temp
    STRICT VOLATILE
    LANGUAGE c
    AS 'MODULE_PATHNAME', 'pre_request_wrapper';

-- They read transaction-local state of the leader (which settings were set in this
-- transaction), which parallel workers cannot see.
ALTER FUNCTION @extschema@.current_tenant_id() PARALLEL RESTRICTED;
ALTER FUNCTION @extschema@.visible_tenant_ids(boolean) PARALLEL RESTRICTED;
ALTER FUNCTION @extschema@.writable_tenant_ids() PARALLEL RESTRICTED;

COMMENT ON FUNCTION @extschema@.current_tenant_id() IS
    'The tenant of the current request: setting vital.tenant_id, else tenant_id in request.jwt.claims, else x-tenant-id in request.headers if the claims'' sub is a member, else NULL. Only values set in the current transaction count (unless vital_tenancy.session_context), and only for a login role that is a member of vital_tenancy_context. A bad context (malformed, unknown tenant, non-member, untrusted session) is an ERROR here. Cached per statement. SECURITY DEFINER, search_path pinned.';
COMMENT ON FUNCTION @extschema@.pre_request() IS
    'PostgREST db-pre-request hook: resolves and validates the request''s tenant context once, before the query reads any row; a bad context is an ERROR, values left over from outside the transaction one WARNING. SECURITY DEFINER, search_path pinned.';
COMMENT ON FUNCTION @extschema@.set_tenant(uuid) IS
    'Set vital.tenant_id for the rest of the transaction (SET LOCAL semantics) after checking the tenant exists; NULL clears it. Only for login roles that are members of vital_tenancy_context (ERROR 42501 otherwise); warns about leftover session values.';
COMMENT ON FUNCTION @extschema@.visible_tenant_ids(boolean) IS
    'Tenant ids the current request may read (what the policies compare with): its tenant plus Platform (only its tenant when shared is false); every tenant for vital_tenancy_admin; none without a valid context. Never raises for a bad context: it counts as none.';
COMMENT ON FUNCTION @extschema@.writable_tenant_ids() IS
    'Tenant ids the current request may write: its own tenant; every tenant for vital_tenancy_admin; none without a valid context. Never raises for a bad context: it counts as none.';
COMMENT ON FUNCTION @extschema@.rls_coverage(text[]) IS
    'Tables with a tenant column whose RLS is off, not forced, without policies or not index-friendly; and per table every role (superusers aside) that holds privileges on it while bypassing RLS (BYPASSRLS, e.g. service_role), with what to do instead.';
COMMENT ON FUNCTION @extschema@.health() IS
    'Health document: database, tenants (healthy when all three exist with data), referential integrity, RLS coverage (including roles that bypass RLS on tenant tables, rls.bypass_roles), last migration run.';

-- Re-create the extension's policies from the new definition.
CREATE FUNCTION @extschema@.refresh_tenant_policies() RETURNS TABLE (
    table_name text,
    action text
)
    STRICT VOLATILE
    SET search_path TO pg_catalog, pg_temp
    LANGUAGE c
    AS 'MODULE_PATHNAME', 'refresh_tenant_policies_wrapper';
COMMENT ON FUNCTION @extschema@.refresh_tenant_policies() IS
    'Re-create the extension''s policies (vt_*) on every table enable_tenant_rls() manages, from the current definition; the application''s policies, defaults, indexes and RLS flags are left alone. Run by ALTER EXTENSION UPDATE when the policies change. DBA only.';
REVOKE EXECUTE ON FUNCTION @extschema@.refresh_tenant_policies() FROM PUBLIC;

-- The tenants registry: protected by migration 006 (protect_tenants_table()), a
-- narrow slug lookup for before sign-in, and the list of all tenants for admins only.
CREATE FUNCTION @extschema@.protect_tenants_table() RETURNS TABLE (
    action text
)
    STRICT VOLATILE
    SET search_path TO pg_catalog, pg_temp
    LANGUAGE c
    AS 'MODULE_PATHNAME', 'protect_tenants_table_wrapper';
CREATE FUNCTION @extschema@.tenant_id_by_slug(slug text) RETURNS uuid
    STRICT STABLE SECURITY DEFINER PARALLEL SAFE
    SET search_path TO pg_catalog, pg_temp
    LANGUAGE c
    AS 'MODULE_PATHNAME', 'tenant_id_by_slug_wrapper';
COMMENT ON FUNCTION @extschema@.all_tenant_ids() IS
    'Every tenant id in the tenants table: for platform admins and DBAs (not executable by PUBLIC). SECURITY DEFINER, search_path pinned.';
COMMENT ON FUNCTION @extschema@.protect_tenants_table() IS
    'Protect the tenants registry: revoke INSERT/UPDATE/DELETE/TRUNCATE from every role but its owner and vital_tenancy_admin, enable row level security with policies so a request reads its own tenant''s row and Platform''s (every row for admins, none without a context). Idempotent; migration 006 runs it. DBA only.';
COMMENT ON FUNCTION @extschema@.tenant_id_by_slug(text) IS
    'The id of the tenant with this slug, or NULL: the lookup an application needs before sign-in, without opening the registry. SECURITY DEFINER, search_path pinned.';
REVOKE EXECUTE ON FUNCTION @extschema@.protect_tenants_table() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION @extschema@.all_tenant_ids() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.all_tenant_ids() TO vital_tenancy_admin;

-- Tenant-scoped keys and references (migration 007 applies them).
CREATE FUNCTION @extschema@.tenant_keys_plan() RETURNS TABLE (
    table_name text,
    change text,
    index_ddl text,
    ddl text
)
    STRICT STABLE
    SET search_path TO pg_catalog, pg_temp
    LANGUAGE c
    AS 'MODULE_PATHNAME', 'tenant_keys_plan_wrapper';
CREATE FUNCTION @extschema@.apply_tenant_keys(lock_timeout_ms integer DEFAULT 2000, retries integer DEFAULT 5) RETURNS TABLE (
    table_name text,
    change text
)
    STRICT VOLATILE
    SET search_path TO pg_catalog, pg_temp
    LANGUAGE c
    AS 'MODULE_PATHNAME', 'apply_tenant_keys_wrapper';
CREATE FUNCTION @extschema@.tenant_reference_check() RETURNS trigger
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    ref text;
    child_tenant uuid;
    ok boolean;
BEGIN
    EXECUTE pg_catalog.format('SELECT ($1).%I::text, ($1).%I', TG_ARGV[1], TG_ARGV[3])
       INTO ref, child_tenant USING NEW;
    IF ref IS NULL THEN
        RETURN NEW;
    END IF;
    EXECUTE pg_catalog.format('SELECT EXISTS (SELECT 1 FROM %s p WHERE p.%I = ($1).%I AND p.%I = ANY ($2))',
                              TG_ARGV[0]::pg_catalog.regclass, TG_ARGV[2], TG_ARGV[1], TG_ARGV[4])
       INTO ok USING NEW, ARRAY[child_tenant, '00000000-0000-0000-0000-000000000001'::uuid];
    IF NOT ok THEN
        RAISE EXCEPTION USING
            ERRCODE = 'foreign_key_violation',
            MESSAGE = pg_catalog.format(
                'insert or update on table %s violates a tenant reference: key (%s)=(%s) is not present in table %s for tenant %s or Platform',
                TG_RELID::pg_catalog.regclass, TG_ARGV[1], ref, TG_ARGV[0]::pg_catalog.regclass, COALESCE(child_tenant::text, '(none)')),
            DETAIL = 'A row may reference only rows of its own tenant or of Platform.';
    END IF;
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION @extschema@.tenant_keys_plan() IS
    'What the keys step (migration 007) will do on the tables under tenant RLS: each unique key made per tenant (index_ddl to run first with \gexec, then ddl swaps the constraint onto it) and each reference between tenant tables given its tenant guard. Empty once done. Writes nothing.';
COMMENT ON FUNCTION @extschema@.apply_tenant_keys(integer, integer) IS
    'Apply the keys step: swap each unique constraint onto its per-tenant index (ERROR 55000 if an index is missing: run the plan''s index_ddl first) and create each reference guard, under lock_timeout with retries. Idempotent. DBA only.';
COMMENT ON FUNCTION @extschema@.tenant_reference_check() IS
    'Trigger guarding a reference between tenant tables: the parent must belong to the row''s tenant or to Platform; the same 23503 whether the parent does not exist or belongs to another tenant. SECURITY DEFINER, search_path pinned.';
REVOKE EXECUTE ON FUNCTION @extschema@.apply_tenant_keys(integer, integer) FROM PUBLIC;

-- run_ddl refuses a lock_timeout_ms of 0 or NULL and NULL or negative retries (they
-- waited or retried forever), and gives the caller its lock_timeout back.
CREATE OR REPLACE FUNCTION @extschema@.run_ddl(
    ddl text, step text, tbl text, lock_timeout_ms integer DEFAULT 2000, retries integer DEFAULT 5
) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    attempt integer := 0;
    caller_timeout text := pg_catalog.current_setting('lock_timeout');
BEGIN
    -- 0 or NULL would wait for the lock forever, NULL retries would retry forever.
    IF lock_timeout_ms IS NULL OR lock_timeout_ms <= 0 THEN
        RAISE EXCEPTION 'run_ddl: lock_timeout_ms must be a positive number of milliseconds, not %', COALESCE(lock_timeout_ms::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF retries IS NULL OR retries < 0 THEN
        RAISE EXCEPTION 'run_ddl: retries must be 0 or more, not %', COALESCE(retries::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    LOOP
        attempt := attempt + 1;
        BEGIN
            PERFORM set_config('lock_timeout', lock_timeout_ms || 'ms', true);
            EXECUTE ddl;
            -- The caller's lock_timeout again for the rest of its transaction.
            PERFORM set_config('lock_timeout', caller_timeout, true);
            INSERT INTO @extschema@.migration_log (tbl, step, detail, attempts) VALUES (tbl, step, ddl, attempt);
            RETURN;
        EXCEPTION WHEN lock_not_available THEN
            IF attempt > retries THEN
                RAISE EXCEPTION '%: % could not get its lock within % ms, % attempts', tbl, step, lock_timeout_ms, attempt
                    USING ERRCODE = 'lock_not_available',
                          DETAIL = ddl,
                          HINT = 'A long transaction holds a lock on the table (see pg_stat_activity / pg_locks); run again when it has finished.';
            END IF;
            INSERT INTO @extschema@.migration_log (tbl, step, detail, attempts)
            VALUES (tbl, step || ' (lock timeout, retrying)', ddl, attempt);
            PERFORM pg_sleep(least(0.1 * 2 ^ attempt, 5));
        END;
    END LOOP;
END
$$;

-- Last, with every function of 0.2.0 in place: the policies from the new definition.
SELECT count(*) FROM @extschema@.refresh_tenant_policies();
