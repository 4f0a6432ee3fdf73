-- vital_tenancy bootstrap: runs before any generated function.
-- Everything lands in schema vital_tenancy, which this script creates as a member of
-- the extension: DROP EXTENSION drops it. The extension's own schema (CREATE EXTENSION
-- ... SCHEMA, by default the first of search_path) holds nothing. Where that schema is
-- an existing schema named vital_tenancy (a dump of a 0.1.0 database restored:
-- CREATE EXTENSION ... WITH SCHEMA vital_tenancy), the objects go into it as in 0.1.0
-- and DROP EXTENSION leaves it, empty.
DO $$
BEGIN
  IF EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname OPERATOR(pg_catalog.=) 'vital_tenancy') THEN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_extension e
                    WHERE e.extname OPERATOR(pg_catalog.=) 'vital_tenancy'
                      AND e.extnamespace OPERATOR(pg_catalog.=) 'vital_tenancy'::pg_catalog.regnamespace) THEN
      RAISE EXCEPTION USING ERRCODE = '42P06',
        MESSAGE = 'schema "vital_tenancy" already exists',
        HINT = 'If it is empty (DROP EXTENSION of 0.1.0 leaves it), DROP SCHEMA vital_tenancy and create the extension again.';
    END IF;
  ELSE
    CREATE SCHEMA vital_tenancy;
  END IF;
END $$;
-- Unqualified names in the generated part of this script are the extension's.
SET LOCAL search_path = vital_tenancy, pg_catalog;

-- Generated RLS policies call functions of this schema as ordinary roles.
GRANT USAGE ON SCHEMA vital_tenancy TO PUBLIC;

