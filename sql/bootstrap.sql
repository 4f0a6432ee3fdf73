-- vital_tenancy bootstrap: runs before any generated function.
-- Everything here lands in schema vital_tenancy (the control file pins it).

-- Generated RLS policies call functions of this schema as ordinary roles.
GRANT USAGE ON SCHEMA @extschema@ TO PUBLIC;

-- Extension settings, e.g. which table is the application's tenants table
-- (recorded by ensure_tenants). Kept by pg_dump.
CREATE TABLE @extschema@.settings (
    name       text PRIMARY KEY,
    value      text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE @extschema@.settings IS
    'vital_tenancy settings (name -> value); tenants_table is recorded by ensure_tenants()';
SELECT pg_catalog.pg_extension_config_dump('@extschema@.settings', '');
GRANT SELECT ON @extschema@.settings TO PUBLIC;

-- Which user belongs to which tenant: the default membership table that tenant
-- context checks an x-tenant-id header against. Kept by pg_dump. Not readable by
-- PUBLIC: memberships are looked up by the extension, not by applications.
CREATE TABLE @extschema@.tenant_members (
    user_id    uuid NOT NULL,
    tenant_id  uuid NOT NULL,
    role       text NOT NULL DEFAULT 'member',
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, tenant_id)
);
CREATE INDEX tenant_members_tenant_idx ON @extschema@.tenant_members (tenant_id);
COMMENT ON TABLE @extschema@.tenant_members IS
    'Tenant memberships (user_id, tenant_id, role): who may select a tenant with the x-tenant-id header';
SELECT pg_catalog.pg_extension_config_dump('@extschema@.tenant_members', '');

-- Classification rules per kind (prompt, knowledge, agent); no row = built-in rules.
-- Written with set_rules()/reset_rules(); kept by pg_dump; readable by every role
-- because the classifiers read it (once per backend per change) as the caller.
CREATE TABLE @extschema@.classification_rules (
    kind       text PRIMARY KEY CHECK (kind IN ('prompt', 'knowledge', 'agent')),
    rules      jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    updated_by name NOT NULL DEFAULT CURRENT_USER
);
COMMENT ON TABLE @extschema@.classification_rules IS
    'Tenant classification rules per kind, replacing the built-in ones; use set_rules()/reset_rules()';
SELECT pg_catalog.pg_extension_config_dump('@extschema@.classification_rules', '');
GRANT SELECT ON @extschema@.classification_rules TO PUBLIC;

-- Tables under tenant RLS, with what enable_tenant_rls() found there before, so that
-- disable_tenant_rls() can undo exactly what it did. Kept by pg_dump.
CREATE TABLE @extschema@.rls_tables (
    tbl             regclass PRIMARY KEY,
    tenant_column   name NOT NULL,
    shared          boolean NOT NULL,
    prior_default   text,
    created_index   name,
    rls_was_enabled boolean NOT NULL,
    rls_was_forced  boolean NOT NULL,
    enabled_at      timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE @extschema@.rls_tables IS
    'Tables under vital_tenancy tenant RLS and their state before enable_tenant_rls()';
SELECT pg_catalog.pg_extension_config_dump('@extschema@.rls_tables', '');

-- The platform-admin role: its members read and write every tenant's rows through
-- their own policy. Roles are cluster-wide, so it outlives DROP EXTENSION.
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'vital_tenancy_admin') THEN
    CREATE ROLE vital_tenancy_admin NOLOGIN;
  END IF;
END $$;
