-- 008: take the migrated schema to Citus (coordinator, with the workers added and
-- vital_tenancy created; Citus propagates CREATE EXTENSION to the workers).
-- scripts/migrate runs this step only where the citus extension is installed; run by
-- hand elsewhere it refuses (55000) and changes nothing. Idempotent.
--
-- Every decision the real schema forces is taken here and printed, and each object
-- changed or set aside is kept with its original definition in vital_tenancy.originals:
--   * keys and foreign keys get tenant_id (prepare_for_citus());
--   * every policy goes to the Citus shape (citus_safe_policies()): Citus recreates
--     policies on shards without AS RESTRICTIVE and refuses sub-selects in them, so the
--     boundary is folded into each policy; the application's two sub-select policies on
--     agent_tool_assignments are set aside (access within a tenant then follows the
--     table's other policies);
--   * the foreign key agent_tool_assignments.assigned_by -> auth.users is set aside: a
--     distributed table cannot reference a local table (auth.users stays the auth
--     server's); validate() keeps counting orphans;
--   * the extension's tenant-reference guards and parent guards (migration 007) are set
--     aside where the foreign key now includes tenant_id (the key enforces the same) or
--     points at a reference table (Platform rows only); they would query other tables
--     from a shard;
--   * the application's triggers stay; distribute_all() creates the tables with
--     citus.enable_unsafe_triggers for the row-local updated_at triggers, and reports
--     those that touch other tables.
\set ON_ERROR_STOP on
SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'citus') AS vt_has_citus \gset
\if :vt_has_citus
\else
DO $$ BEGIN
    RAISE EXCEPTION '008_citus_distribute.sql needs the citus extension, which is not installed in database %', current_database()
        USING ERRCODE = 'object_not_in_prerequisite_state',
              HINT = 'On a Citus coordinator: CREATE EXTENSION citus, add the workers, then run scripts/migrate again. Single-node databases stop after 007.';
END $$;
\endif

\echo '008: unique indexes with tenant_id (CONCURRENTLY)'
SELECT ddl FROM vital_tenancy.prepare_for_citus() WHERE step LIKE 'build unique index%' \gexec
\echo '008: keys and foreign keys with tenant_id'
SELECT step, detail FROM vital_tenancy.prepare_for_citus() WHERE step <> 'left for the DBA';

\echo '008: foreign keys and triggers Citus cannot keep (set aside, kept in vital_tenancy.originals)'
WITH app AS (
    SELECT tbl FROM vital_tenancy.rls_tables
), fk AS (
    SELECT k.conrelid::regclass AS tbl, k.conname, pg_catalog.pg_get_constraintdef(k.oid) AS def,
           format('foreign key to %s, a table outside the application''s tenant tables: a distributed table cannot reference a local one', k.confrelid::regclass) AS reason
      FROM pg_catalog.pg_constraint k
     WHERE k.contype = 'f' AND k.conrelid IN (SELECT tbl FROM app)
       AND k.confrelid NOT IN (SELECT tbl FROM app)
       AND k.confrelid IS DISTINCT FROM vital_tenancy.tenants_table()::oid
), tg AS (
    SELECT t.tgrelid::regclass AS tbl, t.tgname, pg_catalog.pg_get_triggerdef(t.oid) AS def,
           CASE WHEN t.tgname = 'vt_tenant_parent_guard'
                THEN 'parent guard of migration 007: it queries the referencing tables, which a shard cannot; the foreign keys with tenant_id keep every reference within one tenant instead'
                ELSE 'tenant-reference guard of migration 007: it queries the referenced table, which a shard cannot; the foreign key with tenant_id (or to a Platform-only reference table) holds instead' END AS reason
      FROM pg_catalog.pg_trigger t
     WHERE NOT t.tgisinternal AND (t.tgname LIKE 'vt\_tenant\_ref\_%' OR t.tgname = 'vt_tenant_parent_guard')
       AND t.tgrelid IN (SELECT tbl FROM app)
)
INSERT INTO vital_tenancy.originals (tbl, kind, name, definition, action, reason)
SELECT tbl, 'foreign key', conname, def || ' -- on ' || tbl::text, 'set aside', reason FROM fk
UNION ALL
SELECT tbl, 'trigger', tgname, def, 'set aside', reason FROM tg
ON CONFLICT (tbl, kind, name) DO NOTHING;
SELECT format('ALTER TABLE %s DROP CONSTRAINT IF EXISTS %I', o.tbl, o.name)
  FROM vital_tenancy.originals o WHERE o.kind = 'foreign key' AND o.action = 'set aside' \gexec
SELECT format('DROP TRIGGER IF EXISTS %I ON %s', o.name, o.tbl)
  FROM vital_tenancy.originals o WHERE o.kind = 'trigger' AND o.action = 'set aside' \gexec

\echo '008: policies in the Citus shape (every policy permissive with the boundary folded in, no sub-select)'
SELECT r.tbl::text AS table_name, p.policy, p.action
  FROM vital_tenancy.rls_tables r, vital_tenancy.citus_safe_policies(r.tbl, set_aside_subselects => true) p
 ORDER BY 1, 2;
SELECT p.policy, p.action
  FROM vital_tenancy.citus_safe_policies(vital_tenancy.tenants_table()) p;

\echo '008: tenant context travels to the workers (SET LOCAL; set_tenant() and pre_request() use it)'
SELECT format('ALTER DATABASE %I SET citus.propagate_set_commands = %L', current_database(), 'local') \gexec

\echo '008: distribute (reference tables, then tenant tables co-located by tenant_id)'
SELECT * FROM vital_tenancy.distribute_all();

\echo '008: the boundary on every shard placement'
SELECT count(*) AS placements_checked, count(problem) AS problems FROM vital_tenancy.citus_boundary_status();
DO $$
DECLARE n bigint;
BEGIN
    SELECT count(problem) INTO n FROM vital_tenancy.citus_boundary_status();
    IF n > 0 THEN
        RAISE EXCEPTION '% shard placement problem(s) with the tenant boundary', n
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'SELECT * FROM vital_tenancy.citus_boundary_status() WHERE problem IS NOT NULL';
    END IF;
END $$;
\echo '008: decisions taken (vital_tenancy.originals)'
SELECT tbl::text AS table_name, kind, name, action, reason FROM vital_tenancy.originals ORDER BY 1, 2, 3;