-- Extension settings, e.g. which table is the application's tenants table
-- (recorded by ensure_tenants). Kept by pg_dump.
CREATE TABLE vital_tenancy.settings (
    name       text PRIMARY KEY,
    value      text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE vital_tenancy.settings IS
    'vital_tenancy settings (name -> value); tenants_table is recorded by ensure_tenants()';
SELECT pg_catalog.pg_extension_config_dump('vital_tenancy.settings', '');
GRANT SELECT ON vital_tenancy.settings TO PUBLIC;

-- Which user belongs to which tenant: the default membership table that tenant
-- context checks an x-tenant-id header against. Kept by pg_dump. Not readable by
-- PUBLIC: memberships are looked up by the extension, not by applications.
CREATE TABLE vital_tenancy.tenant_members (
    user_id    uuid NOT NULL,
    tenant_id  uuid NOT NULL,
    role       text NOT NULL DEFAULT 'member',
    created_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (user_id, tenant_id)
);
CREATE INDEX tenant_members_tenant_idx ON vital_tenancy.tenant_members (tenant_id);
COMMENT ON TABLE vital_tenancy.tenant_members IS
    'Tenant memberships (user_id, tenant_id, role): who may select a tenant with the x-tenant-id header';
SELECT pg_catalog.pg_extension_config_dump('vital_tenancy.tenant_members', '');

-- Classification rules per kind (prompt, knowledge, agent); no row = built-in rules.
-- Written with set_rules()/reset_rules(); kept by pg_dump; readable by every role
-- because the classifiers read it (once per backend per change) as the caller.
CREATE TABLE vital_tenancy.classification_rules (
    kind       text PRIMARY KEY CHECK (kind OPERATOR(pg_catalog.=) ANY (ARRAY['prompt', 'knowledge', 'agent'])),
    rules      jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_by name NOT NULL DEFAULT CURRENT_USER
);
COMMENT ON TABLE vital_tenancy.classification_rules IS
    'Tenant classification rules per kind, replacing the built-in ones; use set_rules()/reset_rules()';
SELECT pg_catalog.pg_extension_config_dump('vital_tenancy.classification_rules', '');
GRANT SELECT ON vital_tenancy.classification_rules TO PUBLIC;

-- Tables under tenant RLS, with what enable_tenant_rls() found there before, so that
-- disable_tenant_rls() can undo exactly what it did. Kept by pg_dump.
CREATE TABLE vital_tenancy.rls_tables (
    tbl             regclass PRIMARY KEY,
    tenant_column   name NOT NULL,
    shared          boolean NOT NULL,
    prior_default   text,
    created_index   name,
    rls_was_enabled boolean NOT NULL,
    rls_was_forced  boolean NOT NULL,
    enabled_at      timestamptz NOT NULL DEFAULT pg_catalog.now(),
    policy_shape    text NOT NULL DEFAULT 'restrictive' CHECK (policy_shape OPERATOR(pg_catalog.=) ANY (ARRAY['restrictive', 'citus']))
);
COMMENT ON TABLE vital_tenancy.rls_tables IS
    'Tables under vital_tenancy tenant RLS and their state before enable_tenant_rls()';
SELECT pg_catalog.pg_extension_config_dump('vital_tenancy.rls_tables', '');
COMMENT ON COLUMN vital_tenancy.rls_tables.policy_shape IS
    'restrictive: the boundary as RESTRICTIVE policies with a per-statement sub-select; citus: every policy PERMISSIVE with the boundary folded in, no sub-select (citus_safe_policies())';

CREATE TABLE vital_tenancy.originals (
    tbl         regclass NOT NULL,
    kind        text NOT NULL CHECK (kind OPERATOR(pg_catalog.=) ANY (ARRAY['policy', 'foreign key', 'trigger'])),
    name        name NOT NULL,
    definition  text NOT NULL,
    action      text NOT NULL CHECK (action OPERATOR(pg_catalog.=) ANY (ARRAY['folded', 'set aside'])),
    reason      text NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (tbl, kind, name)
);
COMMENT ON TABLE vital_tenancy.originals IS
    'The application''s objects as they were before the extension changed them for Citus: policies the tenant boundary was folded into or that were set aside (citus_safe_policies()), foreign keys and triggers migration 008 set aside; each with its original definition and why';
SELECT pg_catalog.pg_extension_config_dump('vital_tenancy.originals', '');

-- What a tenant's registry status allows, where the DBA overrides the built-in
-- meaning (active: read-write; suspended, archived: read-only; pending, deleted:
-- none) or names a status of their own. Read by the policy functions once per
-- statement; only overrides are stored, so pg_dump keeps exactly the DBA's rows.
CREATE TABLE vital_tenancy.tenant_statuses (
    status text PRIMARY KEY,
    access text NOT NULL CHECK (access OPERATOR(pg_catalog.=) ANY (ARRAY['read-write', 'read-only', 'none']))
);
COMMENT ON TABLE vital_tenancy.tenant_statuses IS
    'Overrides of what a tenant status allows (read-write, read-only, none); statuses not listed keep their built-in meaning, unknown ones give none (set_status_access())';
SELECT pg_catalog.pg_extension_config_dump('vital_tenancy.tenant_statuses', '');

-- The journal of delete_tenant: one row per committed batch.
CREATE TABLE vital_tenancy.tenant_deletions (
    id         bigserial PRIMARY KEY,
    tenant     uuid NOT NULL,
    table_name text NOT NULL,
    batch      integer NOT NULL,
    rows       bigint NOT NULL,
    done_at    timestamptz NOT NULL DEFAULT pg_catalog.now()
);
CREATE INDEX ON vital_tenancy.tenant_deletions (tenant, table_name);
COMMENT ON TABLE vital_tenancy.tenant_deletions IS
    'Journal of delete_tenant(): every committed batch (tenant, table, batch number, rows deleted)';
SELECT pg_catalog.pg_extension_config_dump('vital_tenancy.tenant_deletions', '');
SELECT pg_catalog.pg_extension_config_dump('vital_tenancy.tenant_deletions_id_seq', '');

-- The platform-admin role: its members read and write every tenant's rows through
-- their own policy. Roles are cluster-wide, so it outlives DROP EXTENSION.
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) 'vital_tenancy_admin') THEN
    CREATE ROLE vital_tenancy_admin NOLOGIN;
  END IF;
