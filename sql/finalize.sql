-- vital_tenancy finalize: runs after every generated function.
-- Documents each function (\df+ shows it) and sets privileges.

CREATE FUNCTION vital_tenancy.tenants_table() RETURNS regclass
    LANGUAGE sql STABLE PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
    AS $$ SELECT pg_catalog.to_regclass(value) FROM vital_tenancy.settings WHERE name = 'tenants_table' $$;

COMMENT ON FUNCTION vital_tenancy.tenants_table() IS
    'The application''s tenants table as last given to ensure_tenants(), or NULL when none is recorded or it no longer exists.';
COMMENT ON FUNCTION vital_tenancy.platform_tenant_id() IS
    'Id of the Platform tenant (00000000-0000-0000-0000-000000000001): shared resources, readable by every tenant.';
COMMENT ON FUNCTION vital_tenancy.digital_health_tenant_id() IS
    'Id of the Digital Health Startup tenant (11111111-1111-1111-1111-111111111111).';
COMMENT ON FUNCTION vital_tenancy.pharma_tenant_id() IS
    'Id of the Pharmaceuticals tenant (f7aa6fd4-0af9-4706-8b31-034f1f7accda).';
COMMENT ON FUNCTION vital_tenancy.ensure_tenants(text, jsonb) IS
    'Idempotently make sure the three tenants exist in the tenants table (schema-qualified; created with id, name, slug, settings, created_at if missing). extra gives values for other required columns, shared or keyed by slug. Never changes an existing row; returns per tenant: created, already present, name differs or slug differs.';

-- ensure_tenants writes to the application's tenants table: for DBAs, not for PUBLIC.
REVOKE EXECUTE ON FUNCTION vital_tenancy.ensure_tenants(text, jsonb) FROM PUBLIC;

-- Classification -------------------------------------------------------------
-- The rules table's trigger: checks each written row (BEFORE ROW) and invalidates every
-- backend's rule cache (AFTER STATEMENT). PL/pgSQL, so that a direct call or a trigger
-- on another table gets PostgreSQL's own errors.
CREATE FUNCTION vital_tenancy.classification_rules_trigger() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_RELID IS DISTINCT FROM 'vital_tenancy.classification_rules'::regclass THEN
        RAISE EXCEPTION 'classification_rules_trigger() belongs to vital_tenancy.classification_rules only'
            USING ERRCODE = 'feature_not_supported';
    END IF;
    IF TG_LEVEL = 'STATEMENT' THEN
        PERFORM vital_tenancy.rules_changed();
        RETURN NULL;
    END IF;
    PERFORM vital_tenancy.check_rules_row(NEW.kind, NEW.rules);
    RETURN NEW;
END
$$;
CREATE TRIGGER classification_rules_check
    BEFORE INSERT OR UPDATE ON vital_tenancy.classification_rules
    FOR EACH ROW EXECUTE FUNCTION vital_tenancy.classification_rules_trigger();
CREATE TRIGGER classification_rules_invalidate
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON vital_tenancy.classification_rules
    FOR EACH STATEMENT EXECUTE FUNCTION vital_tenancy.classification_rules_trigger();

COMMENT ON FUNCTION vital_tenancy.classify_prompt_tenant(text, text, uuid, boolean) IS
    'Tenant of a prompt (name, domain, created_by, is_system_prompt): PRISM name or pharma domain -> Pharmaceuticals; digital-health domain -> Digital Health; system prompt (created_by NULL or flagged) -> Platform; else Digital Health. Domains normalised; rules configurable with set_rules(''prompt'', ...).';
COMMENT ON FUNCTION vital_tenancy.classify_prompt_tenant(jsonb) IS
    'Tenant of a prompt given as its whole row (to_jsonb(p)); a missing key counts as NULL, a key of the wrong type is an ERROR.';
COMMENT ON FUNCTION vital_tenancy.classify_knowledge_tenant(text, text[]) IS
    'Tenant of a knowledge chunk (domain, tags): digital_health domain or digital_medicine tag -> Digital Health; regulatory/clinical_trials/pharmacovigilance -> Pharmaceuticals; general_medicine/healthcare_standards -> Platform; else Digital Health.';
COMMENT ON FUNCTION vital_tenancy.classify_knowledge_tenant(jsonb) IS
    'Tenant of a knowledge chunk given as its whole row; a missing key counts as NULL.';
