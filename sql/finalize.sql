-- vital_tenancy finalize: runs after every generated function.
-- Documents each function (\df+ shows it) and sets privileges.

CREATE FUNCTION @extschema@.tenants_table() RETURNS regclass
    LANGUAGE sql STABLE PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
    AS $$ SELECT pg_catalog.to_regclass(value) FROM @extschema@.settings WHERE name = 'tenants_table' $$;

COMMENT ON FUNCTION @extschema@.tenants_table() IS
    'The application''s tenants table as last given to ensure_tenants(), or NULL when none is recorded or it no longer exists.';
COMMENT ON FUNCTION @extschema@.platform_tenant_id() IS
    'Id of the Platform tenant (00000000-0000-0000-0000-000000000001): shared resources, readable by every tenant.';
COMMENT ON FUNCTION @extschema@.digital_health_tenant_id() IS
    'Id of the Digital Health Startup tenant (11111111-1111-1111-1111-111111111111).';
COMMENT ON FUNCTION @extschema@.pharma_tenant_id() IS
    'Id of the Pharmaceuticals tenant (f7aa6fd4-0af9-4706-8b31-034f1f7accda).';
COMMENT ON FUNCTION @extschema@.ensure_tenants(text, jsonb) IS
    'Idempotently make sure the three tenants exist in the tenants table (schema-qualified; created with id, name, slug, settings, created_at if missing). extra gives values for other required columns, shared or keyed by slug. Never changes an existing row; returns per tenant: created, already present, name differs or slug differs.';

-- ensure_tenants writes to the application's tenants table: for DBAs, not for PUBLIC.
REVOKE EXECUTE ON FUNCTION @extschema@.ensure_tenants(text, jsonb) FROM PUBLIC;