END $$;

-- The trusted-context role: only sessions whose login role (session_user) is a member
-- may establish a tenant context (vital.tenant_id, set_tenant(), JWT claims, headers).
-- Grant it to PostgREST's authenticator and to application backends' login roles,
-- never to a role that clients log in as directly. Cluster-wide, like the admin role.
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) 'vital_tenancy_context') THEN
    CREATE ROLE vital_tenancy_context NOLOGIN;
  END IF;
END $$;

-- The server-side role of the application's API routes (instead of a BYPASSRLS service
-- key): no BYPASSRLS; a request running as it (SET LOCAL ROLE, or PostgREST from a JWT
-- whose role claim names it, minted server-side with the JWT secret) chooses its tenant
-- by the x-tenant-id header without a user membership, inside the same boundary. Grant
-- it to the login role the server path uses; never to anon or authenticated.
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) 'vital_tenancy_service') THEN
    CREATE ROLE vital_tenancy_service NOLOGIN;
  END IF;
END $$;

-- Migration bookkeeping. All kept by pg_dump.
-- A named migration run (e.g. 'vital-multi-tenant', migrations 003 and 004).
CREATE TABLE vital_tenancy.migration_runs (
    run_id      bigserial PRIMARY KEY,
    name        text NOT NULL,
    status      text NOT NULL DEFAULT 'running' CHECK (status OPERATOR(pg_catalog.=) ANY (ARRAY['running', 'completed', 'failed', 'reverted'])),
    started_at  timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    finished_at timestamptz
);
CREATE INDEX migration_runs_name_idx ON vital_tenancy.migration_runs (name, run_id);
SELECT pg_catalog.pg_extension_config_dump('vital_tenancy.migration_runs', '');
SELECT pg_catalog.pg_extension_config_dump('vital_tenancy.migration_runs_run_id_seq', '');

-- One backfill of one table within a run: its checkpoint, so a crash resumes.
CREATE TABLE vital_tenancy.migration_steps (
    run_id        bigint NOT NULL REFERENCES vital_tenancy.migration_runs ON DELETE CASCADE,
    tbl           regclass NOT NULL,
    tenant_column name NOT NULL,
    classifier    text NOT NULL,
    options       jsonb NOT NULL DEFAULT '{}',
    phase         text NOT NULL DEFAULT 'queue' CHECK (phase OPERATOR(pg_catalog.=) ANY (ARRAY['queue', 'catch_up', 'done'])),
    bounds        text[],
    batch_size    integer NOT NULL DEFAULT 5000,
    next_batch    integer NOT NULL DEFAULT 1,
    phase_rows    bigint NOT NULL DEFAULT 0,
    last_key      text,
    rows_total    bigint NOT NULL DEFAULT 0,
    rows_done     bigint NOT NULL DEFAULT 0,
    rows_changed  bigint NOT NULL DEFAULT 0,
    rows_failed   bigint NOT NULL DEFAULT 0,
    rule_counts   jsonb,
    started_at    timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    finished_at   timestamptz,
    -- Rows the batches wrote (rows_changed counts the rows given a tenant, which for a
    -- column the backfill added includes those given one by the catalog default).
    rows_rewritten bigint NOT NULL DEFAULT 0,
    -- Where the backfill added the column: the tenant every row existing at
    -- column_added_at got from the catalog default (no row rewritten for it).
    default_tenant  uuid,
    column_added_at timestamptz,
    -- When the table was dropped (forget_dropped_tables()): its OID may name another
    -- table since.
    dropped_at      timestamptz,
    PRIMARY KEY (run_id, tbl, tenant_column)
);
SELECT pg_catalog.pg_extension_config_dump('vital_tenancy.migration_steps', '');