COMMENT ON FUNCTION vital_tenancy.classify_agent_tenant(text, text[]) IS
    'Tenant of an agent (tier in any spelling: 2, ''tier_2'', ''Tier 2'', ''TIER-2'', ''tier2''; knowledge_domains): tier 0-2 -> Platform; digital-health domain -> Digital Health; pharma domain -> Pharmaceuticals; else Digital Health.';
COMMENT ON FUNCTION vital_tenancy.classify_agent_tenant(integer, text[]) IS
    'Tenant of an agent with the real schema''s integer tier (0-3; anything else is no tier).';
COMMENT ON FUNCTION vital_tenancy.classify_agent_tenant(jsonb) IS
    'Tenant of an agent given as its whole row; tier may be an integer or text; a missing key counts as NULL.';
COMMENT ON FUNCTION vital_tenancy.classify_tool_tenant(uuid) IS
    'Tenant of a tool: its own tenant_id when set, else Platform (tool definitions are shared).';
COMMENT ON FUNCTION vital_tenancy.map_domain_to_suite(text) IS
    'Prompt suite for a domain (normalised): regulatory_affairs RULES™, clinical_research TRIALS™, pharmacovigilance GUARD™, market_access VALUE™ (PRISM suites); digital_health/digital_medicine BRIDGE™; else NULL.';
COMMENT ON FUNCTION vital_tenancy.tool_category_name(uuid) IS
    'Name of a tool category in public.tool_categories (for the tools.category text column); NULL for NULL or an unknown id.';
COMMENT ON FUNCTION vital_tenancy.explain_tenant(text, jsonb) IS
    'Which tenant a row (kind prompt, knowledge, agent or tool; row as jsonb) goes to, and which rule decided.';
COMMENT ON FUNCTION vital_tenancy.preview_classification(text, regclass) IS
    'Dry run of a classifier over a table: rows per tenant and rule, with up to five sample ids. Writes nothing.';
COMMENT ON FUNCTION vital_tenancy.rules() IS
    'The classification rules in force per kind (stored, or the built-in ones with is_default).';
COMMENT ON FUNCTION vital_tenancy.set_rules(text, jsonb) IS
    'Replace the rules of one kind ({"rules": [{"name", "tenant", conditions...}], "default_tenant"}); validated first: ERROR 22023 naming the field, old rules kept.';
COMMENT ON FUNCTION vital_tenancy.reset_rules(text) IS
    'Go back to the built-in rules of one kind.';
COMMENT ON FUNCTION vital_tenancy.classification_rules_trigger() IS
    'Trigger on classification_rules: validates written rules and invalidates every backend''s rule cache.';
-- Trigger functions need no EXECUTE privilege to fire; calling it directly is no use.
REVOKE EXECUTE ON FUNCTION vital_tenancy.classification_rules_trigger() FROM PUBLIC;
COMMENT ON FUNCTION vital_tenancy.check_rules_row(text, jsonb) IS
    'Check one classification_rules row as its trigger does: a kind with rules, rules that compile (ERROR 22023 naming the field), tenants that exist. Writes nothing.';
COMMENT ON FUNCTION vital_tenancy.rules_changed() IS
    'Invalidate every backend''s cached classification rules (the rules table''s statement trigger calls it).';
REVOKE EXECUTE ON FUNCTION vital_tenancy.check_rules_row(text, jsonb) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION vital_tenancy.rules_changed() FROM PUBLIC;

-- Changing rules is for DBAs (the table itself is writable only by its owner).
REVOKE EXECUTE ON FUNCTION vital_tenancy.set_rules(text, jsonb) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION vital_tenancy.reset_rules(text) FROM PUBLIC;

-- Tenant context and RLS -----------------------------------------------------
COMMENT ON FUNCTION vital_tenancy.current_tenant_id() IS
    'The tenant of the current request: setting vital.tenant_id, else tenant_id in request.jwt.claims, else x-tenant-id in request.headers if the claims'' sub is a member, else NULL. Only values set in the current transaction count (unless vital_tenancy.session_context), only for a login role that is a member of vital_tenancy_context, and inside a request running as another role only what that role did not set itself or pre_request() fixed. A bad context (malformed, unknown tenant, non-member, untrusted session, chosen inside the request) is an ERROR here. Cached per statement. SECURITY DEFINER, search_path pinned.';