-- The journal: what revert_run() puts back. A batch writes one row per distinct
-- (old tenant, new tenant) pair it made, holding the keys of those rows as an array
-- (a handful of rows per batch of thousands); read through the view
-- migration_journal, one row per changed row. The key arrays are compressed with
-- lz4 where the server has it (several times faster to write than pglz).
CREATE TABLE vital_tenancy.migration_journal_batches (
    batch_id    bigserial PRIMARY KEY,
    run_id      bigint NOT NULL,
    tbl         regclass NOT NULL,
    old_tenant  uuid,
    new_tenant  uuid NOT NULL,
    keys        text[] NOT NULL,
    changed_at  timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp()
);
DO $lz4$
BEGIN
    ALTER TABLE vital_tenancy.migration_journal_batches ALTER COLUMN keys SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    NULL; -- a server built without lz4 keeps the default (pglz)
END
$lz4$;
CREATE INDEX migration_journal_batches_run_idx ON vital_tenancy.migration_journal_batches (run_id, tbl);
SELECT pg_catalog.pg_extension_config_dump('vital_tenancy.migration_journal_batches', '');
SELECT pg_catalog.pg_extension_config_dump('vital_tenancy.migration_journal_batches_batch_id_seq', '');
CREATE VIEW vital_tenancy.migration_journal AS
SELECT b.run_id, b.tbl, k.key, b.old_tenant, b.new_tenant, b.changed_at
  FROM vital_tenancy.migration_journal_batches b, pg_catalog.unnest(b.keys) AS k(key);
COMMENT ON VIEW vital_tenancy.migration_journal IS
    'One row per row a backfill changed: run, table, key, old and new tenant (what revert_run puts back)';

-- The plan's migration_metrics (Phase 8.1).
CREATE TABLE vital_tenancy.migration_metrics (
    id                bigserial PRIMARY KEY,
    migration_name    text NOT NULL,
    phase             text NOT NULL,
    records_processed bigint NOT NULL DEFAULT 0,
    records_failed    bigint NOT NULL DEFAULT 0,
    duration_ms       bigint,
    error_message     text,
    created_at        timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp()
);
SELECT pg_catalog.pg_extension_config_dump('vital_tenancy.migration_metrics', '');
SELECT pg_catalog.pg_extension_config_dump('vital_tenancy.migration_metrics_id_seq', '');

-- Every DDL step the toolkit ran (or retried).
CREATE TABLE vital_tenancy.migration_log (
    id       bigserial PRIMARY KEY,
    at       timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    tbl      text,
    step     text NOT NULL,
    detail   text,
    attempts integer NOT NULL DEFAULT 1
);
SELECT pg_catalog.pg_extension_config_dump('vital_tenancy.migration_log', '');
SELECT pg_catalog.pg_extension_config_dump('vital_tenancy.migration_log_id_seq', '');

-- Row counts per table under a label (000 takes 'pre_migration', 005 'post_migration').
CREATE TABLE vital_tenancy.count_snapshots (
    label      text NOT NULL,
    table_name text NOT NULL,
    row_count  bigint NOT NULL,
    taken_at   timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    PRIMARY KEY (label, table_name)
);
SELECT pg_catalog.pg_extension_config_dump('vital_tenancy.count_snapshots', '');

-- References without a foreign key, declared for the reference checks
-- (e.g. messages.agent_id, text holding an agent's id or name). Kept by pg_dump.
CREATE TABLE vital_tenancy.declared_references (
    child          regclass NOT NULL,
    child_column   name NOT NULL,
    parent         regclass NOT NULL,
    parent_columns name[] NOT NULL,
    PRIMARY KEY (child, child_column)
);
SELECT pg_catalog.pg_extension_config_dump('vital_tenancy.declared_references', '');