COMMENT ON FUNCTION vital_tenancy.pre_request() IS
    'PostgREST db-pre-request hook: resolves and validates the request''s tenant context once, before the query reads any row, and fixes it for the transaction (a later change of a context setting or of the role gives no context; a second call with other values is 42501); a bad context is an ERROR, values left over from outside the transaction one WARNING. SECURITY DEFINER, search_path pinned.';
COMMENT ON FUNCTION vital_tenancy.set_tenant(uuid) IS
    'Set vital.tenant_id for the rest of the transaction (SET LOCAL semantics) after checking the tenant exists; NULL clears it. Only for login roles that are members of vital_tenancy_context, before any switch to a role that is not (ERROR 42501 otherwise); warns about leftover session values.';
COMMENT ON FUNCTION vital_tenancy.visible_tenant_ids(boolean) IS
    'Tenant ids the current request may read (what the policies compare with): its tenant plus Platform (only its tenant when shared is false); every tenant for vital_tenancy_admin; none without a valid context. Never raises for a bad context: it counts as none.';
COMMENT ON FUNCTION vital_tenancy.writable_tenant_ids() IS
    'Tenant ids the current request may write: its own tenant; every tenant for vital_tenancy_admin; none without a valid context. Never raises for a bad context: it counts as none.';
COMMENT ON FUNCTION vital_tenancy.refresh_tenant_policies() IS
    'Re-create the extension''s policies (vt_*) on every table enable_tenant_rls() manages, from the current definition; the application''s policies, defaults, indexes and RLS flags are left alone. Run by ALTER EXTENSION UPDATE when the policies change. DBA only.';
COMMENT ON FUNCTION vital_tenancy.all_tenant_ids() IS
    'Every tenant id in the tenants table: for platform admins and DBAs (not executable by PUBLIC). SECURITY DEFINER, search_path pinned.';
COMMENT ON FUNCTION vital_tenancy.protect_tenants_table() IS
    'Protect the tenants registry: revoke INSERT/UPDATE/DELETE/TRUNCATE from every role but its owner and vital_tenancy_admin, enable row level security with policies so a request reads its own tenant''s row and Platform''s (every row for admins, none without a context). Idempotent; migration 006 runs it. DBA only.';
COMMENT ON FUNCTION vital_tenancy.tenant_id_by_slug(text) IS
    'The id of the tenant with this slug, or NULL: the lookup an application needs before sign-in, without opening the registry. SECURITY DEFINER, search_path pinned.';
COMMENT ON FUNCTION vital_tenancy.set_membership_table(regclass, text, text) IS
    'Use another table (with uuid user and tenant columns) for the membership check of the x-tenant-id header.';
COMMENT ON FUNCTION vital_tenancy.enable_tenant_rls(regclass, text, boolean) IS
    'Enable and force RLS with tenant policies (restrictive boundary, index-friendly InitPlan shape), the column default current_tenant_id() and a tenant index. Idempotent; undone by disable_tenant_rls().';
COMMENT ON FUNCTION vital_tenancy.disable_tenant_rls(regclass) IS
    'Undo exactly what enable_tenant_rls() did to a table: its policies, the column default, its index, the RLS flags.';
COMMENT ON FUNCTION vital_tenancy.rls_status() IS
    'Tenant RLS state of every table with a tenant column: enabled, forced, policies, tenant index, and whether the policies can use it.';

REVOKE EXECUTE ON FUNCTION vital_tenancy.enable_tenant_rls(regclass, text, boolean) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION vital_tenancy.disable_tenant_rls(regclass) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION vital_tenancy.set_membership_table(regclass, text, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION vital_tenancy.refresh_tenant_policies() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION vital_tenancy.protect_tenants_table() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION vital_tenancy.all_tenant_ids() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION vital_tenancy.all_tenant_ids() TO vital_tenancy_admin;

-- Migrations ------------------------------------------------------------------
COMMENT ON FUNCTION vital_tenancy.run_ddl(text, text, text, integer, integer) IS
    'Run one DDL statement under lock_timeout, retrying with backoff on lock timeouts; each attempt logged in migration_log.';
COMMENT ON PROCEDURE vital_tenancy.backfill(regclass, text, integer, integer, jsonb, text, boolean, text, boolean, boolean, boolean) IS
    'Assign tenant_id with a classifier in keyset batches (COMMIT per batch), journaled, resumable after a crash; a missing tenant column is added with the majority tenant as catalog default, so only the other rows are rewritten. CALL outside a transaction block.';
COMMENT ON FUNCTION vital_tenancy.backfill_check_arguments(regclass, text, integer, integer, jsonb, text, boolean, text, boolean, boolean, boolean) IS
    'The arguments of CALL backfill checked (NULLs, batch_size 1 to 1000000, sleep_ms 0 to 60000, a tenant_column over 63 bytes, run_name) before anything is read or written; raises 22023/22004/42622 naming the argument.';
COMMENT ON FUNCTION vital_tenancy.backfill_majority(regclass, jsonb, boolean) IS
    'Before backfill adds a tenant column: the classifier''s tenants counted in one pass that writes nothing (per rule where rules are recorded); the most frequent one becomes the catalog default.';
COMMENT ON FUNCTION vital_tenancy.backfill_batch_sql(jsonb, text, uuid, boolean, boolean, boolean) IS
    'The SQL of one backfill batch for a plan and phase: rewrite only rows that classify away from the catalog default, overwrite, or fill rows without a tenant; journals every assigned row.';
COMMENT ON FUNCTION vital_tenancy.backfill_run_batch(text, regclass, bigint, text, text, uuid, integer, bigint) IS
    'Run one backfill batch and count it (given a tenant, left without, rewritten, walked), retrying on deadlock or lock timeout up to 10 times. Refuses NULL arguments, a table no relation is and an unknown run before the batch runs.';
COMMENT ON FUNCTION vital_tenancy.backfill_step(bigint, regclass, text) IS
    'A backfill''s checkpoint row (migration_steps) for one table in one run; ERROR 42P01 for an OID no relation has, 22023 where the run has no such step.';
COMMENT ON FUNCTION vital_tenancy.backfill_batches(regclass, integer, text, boolean) IS
    'The batches a backfill phase will walk: how many rows are to do and the key ending each batch of batch_size rows (one count and one ordered pass over the keys). Writes nothing.';
COMMENT ON FUNCTION vital_tenancy.backfill_plan(regclass, text, jsonb, text) IS
    'What backfill will run for a table: the classification expression, the key it walks, the tenant column and whether it exists yet. Validates (tenants named in options must exist); writes nothing.';
COMMENT ON FUNCTION vital_tenancy.add_tenant_column(regclass, text, integer, integer, uuid) IS
    'Add a nullable tenant column (with default_tenant: that tenant for every existing row, in the catalog, no rewrite) and a NOT VALID foreign key to the tenants table (online); returns the CREATE INDEX CONCURRENTLY statement in ddl for \gexec.';
COMMENT ON FUNCTION vital_tenancy.enforce_tenant_column(regclass, text, integer, integer) IS
    'Validate the tenant foreign key and make the column NOT NULL online (CHECK NOT VALID, VALIDATE, SET NOT NULL, drop CHECK).';
COMMENT ON FUNCTION vital_tenancy.snapshot_counts(text, text[], boolean) IS
    'Store exact row counts of every table in the schemas under a label (kept unless replace).';
COMMENT ON FUNCTION vital_tenancy.compare_counts(text, text) IS
    'Row counts of two snapshots side by side with the difference: the no-data-loss proof.';
COMMENT ON FUNCTION vital_tenancy.revert_run(bigint) IS
    'Put back every tenant value a migration run journaled, where it is still the value the run wrote; where the run added the column and stopped before its batches passed every row, the rows past its checkpoint still holding its catalog default are reset to NULL too. A table dropped since is reported, not touched.';
COMMENT ON FUNCTION vital_tenancy.finish_run(text) IS
    'Mark the named running migration run completed; returns its id (a run already completed: its id, with a NOTICE; no run of that name: 22023). A WARNING per step that stopped before its last batch: finished, it can no longer be resumed, only reverted.';
COMMENT ON FUNCTION vital_tenancy.migration_report(text) IS
    'The migration summary report in Markdown: counts, distribution, rules, validation, durations, revert.';
COMMENT ON FUNCTION vital_tenancy.tenant_distribution_of(regclass, text) IS
    'Rows per tenant of one table.';

-- Validation ------------------------------------------------------------------
COMMENT ON FUNCTION vital_tenancy.tenant_id_coverage(text[]) IS
    'Per table with a tenant column: total rows, rows with a tenant, rows without.';
COMMENT ON FUNCTION vital_tenancy.orphaned_tenant_refs(text[]) IS
    'Tenant ids used in tables but absent from the tenants table.';
COMMENT ON FUNCTION vital_tenancy.tenant_distribution(text[]) IS
    'Rows per tenant and table, computed table by table.';
COMMENT ON FUNCTION vital_tenancy.orphaned_references(text[]) IS
    'For every foreign key (NOT VALID included) and declared reference: child rows whose parent does not exist.';
COMMENT ON FUNCTION vital_tenancy.cross_tenant_references(text[]) IS
    'Child rows whose tenant differs from their non-Platform parent''s tenant.';
COMMENT ON FUNCTION vital_tenancy.declare_reference(regclass, text, regclass, text[]) IS
    'Declare a reference without a foreign key (child column matching any of the parent columns) for the reference checks.';
COMMENT ON FUNCTION vital_tenancy.duplicates(regclass, text[]) IS
    'Keys (the given columns) that occur more than once within a tenant.';
COMMENT ON FUNCTION vital_tenancy.category_mismatches() IS
    'Tools whose category text disagrees with tool_categories.name of their category_id.';
COMMENT ON FUNCTION vital_tenancy.rls_coverage(text[]) IS
    'Tables with a tenant column whose RLS is off, not forced, without policies or not index-friendly; and per table every role (superusers aside) that holds privileges on it while bypassing RLS (BYPASSRLS, e.g. service_role), with what to do instead.';
COMMENT ON FUNCTION vital_tenancy.validate(text[]) IS
    'Run every check: (check_name, severity blocking/warning, table_name, failing, detail).';
COMMENT ON FUNCTION vital_tenancy.assert_valid(text[]) IS
    'Raise one ERROR listing every blocking validation failure (migration 005 calls it).';

REVOKE EXECUTE ON FUNCTION vital_tenancy.run_ddl(text, text, text, integer, integer) FROM PUBLIC;
REVOKE EXECUTE ON PROCEDURE vital_tenancy.backfill(regclass, text, integer, integer, jsonb, text, boolean, text, boolean, boolean, boolean) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION vital_tenancy.backfill_run_batch(text, regclass, bigint, text, text, uuid, integer, bigint) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION vital_tenancy.add_tenant_column(regclass, text, integer, integer, uuid) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION vital_tenancy.enforce_tenant_column(regclass, text, integer, integer) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION vital_tenancy.snapshot_counts(text, text[], boolean) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION vital_tenancy.revert_run(bigint) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION vital_tenancy.finish_run(text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION vital_tenancy.declare_reference(regclass, text, regclass, text[]) FROM PUBLIC;

-- Tenant-scoped keys and references ------------------------------------------------
COMMENT ON FUNCTION vital_tenancy.tenant_keys_plan() IS
    'What the keys step (migration 007) will do on the tables under tenant RLS: each unique key made per tenant (index_ddl to run first with \gexec, then ddl swaps the constraint onto it) and each reference between tenant tables given its tenant guard. Empty once done. Writes nothing.';
COMMENT ON FUNCTION vital_tenancy.apply_tenant_keys(integer, integer) IS
    'Apply the keys step: swap each unique constraint onto its per-tenant index (ERROR 55000 if an index is missing: run the plan''s index_ddl first) and create each reference guard, under lock_timeout with retries. Idempotent. DBA only.';
COMMENT ON FUNCTION vital_tenancy.tenant_reference_check() IS
    'Trigger guarding a reference between tenant tables (created by apply_tenant_keys()): the parent must belong to the row''s tenant, or to Platform where the parent table is shared; the same 23503 whether the parent does not exist or belongs to another tenant; a row of a tenant the writer may not write is left to the policies'' one error. Runs only as a guard matching a recorded foreign key (else 42501); not executable by PUBLIC.';
COMMENT ON FUNCTION vital_tenancy.tenant_parent_check() IS
    'Trigger on every referenced tenant table (vt_tenant_parent_guard, created by apply_tenant_keys()): a row that rows of other tenants reference keeps its tenant (unless it becomes a Platform row of a shared table), and a delete never reaches rows of another tenant through ON DELETE CASCADE, SET NULL or SET DEFAULT (23503, nothing changed). Runs only as that trigger (else 42501); not executable by PUBLIC.';
REVOKE EXECUTE ON FUNCTION vital_tenancy.apply_tenant_keys(integer, integer) FROM PUBLIC;

-- Health, indexes, usage, export ---------------------------------------------------
COMMENT ON FUNCTION vital_tenancy.health() IS
    'Health document: database, tenants (every registry tenant with status and access; healthy when the three of the migration exist with data and no status is unknown), referential integrity, RLS coverage (including roles that bypass RLS on tenant tables, rls.bypass_roles), on Citus every shard placement''s boundary (citus_boundary_status()), last migration run.';
COMMENT ON FUNCTION vital_tenancy.index_advice(text[]) IS
    'Missing tenant indexes and the plan''s composite indexes, each with a CREATE INDEX CONCURRENTLY IF NOT EXISTS statement for \gexec.';
COMMENT ON FUNCTION vital_tenancy.index_coverage(text[]) IS
    'Percentage of tables with a tenant column whose tenant column leads a valid index (the plan''s > 95% goal).';
COMMENT ON FUNCTION vital_tenancy.query_advice() IS
    'Index advice from the application''s statements in pg_stat_statements: each planned as the role that ran it, under its policies and without them (parsed and planned only, never run); tenant-leading (or, for a page of the newest rows, order-leading) indexes where a plan scans or sorts a tenant table, each checked with hypopg (cost before and after). Rows: index (ddl: CREATE INDEX CONCURRENTLY IF NOT EXISTS), rebuild (ddl: drop an invalid index first), rls_leakproof (a condition that loses an index only under RLS), seq_scan (still scanned), not_planned (why). Apply with SELECT ddl FROM vital_tenancy.query_advice() WHERE ddl IS NOT NULL \gexec or scripts/migrate --apply-advice. Not executable by PUBLIC.';
COMMENT ON FUNCTION vital_tenancy.query_coverage() IS
    'Index coverage as the migration plan means it: the percentage of the application''s calls on tenant tables (pg_stat_statements) whose plan reads no tenant table sequentially; NULL without such calls. Not executable by PUBLIC.';
COMMENT ON FUNCTION vital_tenancy.tenant_usage(text[]) IS
    'Rows, estimated bytes and last change per tenant and table.';
COMMENT ON FUNCTION vital_tenancy.export_tenant(uuid, text[]) IS
    'A tenant''s registry row, then its own rows of every tenant table, as (table_name, row jsonb), streamed from a cursor; usable with COPY (SELECT ...) TO STDOUT and loaded elsewhere by import_tenant().';

-- Tenant lifecycle (src/lifecycle.rs, src/tenants.rs, sql/lifecycle.sql) --------------
COMMENT ON FUNCTION vital_tenancy.add_tenant(text, text, jsonb, uuid) IS
    'Onboarding: create a tenant in the application''s tenants table (name, slug, extra column values such as type; id generated unless given), its NOT NULL and CHECK constraints checked first with errors naming the column. Returns its id; a tenant with this slug already present is returned as it is.';
COMMENT ON FUNCTION vital_tenancy.tenant_status() IS
    'Every tenant of the registry: status, the access it gives (read-write, read-only, none) and whether the status is known (an unknown or NULL status gives none).';
COMMENT ON FUNCTION vital_tenancy.set_status_access(text, text) IS
    'Say what a tenant status allows (read-write, read-only, none), overriding the built-in meaning (active read-write; suspended, archived read-only; pending, deleted none); NULL access removes the override. Effective from the next statement; sent to the Citus workers too.';
COMMENT ON FUNCTION vital_tenancy.set_status_column(text) IS
    'Which column of the tenants table holds the status (default status); NULL or empty turns statuses off (every registered tenant reads and writes).';
COMMENT ON FUNCTION vital_tenancy.tenant_deletion_plan(uuid) IS
    'What delete_tenant will do, in order: each tenant table children first with the tenant''s row count and whether it goes in batches, the registry row last. Refuses NULL, Platform and an unknown tenant. Changes nothing.';
COMMENT ON PROCEDURE vital_tenancy.delete_tenant(uuid, boolean, integer) IS
    'Offboarding: delete a tenant''s rows from every tenant table in foreign-key order, in batches with a COMMIT and a journal row (vital_tenancy.tenant_deletions) each, the registry row last; dry run (the plan as NOTICEs) unless dry_run => false; resumable by calling again. CALL outside a transaction block.';
COMMENT ON FUNCTION vital_tenancy.import_tenant(regclass, uuid) IS
    'Load a tenant''s export (a table of (table_name text, row jsonb) filled from export_tenant''s COPY output) into this database with the same schema: registry row first, tables parents first, ids kept, rows already present kept (importing again inserts nothing). Refuses rows of another tenant or of unknown tables, changing nothing.';
COMMENT ON FUNCTION vital_tenancy.tenant_activity() IS
    'Per tenant since the last reset: statements, rows read (returned by SELECTs), rows written, execution time; tenant_id NULL for statements without a tenant context. Collected by executor hooks per statement (not per row) when vital_tenancy is in shared_preload_libraries, else ERROR 55000.';
COMMENT ON FUNCTION vital_tenancy.tenant_activity_reset() IS
    'Forget the per-tenant activity; returns when the new period began.';
REVOKE EXECUTE ON FUNCTION vital_tenancy.add_tenant(text, text, jsonb, uuid) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION vital_tenancy.tenant_status() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION vital_tenancy.set_status_access(text, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION vital_tenancy.set_status_column(text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION vital_tenancy.tenant_deletion_plan(uuid) FROM PUBLIC;
REVOKE EXECUTE ON PROCEDURE vital_tenancy.delete_tenant(uuid, boolean, integer) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION vital_tenancy.import_tenant(regclass, uuid) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION vital_tenancy.tenant_activity() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION vital_tenancy.tenant_activity_reset() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION vital_tenancy.tenant_activity() TO pg_read_all_stats;

-- Citus -------------------------------------------------------------------------
COMMENT ON FUNCTION vital_tenancy.citus_readiness(text[]) IS
    'Per table: proposed Citus role (distributed by tenant_id, reference, local), each blocker (keys or foreign keys without tenant_id, triggers, sequences, reference-to-distributed keys) and the DDL that removes it.';
COMMENT ON FUNCTION vital_tenancy.prepare_for_citus(integer, integer) IS
    'Apply the key and foreign-key DDL from citus_readiness: unique indexes CONCURRENTLY via \gexec first, then keys attached USING INDEX and foreign keys rewritten with tenant_id, under lock_timeout with retries. Idempotent; data unchanged.';
COMMENT ON FUNCTION vital_tenancy.distribute_all() IS
    'On a Citus coordinator: create_reference_table for reference tables, create_distributed_table by tenant_id (co-located) for tenant tables, parents first; foreign keys between distributed tables dropped and re-added around it, the extension''s records re-keyed to the new relations. ERROR 55000 when Citus is absent, blockers remain or a boundary is still restrictive (citus_safe_policies()).';
REVOKE EXECUTE ON FUNCTION vital_tenancy.prepare_for_citus(integer, integer) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION vital_tenancy.distribute_all() FROM PUBLIC;

-- The tenant boundary in the Citus shape (src/boundary.rs).
CREATE FUNCTION vital_tenancy.policy_fingerprint(tbl regclass) RETURNS text
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_kind "char";
    v_md5  text;
BEGIN
    -- Only a table has policies: anything else would get the fingerprint of a table
    -- without any (census N12).
    SELECT c.relkind INTO v_kind FROM pg_class c WHERE c.oid = tbl::oid;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'relation with OID % does not exist', tbl::oid USING ERRCODE = 'undefined_table';
    ELSIF v_kind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION '% is not a table', tbl USING ERRCODE = 'wrong_object_type';
    END IF;
    SELECT md5(COALESCE(string_agg(e, '|' ORDER BY e), '')) INTO v_md5
      FROM (SELECT p.polcmd::text || ':'
                   || array_to_string(ARRAY(SELECT pg_get_userbyid(r) FROM unnest(p.polroles) r ORDER BY 1), ',') || ':'
                   || COALESCE(pg_get_expr(p.polqual, p.polrelid), '') || ':'
                   || COALESCE(pg_get_expr(p.polwithcheck, p.polrelid), '') AS e
              FROM pg_policy p WHERE p.polrelid = tbl) x;
    RETURN v_md5;
END
$$;
COMMENT ON FUNCTION vital_tenancy.policy_fingerprint(regclass) IS
    'md5 of a table''s policies: commands, role names and expressions (deparsed with search_path pg_catalog), not names or AS PERMISSIVE/RESTRICTIVE; equal on a Citus shard and its table when Citus copied them faithfully. 42P01 for an OID no relation has, 42809 for a relation that is not a table.';
COMMENT ON FUNCTION vital_tenancy.boundary_problems(regclass, text) IS
    'Every way the table''s policies, each read as PERMISSIVE (as Citus recreates them on shards), admit a row outside the tenant boundary: a USING or WITH CHECK without the conjunct tenant_id = ANY (visible/writable_tenant_ids()), a sub-select, RLS not enabled. Read from the expression trees; no rows when the boundary holds.';
COMMENT ON FUNCTION vital_tenancy.citus_safe_policies(regclass, boolean) IS
    'Put a managed table''s (or the tenants registry''s) policies in the Citus shape: no restrictive policy, the boundary folded into every policy of the application''s (originals kept in vital_tenancy.originals; a FOR ALL policy gets a read policy beside it), no sub-selects (set aside with set_aside_subselects, else 0A000). Refuses restrictive application policies (0A000).';
COMMENT ON FUNCTION vital_tenancy.citus_boundary_status() IS
    'The tenant boundary on every managed table and, on Citus, on every shard placement (checked by the worker''s boundary_problems() and compared with the table''s policy_fingerprint()): one row per placement, problem NULL where it holds.';
REVOKE EXECUTE ON FUNCTION vital_tenancy.citus_safe_policies(regclass, boolean) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION vital_tenancy.citus_boundary_status() FROM PUBLIC;

-- A table dropped takes the extension's records of it along (issue 32, item 4): its
-- RLS record, the originals kept for it, the references declared from or to it. A
-- later table can get the dropped one's OID, and must not be taken for it. The
-- migration history keeps the table's steps for the report, marked dropped_at, so that
-- neither a resumed backfill nor revert_run() reaches a new table with the old OID.
-- SECURITY DEFINER: a role dropping its own table cannot write the extension's tables;
-- it takes no arguments and touches only rows of the OIDs this DROP removed.
CREATE FUNCTION vital_tenancy.forget_dropped_tables() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_dropped oid[];
BEGIN
    SELECT array_agg(d.objid) INTO v_dropped
      FROM pg_event_trigger_dropped_objects() d
     WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::regclass AND d.objsubid OPERATOR(pg_catalog.=) 0
       AND d.object_type OPERATOR(pg_catalog.=) ANY (ARRAY['table', 'partitioned table']);
    -- Nothing to forget, or the extension's own tables are going (DROP EXTENSION).
    IF v_dropped IS NULL OR to_regclass('vital_tenancy.rls_tables') IS NULL THEN
        RETURN;
    END IF;
    DELETE FROM vital_tenancy.rls_tables r WHERE r.tbl::oid OPERATOR(pg_catalog.=) ANY (v_dropped);
    DELETE FROM vital_tenancy.originals o WHERE o.tbl::oid OPERATOR(pg_catalog.=) ANY (v_dropped);
    DELETE FROM vital_tenancy.declared_references d
     WHERE d.child::oid OPERATOR(pg_catalog.=) ANY (v_dropped) OR d.parent::oid OPERATOR(pg_catalog.=) ANY (v_dropped);
    UPDATE vital_tenancy.migration_steps s SET dropped_at = clock_timestamp()
     WHERE s.tbl::oid OPERATOR(pg_catalog.=) ANY (v_dropped) AND s.dropped_at IS NULL;
END
$$;
COMMENT ON FUNCTION vital_tenancy.forget_dropped_tables() IS
    'Event trigger function (vital_tenancy_forget_dropped, on sql_drop): a dropped table''s rows in rls_tables, originals and declared_references are deleted and its migration steps marked dropped_at, so that a later table with the same OID is not taken for it. SECURITY DEFINER, search_path pinned; not executable by PUBLIC.';
CREATE EVENT TRIGGER vital_tenancy_forget_dropped ON sql_drop
    EXECUTE FUNCTION vital_tenancy.forget_dropped_tables();

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
        SELECT pg_catalog.format('%s %I.%I(%s)', CASE WHEN p.prokind OPERATOR(pg_catalog.=) 'p' THEN 'PROCEDURE' ELSE 'FUNCTION' END,
                                 n.nspname, p.proname, pg_catalog.pg_get_function_identity_arguments(p.oid)) AS routine
          FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) p.pronamespace
         WHERE n.nspname OPERATOR(pg_catalog.=) 'vital_tenancy'
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
