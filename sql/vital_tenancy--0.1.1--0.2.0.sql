-- vital_tenancy 0.1.1 -> 0.2.0, the second step of ALTER EXTENSION vital_tenancy UPDATE
-- from 0.1.0 (the first, vital_tenancy--0.1.0--0.1.1.sql, made the schema a member).
-- The tenant context holds on real request paths: only trusted login roles choose a
-- tenant, only values set inside the current transaction count, policies never raise
-- for a bad context, and PostgREST gets a pre-request hook. tests/upgrade checks that
-- 0.1.0 + this script equals a fresh 0.2.0 install. The policies change too (a policy
-- for vital_tenancy_service; the admin policy names the tenant column): they are
-- re-created on every managed table at the end, each statement under lock_timeout with
-- retries (if a long transaction holds a table, the update fails whole: run it again).
\echo Use "ALTER EXTENSION vital_tenancy UPDATE TO '0.2.0'" to load this file. \quit

-- The extension's own schema is pg_catalog since 0.1.1; its objects are in vital_tenancy.
SET LOCAL search_path = vital_tenancy, pg_catalog;

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
CREATE FUNCTION vital_tenancy.pre_request() RETURNS void
    SECURITY DEFINER
    SET search_path TO pg_catalog, pg_temp
    STRICT VOLATILE
    LANGUAGE c
    AS 'MODULE_PATHNAME', 'pre_request_wrapper';

-- They read transaction-local state of the leader (which settings were set in this
-- transaction), which parallel workers cannot see.
ALTER FUNCTION vital_tenancy.current_tenant_id() PARALLEL RESTRICTED;
ALTER FUNCTION vital_tenancy.visible_tenant_ids(boolean) PARALLEL RESTRICTED;
ALTER FUNCTION vital_tenancy.writable_tenant_ids() PARALLEL RESTRICTED;

COMMENT ON FUNCTION vital_tenancy.current_tenant_id() IS
    'The tenant of the current request: setting vital.tenant_id, else tenant_id in request.jwt.claims, else x-tenant-id in request.headers if the claims'' sub is a member, else NULL. Only values set in the current transaction count (unless vital_tenancy.session_context), and only for a login role that is a member of vital_tenancy_context. A bad context (malformed, unknown tenant, non-member, untrusted session) is an ERROR here. Cached per statement. SECURITY DEFINER, search_path pinned.';
COMMENT ON FUNCTION vital_tenancy.pre_request() IS
    'PostgREST db-pre-request hook: resolves and validates the request''s tenant context once, before the query reads any row; a bad context is an ERROR, values left over from outside the transaction one WARNING. SECURITY DEFINER, search_path pinned.';
COMMENT ON FUNCTION vital_tenancy.set_tenant(uuid) IS
    'Set vital.tenant_id for the rest of the transaction (SET LOCAL semantics) after checking the tenant exists; NULL clears it. Only for login roles that are members of vital_tenancy_context (ERROR 42501 otherwise); warns about leftover session values.';
COMMENT ON FUNCTION vital_tenancy.visible_tenant_ids(boolean) IS
    'Tenant ids the current request may read (what the policies compare with): its tenant plus Platform (only its tenant when shared is false); every tenant for vital_tenancy_admin; none without a valid context. Never raises for a bad context: it counts as none.';
COMMENT ON FUNCTION vital_tenancy.writable_tenant_ids() IS
    'Tenant ids the current request may write: its own tenant; every tenant for vital_tenancy_admin; none without a valid context. Never raises for a bad context: it counts as none.';
COMMENT ON FUNCTION vital_tenancy.rls_coverage(text[]) IS
    'Tables with a tenant column whose RLS is off, not forced, without policies or not index-friendly; and per table every role (superusers aside) that holds privileges on it while bypassing RLS (BYPASSRLS, e.g. service_role), with what to do instead.';
COMMENT ON FUNCTION vital_tenancy.health() IS
    'Health document: database, tenants (healthy when all three exist with data), referential integrity, RLS coverage (including roles that bypass RLS on tenant tables, rls.bypass_roles), last migration run.';

-- Re-create the extension's policies from the new definition.
CREATE FUNCTION vital_tenancy.refresh_tenant_policies() RETURNS TABLE (
    table_name text,
    action text
)
    STRICT VOLATILE
    SET search_path TO pg_catalog, pg_temp
    LANGUAGE c
    AS 'MODULE_PATHNAME', 'refresh_tenant_policies_wrapper';
COMMENT ON FUNCTION vital_tenancy.refresh_tenant_policies() IS
    'Re-create the extension''s policies (vt_*) on every table enable_tenant_rls() manages, from the current definition; the application''s policies, defaults, indexes and RLS flags are left alone. Run by ALTER EXTENSION UPDATE when the policies change. DBA only.';
REVOKE EXECUTE ON FUNCTION vital_tenancy.refresh_tenant_policies() FROM PUBLIC;

-- The tenants registry: protected by migration 006 (protect_tenants_table()), a
-- narrow slug lookup for before sign-in, and the list of all tenants for admins only.
CREATE FUNCTION vital_tenancy.protect_tenants_table() RETURNS TABLE (
    action text
)
    STRICT VOLATILE
    SET search_path TO pg_catalog, pg_temp
    LANGUAGE c
    AS 'MODULE_PATHNAME', 'protect_tenants_table_wrapper';
CREATE FUNCTION vital_tenancy.tenant_id_by_slug(slug text) RETURNS uuid
    STRICT STABLE SECURITY DEFINER PARALLEL RESTRICTED
    SET search_path TO pg_catalog, pg_temp
    LANGUAGE c
    AS 'MODULE_PATHNAME', 'tenant_id_by_slug_wrapper';
COMMENT ON FUNCTION vital_tenancy.all_tenant_ids() IS
    'Every tenant id in the tenants table: for platform admins and DBAs (not executable by PUBLIC). SECURITY DEFINER, search_path pinned.';
COMMENT ON FUNCTION vital_tenancy.protect_tenants_table() IS
    'Protect the tenants registry: revoke INSERT/UPDATE/DELETE/TRUNCATE from every role but its owner and vital_tenancy_admin, enable row level security with policies so a request reads its own tenant''s row and Platform''s (every row for admins, none without a context). Idempotent; migration 006 runs it. DBA only.';
COMMENT ON FUNCTION vital_tenancy.tenant_id_by_slug(text) IS
    'The id of the tenant with this slug, or NULL: the lookup an application needs before sign-in, without opening the registry. SECURITY DEFINER, search_path pinned.';
REVOKE EXECUTE ON FUNCTION vital_tenancy.protect_tenants_table() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION vital_tenancy.all_tenant_ids() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION vital_tenancy.all_tenant_ids() TO vital_tenancy_admin;

-- Tenant-scoped keys and references (migration 007 applies them).
CREATE FUNCTION vital_tenancy.tenant_keys_plan() RETURNS TABLE (
    table_name text,
    change text,
    index_ddl text,
    ddl text
)
    STRICT STABLE
    SET search_path TO pg_catalog, pg_temp
    LANGUAGE c
    AS 'MODULE_PATHNAME', 'tenant_keys_plan_wrapper';
CREATE FUNCTION vital_tenancy.apply_tenant_keys(lock_timeout_ms integer DEFAULT 2000, retries integer DEFAULT 5) RETURNS TABLE (
    table_name text,
    change text
)
    STRICT VOLATILE
    SET search_path TO pg_catalog, pg_temp
    LANGUAGE c
    AS 'MODULE_PATHNAME', 'apply_tenant_keys_wrapper';
CREATE FUNCTION vital_tenancy.tenant_reference_check() RETURNS trigger
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
COMMENT ON FUNCTION vital_tenancy.tenant_keys_plan() IS
    'What the keys step (migration 007) will do on the tables under tenant RLS: each unique key made per tenant (index_ddl to run first with \gexec, then ddl swaps the constraint onto it) and each reference between tenant tables given its tenant guard. Empty once done. Writes nothing.';
COMMENT ON FUNCTION vital_tenancy.apply_tenant_keys(integer, integer) IS
    'Apply the keys step: swap each unique constraint onto its per-tenant index (ERROR 55000 if an index is missing: run the plan''s index_ddl first) and create each reference guard, under lock_timeout with retries. Idempotent. DBA only.';
COMMENT ON FUNCTION vital_tenancy.tenant_reference_check() IS
    'Trigger guarding a reference between tenant tables: the parent must belong to the row''s tenant or to Platform; the same 23503 whether the parent does not exist or belongs to another tenant. SECURITY DEFINER, search_path pinned.';
REVOKE EXECUTE ON FUNCTION vital_tenancy.apply_tenant_keys(integer, integer) FROM PUBLIC;

-- run_ddl refuses a lock_timeout_ms of 0 or NULL and NULL or negative retries (they
-- waited or retried forever), and gives the caller its lock_timeout back.
CREATE OR REPLACE FUNCTION vital_tenancy.run_ddl(
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
            INSERT INTO vital_tenancy.migration_log (tbl, step, detail, attempts) VALUES (tbl, step, ddl, attempt);
            RETURN;
        EXCEPTION WHEN lock_not_available THEN
            IF attempt > retries THEN
                RAISE EXCEPTION '%: % could not get its lock within % ms, % attempts', tbl, step, lock_timeout_ms, attempt
                    USING ERRCODE = 'lock_not_available',
                          DETAIL = ddl,
                          HINT = 'A long transaction holds a lock on the table (see pg_stat_activity / pg_locks); run again when it has finished.';
            END IF;
            INSERT INTO vital_tenancy.migration_log (tbl, step, detail, attempts)
            VALUES (tbl, step || ' (lock timeout, retrying)', ddl, attempt);
            PERFORM pg_sleep(least(0.1 * 2 ^ attempt, 5));
        END;
    END LOOP;
END
$$;

-- Functions that may read a table through SPI (the classification rules, the tenants
-- table) run in the leader only: in a parallel worker of a transaction that has
-- written, SPI would try to start a command and fail ("cannot start commands during
-- a parallel operation"), e.g. in CREATE TABLE ... AS SELECT classify_prompt_tenant(...).
ALTER FUNCTION vital_tenancy.classify_prompt_tenant(text, text, uuid, boolean) PARALLEL RESTRICTED;
ALTER FUNCTION vital_tenancy.classify_prompt_tenant(jsonb) PARALLEL RESTRICTED;
ALTER FUNCTION vital_tenancy.classify_knowledge_tenant(text, text[]) PARALLEL RESTRICTED;
ALTER FUNCTION vital_tenancy.classify_knowledge_tenant(jsonb) PARALLEL RESTRICTED;
ALTER FUNCTION vital_tenancy.classify_agent_tenant(text, text[]) PARALLEL RESTRICTED;
ALTER FUNCTION vital_tenancy.classify_agent_tenant(integer, text[]) PARALLEL RESTRICTED;
ALTER FUNCTION vital_tenancy.classify_agent_tenant(jsonb) PARALLEL RESTRICTED;
ALTER FUNCTION vital_tenancy.tool_category_name(uuid) PARALLEL RESTRICTED;
ALTER FUNCTION vital_tenancy.explain_tenant(text, jsonb) PARALLEL RESTRICTED;
ALTER FUNCTION vital_tenancy.rules() PARALLEL RESTRICTED;
ALTER FUNCTION vital_tenancy.all_tenant_ids() PARALLEL RESTRICTED;

-- The backfill writes only the rows that must change (issue 15): where a table has no
-- tenant column yet, the backfill adds it with the majority tenant as the catalog
-- default and rewrites only the rows that classify elsewhere. The step records it.
ALTER TABLE vital_tenancy.migration_steps
    ADD COLUMN rows_rewritten bigint NOT NULL DEFAULT 0,
    ADD COLUMN default_tenant uuid,
    ADD COLUMN column_added_at timestamptz;
-- Steps of 0.1.0 rewrote every row they gave a tenant.
UPDATE vital_tenancy.migration_steps SET rows_rewritten = rows_changed;
DROP FUNCTION vital_tenancy.add_tenant_column(regclass, text, integer, integer);
CREATE FUNCTION vital_tenancy.add_tenant_column(
	"tbl" regclass,
	"tenant_column" TEXT DEFAULT 'tenant_id',
	"lock_timeout_ms" INT DEFAULT 2000,
	"retries" INT DEFAULT 5,
	"default_tenant" uuid DEFAULT NULL
) RETURNS TABLE (
	"step" TEXT,
	"detail" TEXT,
	"ddl" TEXT
)
VOLATILE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'add_tenant_column_v2_wrapper';
REVOKE EXECUTE ON FUNCTION vital_tenancy.add_tenant_column(regclass, text, integer, integer, uuid) FROM PUBLIC;
COMMENT ON FUNCTION vital_tenancy.add_tenant_column(regclass, text, integer, integer, uuid) IS
    'Add a nullable tenant column (with default_tenant: that tenant for every existing row, in the catalog, no rewrite) and a NOT VALID foreign key to the tenants table (online); returns the CREATE INDEX CONCURRENTLY statement in ddl for \gexec.';
COMMENT ON FUNCTION vital_tenancy.backfill_plan(regclass, text, jsonb, text) IS
    'What backfill will run for a table: the classification expression, the key it walks, the tenant column and whether it exists yet. Validates (tenants named in options must exist); writes nothing.';
COMMENT ON PROCEDURE vital_tenancy.backfill(regclass, text, integer, integer, jsonb, text, boolean, text, boolean, boolean, boolean) IS
    'Assign tenant_id with a classifier in keyset batches (COMMIT per batch), journaled, resumable after a crash; a missing tenant column is added with the majority tenant as catalog default, so only the other rows are rewritten. CALL outside a transaction block.';

CREATE OR REPLACE FUNCTION vital_tenancy.backfill_batches(
    tbl regclass,
    batch_size integer DEFAULT 5000,
    tenant_column text DEFAULT 'tenant_id',
    only_missing boolean DEFAULT true,
    OUT rows_todo bigint,
    OUT bounds text[]
)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    plan    jsonb;
    v_where text;
    v_total bigint;
    v_keys  text;
    c       refcursor;
    v_key   text;
    n_moved bigint;
BEGIN
    IF batch_size IS NULL OR batch_size < 1 THEN
        RAISE EXCEPTION 'batch_size must be a positive integer, not %', batch_size USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF only_missing IS NULL THEN
        RAISE EXCEPTION 'only_missing must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF tbl IS NULL OR tenant_column IS NULL THEN
        RAISE EXCEPTION '% must not be NULL', CASE WHEN tbl IS NULL THEN 'tbl' ELSE 'tenant_column' END
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    -- Validates the table, its key and the tenant column; quotes the identifiers.
    plan := vital_tenancy.backfill_plan(tbl, 'platform', '{}'::jsonb, tenant_column);
    IF only_missing AND NOT (plan -> 'column_exists')::boolean THEN
        RAISE EXCEPTION 'column % of table % does not exist', plan ->> 'tenant_column', plan ->> 'table'
            USING ERRCODE = 'undefined_column';
    END IF;
    v_where := CASE WHEN only_missing THEN format('t.%s IS NULL', plan ->> 'tenant_column') ELSE 'true' END;
    -- One scan counts the rows to do and all rows (exact, whatever the statistics say).
    EXECUTE format('SELECT count(*) FILTER (WHERE %s), count(*) FROM %s t', v_where, plan ->> 'table')
       INTO rows_todo, v_total;
    bounds := '{}';
    IF rows_todo = 0 THEN
        RETURN;
    END IF;
    IF rows_todo * 2 >= v_total THEN
        -- Most rows: stream them in key order from the primary key index.
        v_keys := format('SELECT t.%1$s FROM %2$s t WHERE %3$s ORDER BY t.%1$s', plan ->> 'pk', plan ->> 'table', v_where);
    ELSE
        -- Few rows: a scan (or a tenant index) and a sort of just those keys.
        v_keys := format('SELECT f.k FROM (SELECT t.%1$s AS k FROM %2$s t WHERE %3$s OFFSET 0) f ORDER BY f.k',
                         plan ->> 'pk', plan ->> 'table', v_where);
    END IF;
    rows_todo := 0;
    OPEN c FOR EXECUTE v_keys;
    LOOP
        -- (MOVE FORWARD 0 would re-read the current row: nothing to skip for batches of 1.)
        n_moved := 0;
        IF batch_size > 1 THEN
            MOVE FORWARD (batch_size - 1) IN c;
            GET DIAGNOSTICS n_moved = ROW_COUNT;
        END IF;
        rows_todo := rows_todo + n_moved;
        FETCH c INTO v_key;
        EXIT WHEN NOT FOUND;
        rows_todo := rows_todo + 1;
        bounds := bounds || v_key;
    END LOOP;
    CLOSE c;
    IF rows_todo > batch_size::bigint * cardinality(bounds) THEN
        -- (ORDER BY ... DESC LIMIT 1, not max(): not every key type has a max, uuid has not.)
        EXECUTE format('SELECT t.%1$s::text FROM %2$s t ORDER BY t.%1$s DESC LIMIT 1', plan ->> 'pk', plan ->> 'table')
           INTO v_key;
        bounds := bounds || v_key;
    END IF;
END
$$;

-- The backfill's arguments, checked before anything is read or written.
CREATE FUNCTION vital_tenancy.backfill_check_arguments(
    tbl regclass, classifier text, batch_size integer, sleep_ms integer, options jsonb,
    tenant_column text, overwrite boolean, run_name text, catch_up boolean,
    record_rules boolean, fire_triggers boolean
) RETURNS void
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF batch_size IS NULL OR batch_size < 1 THEN
        RAISE EXCEPTION 'batch_size must be a positive integer, not %', coalesce(batch_size::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF sleep_ms IS NULL OR sleep_ms < 0 THEN
        RAISE EXCEPTION 'sleep_ms must not be negative, not %', coalesce(sleep_ms::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF run_name IS NULL THEN
        RAISE EXCEPTION 'run_name must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    ELSIF btrim(run_name) = '' THEN
        RAISE EXCEPTION 'run_name must not be empty' USING ERRCODE = 'invalid_parameter_value';
    ELSIF octet_length(run_name) > 1000 THEN
        -- (run names are indexed; a btree entry holds at most ~2.7 kB)
        RAISE EXCEPTION 'run_name is % bytes long; at most 1000', octet_length(run_name)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF tbl IS NULL OR classifier IS NULL OR options IS NULL OR tenant_column IS NULL
       OR overwrite IS NULL OR catch_up IS NULL OR record_rules IS NULL OR fire_triggers IS NULL THEN
        RAISE EXCEPTION '% must not be NULL',
                CASE WHEN tbl IS NULL THEN 'tbl' WHEN classifier IS NULL THEN 'classifier' WHEN options IS NULL THEN 'options'
                     WHEN tenant_column IS NULL THEN 'tenant_column' WHEN overwrite IS NULL THEN 'overwrite'
                     WHEN catch_up IS NULL THEN 'catch_up' WHEN record_rules IS NULL THEN 'record_rules' ELSE 'fire_triggers' END
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
END
$$;

-- Before the backfill adds a tenant column: one pass that writes nothing counts the
-- classifier's tenants: the rule preview where the run records per-rule counts (the
-- same rules, per rule), else the classification expression grouped. The most
-- frequent tenant becomes the catalog default (ties: the smallest id). No SET clause:
-- the classification expression runs as it would in the CALL (the caller's search_path).
CREATE FUNCTION vital_tenancy.backfill_majority(
    tbl regclass,
    plan jsonb,
    record_rules boolean,
    OUT rule_counts jsonb,
    OUT default_tenant uuid,
    OUT default_rows bigint,
    OUT rows_total bigint
)
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    v_kind text := plan ->> 'classifier';
    grp    record;
BEGIN
    default_rows := 0;
    rows_total := 0;
    IF record_rules AND v_kind IN ('prompt', 'knowledge', 'agent', 'tool') THEN
        WITH p AS MATERIALIZED (SELECT * FROM vital_tenancy.preview_classification(v_kind, tbl)),
             g AS (SELECT p.tenant_id, sum(p.row_count)::bigint AS n FROM p GROUP BY 1)
        SELECT (SELECT jsonb_object_agg(coalesce(p.tenant_name, p.tenant_id::text) || ' / ' || p.rule, p.row_count) FROM p),
               (SELECT g.tenant_id FROM g ORDER BY g.n DESC, g.tenant_id::text LIMIT 1),
               coalesce((SELECT max(g.n) FROM g), 0),
               coalesce((SELECT sum(g.n) FROM g), 0)::bigint
          INTO rule_counts, default_tenant, default_rows, rows_total;
        RETURN;
    END IF;
    FOR grp IN EXECUTE format('SELECT e.tenant, count(*) AS n FROM (SELECT (%s) AS tenant FROM %s t) e GROUP BY 1',
                              plan ->> 'expression', plan ->> 'table') LOOP
        rows_total := rows_total + grp.n;
        IF grp.tenant IS NOT NULL AND (grp.n > default_rows OR (grp.n = default_rows AND grp.tenant::text < default_tenant::text)) THEN
            default_tenant := grp.tenant;
            default_rows := grp.n;
        END IF;
    END LOOP;
END
$$;

-- One batch of a backfill as SQL: $1 the key after which it starts (NULL: from the
-- first), $3 the run, $4 the table, $5 the key ending it, $6 the catalog default. It
-- returns rows given a tenant, rows left without one, rows rewritten, rows walked.
-- phase 'queue' with a catalog default rewrites only the rows that classify
-- elsewhere; overwrite rewrites rows whose tenant differs; otherwise rows without a
-- tenant get one. Every assigned row is journaled with the run.
CREATE FUNCTION vital_tenancy.backfill_batch_sql(
    plan jsonb,
    phase text,
    default_tenant uuid,
    from_start boolean,
    last_batch boolean,
    overwrite boolean
) RETURNS text
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_range text;
BEGIN
    v_range := CASE WHEN from_start THEN ''
                    ELSE format('t.%s > $1::%s AND ', plan ->> 'pk', plan ->> 'pk_type') END
               || CASE WHEN phase = 'queue' AND default_tenant IS NOT NULL AND last_batch
                       -- The last batch over the catalog default has no upper bound: rows
                       -- inserted after the bounds were fixed but before the column was
                       -- added hold the default too, with keys past the last bound.
                       THEN 'true'
                       ELSE format('t.%s <= $5::%s', plan ->> 'pk', plan ->> 'pk_type') END
               || CASE WHEN phase = 'catch_up' THEN format(' AND t.%s IS NULL', plan ->> 'tenant_column') ELSE '' END;
    IF phase = 'queue' AND default_tenant IS NOT NULL THEN
        -- The rows in range that still hold the catalog default ($6), classified
        -- in one scan; those that classify elsewhere (or nowhere) are rewritten,
        -- found by key (the UPDATE re-checks them on the row as it is then); all
        -- are journaled with their final tenant (before the run they had none).
        -- Data-modifying CTEs share one snapshot: x lists the rows as they were.
        RETURN format($q$
            WITH x AS MATERIALIZED (SELECT t.%1$s AS k, (%3$s) AS new FROM %4$s t WHERE %5$s AND t.%2$s = $6),
                 u AS (UPDATE %4$s t SET %2$s = (%3$s)
                        WHERE t.%1$s = ANY (ARRAY(SELECT x.k FROM x WHERE x.new IS DISTINCT FROM $6))
                          AND t.%2$s = $6 AND (%3$s) IS DISTINCT FROM $6
                       RETURNING t.%1$s AS k, t.%2$s AS new),
                 f AS (SELECT x.k, CASE WHEN u.k IS NULL THEN $6 ELSE u.new END AS new
                         FROM x LEFT JOIN u ON u.k = x.k),
                 j AS (INSERT INTO %6$I.migration_journal_batches (run_id, tbl, old_tenant, new_tenant, keys)
                       SELECT $3, $4, NULL, f.new, array_agg(f.k::text) FROM f WHERE f.new IS NOT NULL GROUP BY f.new
                       RETURNING 1)
            SELECT (SELECT count(*) FROM f WHERE f.new IS NOT NULL), (SELECT count(*) FROM f WHERE f.new IS NULL),
                   (SELECT count(*) FROM u), (SELECT count(*) FROM x)
            $q$, plan ->> 'pk', plan ->> 'tenant_column', plan ->> 'expression', plan ->> 'table', v_range,
                 'vital_tenancy');
    ELSIF overwrite THEN
        -- Rows may already have a tenant: read the old value, then update only
        -- rows still holding it (a concurrent change wins; the journal is exact).
        RETURN format($q$
            WITH x AS (SELECT t.%1$s AS k, t.%2$s AS old, (%3$s) AS new FROM %4$s t WHERE %5$s),
                 u AS (UPDATE %4$s t SET %2$s = x.new FROM x
                        WHERE t.%1$s = x.k AND x.new IS NOT NULL AND x.new IS DISTINCT FROM x.old
                          AND t.%2$s IS NOT DISTINCT FROM x.old
                       RETURNING x.k, x.old, x.new),
                 j AS (INSERT INTO %6$I.migration_journal_batches (run_id, tbl, old_tenant, new_tenant, keys)
                       SELECT $3, $4, u.old, u.new, array_agg(u.k::text) FROM u GROUP BY u.old, u.new
                       RETURNING 1)
            SELECT (SELECT count(*) FROM u), (SELECT count(*) FROM x WHERE x.new IS NULL),
                   (SELECT count(*) FROM u), (SELECT count(*) FROM x)
            $q$, plan ->> 'pk', plan ->> 'tenant_column', plan ->> 'expression', plan ->> 'table', v_range,
                 'vital_tenancy');
    END IF;
    -- Only rows without a tenant: the old value is NULL by construction (and
    -- re-checked if a row changes under us). A row the classifier cannot place
    -- is left alone (tested only for classifiers that can return NULL).
    RETURN format($q$
        WITH u AS (UPDATE %4$s t SET %2$s = (%3$s)
                    WHERE %5$s AND t.%2$s IS NULL%7$s
                   RETURNING t.%1$s AS k, t.%2$s AS new),
             j AS (INSERT INTO %6$I.migration_journal_batches (run_id, tbl, old_tenant, new_tenant, keys)
                   SELECT $3, $4, NULL, u.new, array_agg(u.k::text) FROM u GROUP BY u.new
                   RETURNING 1)
        SELECT (SELECT count(*) FROM u), NULL::bigint, (SELECT count(*) FROM u), NULL::bigint
        $q$, plan ->> 'pk', plan ->> 'tenant_column', plan ->> 'expression', plan ->> 'table', v_range,
             'vital_tenancy',
             CASE WHEN (plan -> 'may_return_null')::boolean
                  THEN format(' AND (%s) IS NOT NULL', plan ->> 'expression') ELSE '' END);
END
$$;

-- Runs one batch (backfill_batch_sql) and counts it; a batch that deadlocks with an
-- application transaction, or meets a lock_timeout, is retried up to 10 times (its
-- subtransaction leaves nothing behind). expected: the rows the batch was fixed with.
-- No SET clause, as backfill_majority.
CREATE FUNCTION vital_tenancy.backfill_run_batch(
    batch_sql text,
    tbl regclass,
    run_id bigint,
    after_key text,
    last_key text,
    default_tenant uuid,
    batch_size integer,
    expected bigint,
    OUT changed bigint,
    OUT failed bigint,
    OUT written bigint,
    OUT walked bigint
)
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    n_retry integer := 0;
BEGIN
    LOOP
        BEGIN
            EXECUTE batch_sql INTO changed, failed, written, walked
              USING after_key, batch_size, run_id, tbl, last_key, default_tenant;
            -- Without overwrite, rows in the batch left without a tenant are the
            -- ones the classifier gave none (or that vanished meanwhile).
            failed := coalesce(failed, greatest(expected - changed, 0));
            -- Rows inserted into the batch's key range since the bounds were fixed
            -- are walked (and counted) too.
            walked := greatest(coalesce(walked, changed + failed), expected);
            RETURN;
        EXCEPTION WHEN deadlock_detected OR lock_not_available THEN
            n_retry := n_retry + 1;
            IF n_retry > 10 THEN
                RAISE;
            END IF;
            RAISE NOTICE 'backfill %: batch after key % hit a lock conflict, retrying (%)',
                tbl, coalesce(after_key, '(start)'), n_retry;
            PERFORM pg_sleep(0.05 * n_retry);
        END;
    END LOOP;
END
$$;

-- A backfill's step of one table in one run, as it is now.
CREATE FUNCTION vital_tenancy.backfill_step(run_id bigint, tbl regclass, tenant_column text)
RETURNS vital_tenancy.migration_steps
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT s.* FROM vital_tenancy.migration_steps s
     WHERE s.run_id = backfill_step.run_id AND s.tbl = backfill_step.tbl AND s.tenant_column = backfill_step.tenant_column
$$;

COMMENT ON FUNCTION vital_tenancy.backfill_check_arguments(regclass, text, integer, integer, jsonb, text, boolean, text, boolean, boolean, boolean) IS
    'The arguments of CALL backfill checked (NULLs, batch_size, sleep_ms, run_name) before anything is read or written; raises 22023/22004 naming the argument.';
COMMENT ON FUNCTION vital_tenancy.backfill_majority(regclass, jsonb, boolean) IS
    'Before backfill adds a tenant column: the classifier''s tenants counted in one pass that writes nothing (per rule where rules are recorded); the most frequent one becomes the catalog default.';
COMMENT ON FUNCTION vital_tenancy.backfill_batch_sql(jsonb, text, uuid, boolean, boolean, boolean) IS
    'The SQL of one backfill batch for a plan and phase: rewrite only rows that classify away from the catalog default, overwrite, or fill rows without a tenant; journals every assigned row.';
COMMENT ON FUNCTION vital_tenancy.backfill_run_batch(text, regclass, bigint, text, text, uuid, integer, bigint) IS
    'Run one backfill batch and count it (given a tenant, left without, rewritten, walked), retrying on deadlock or lock timeout up to 10 times.';
COMMENT ON FUNCTION vital_tenancy.backfill_step(bigint, regclass, text) IS
    'A backfill''s checkpoint row (migration_steps) for one table in one run.';
REVOKE EXECUTE ON FUNCTION vital_tenancy.backfill_run_batch(text, regclass, bigint, text, text, uuid, integer, bigint) FROM PUBLIC;

-- Assign tenant_id to a table's rows with a classifier, in keyset batches over the
-- primary key with a COMMIT per batch. The batches are fixed when the run starts;
-- the checkpoint and the journal commit with each batch, so after a crash the same
-- CALL resumes where it stopped and no row is assigned or journaled twice. Then rows
-- that appeared since without a tenant are done the same way (catch_up). Must be
-- CALLed outside a transaction block. No SET clause: a procedure with one cannot
-- COMMIT; every name inside is schema-qualified instead.
--
-- Where the table has no tenant column yet, the backfill adds it, and only the rows
-- that must change are written: one pass counts the classifier's tenants
-- (backfill_majority); the column is added with the most frequent one as a constant
-- default, which PostgreSQL keeps in the catalog for every existing row without
-- rewriting the table, and the default is dropped in the same transaction (rows
-- inserted later arrive without a tenant and are caught up). The batches then rewrite
-- only the rows that classify elsewhere; the journal still lists every row the run
-- gave a tenant (old value NULL), so revert_run puts the table back to no tenant anywhere.
CREATE OR REPLACE PROCEDURE vital_tenancy.backfill(
    tbl regclass,
    classifier text,
    batch_size integer DEFAULT 5000,
    sleep_ms integer DEFAULT 0,
    options jsonb DEFAULT '{}',
    tenant_column text DEFAULT 'tenant_id',
    overwrite boolean DEFAULT false,
    run_name text DEFAULT 'backfill',
    catch_up boolean DEFAULT true,
    record_rules boolean DEFAULT true,
    fire_triggers boolean DEFAULT false
)
LANGUAGE plpgsql
AS $$
DECLARE
    plan      jsonb;
    v_run     bigint;
    st        record;
    chk       record;
    maj       record;
    bat       record;
    v_default uuid;
    v_best    bigint := 0;
    v_bounds  text[];
    v_todo    bigint;
    v_last    text;
    n_batch   bigint;
    t_start   timestamptz;
    t_phase   timestamptz;
    v_rate    numeric;
    v_sql     text;
    v_rules   jsonb;
    v_metric  text;
    v_next    text;
    v_phase_done bigint;
    v_call_done  bigint;
    v_replica boolean := false;
    v_add     boolean := false;
BEGIN
    PERFORM vital_tenancy.backfill_check_arguments(tbl, classifier, batch_size, sleep_ms, options, tenant_column,
                                                   overwrite, run_name, catch_up, record_rules, fire_triggers);
    plan := vital_tenancy.backfill_plan(tbl, classifier, options, tenant_column);
    v_metric := run_name || ':' || (plan ->> 'table');
    -- One CALL at a time creates a run of a given name, and starts (or finds the step to
    -- resume of) a given table: a second CALL waits until the first has recorded its step.
    PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('vital_tenancy.backfill ' || run_name));
    PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('vital_tenancy.backfill table'), tbl::oid::integer);

    -- The step to resume, if any: the latest unfinished one for this table.
    SELECT s.*, r.name AS run_name INTO st
      FROM vital_tenancy.migration_steps s JOIN vital_tenancy.migration_runs r USING (run_id)
     WHERE s.tbl = backfill.tbl AND s.tenant_column = backfill.tenant_column
       AND s.phase <> 'done' AND r.status = 'running'
     ORDER BY s.run_id DESC LIMIT 1;
    IF FOUND AND (st.classifier IS DISTINCT FROM backfill.classifier OR st.options IS DISTINCT FROM backfill.options
                  OR st.run_name IS DISTINCT FROM backfill.run_name) THEN
        -- A resumed run goes on as it started; another classifier would mix two (F05).
        RAISE EXCEPTION 'backfill of % is in progress as run % (%) with classifier "%" and options %',
                plan ->> 'table', st.run_id, st.run_name, st.classifier, st.options
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = format('This CALL asked for run %s with classifier "%s" and options %s.', run_name, classifier, options),
                  HINT = 'CALL backfill again with the run''s arguments to finish it, or revert_run() it once finished.';
    END IF;

    IF NOT FOUND THEN
        t_phase := clock_timestamp();
        IF NOT (plan -> 'column_exists')::boolean THEN
            -- The column is ours to add; nothing is written yet, so an error in the
            -- counting pass leaves nothing behind.
            maj := vital_tenancy.backfill_majority(tbl, plan, record_rules);
            v_rules := maj.rule_counts;
            v_default := maj.default_tenant;
            v_best := maj.default_rows;
            v_add := true;
            IF maj.rows_total = 0 THEN
                PERFORM * FROM vital_tenancy.add_tenant_column(tbl, tenant_column);
                RAISE NOTICE 'backfill %: no rows; % added', plan ->> 'table', plan ->> 'tenant_column';
                RETURN;
            END IF;
            -- Batches over every row (before the column exists, every row is to do).
            -- Without a tenant to default to (no row the classifier can place), the
            -- column comes without a default and the batches are the usual ones.
            SELECT b.rows_todo, b.bounds INTO v_todo, v_bounds
              FROM vital_tenancy.backfill_batches(tbl, batch_size, tenant_column, false) b;
        ELSE
            SELECT b.rows_todo, b.bounds INTO v_todo, v_bounds
              FROM vital_tenancy.backfill_batches(tbl, batch_size, tenant_column, NOT overwrite) b;
            IF v_todo = 0 THEN
                RAISE NOTICE 'backfill %: every row already has a tenant; nothing to do', plan ->> 'table';
                RETURN;
            END IF;
            -- The expression on one row, so that a classifier that cannot run fails
            -- here, before a run is recorded.
            EXECUTE format('SELECT (%s) FROM %s t LIMIT 1', plan ->> 'expression', plan ->> 'table');
        END IF;
        -- Done earlier in this (still running) run: another catch-up pass of the same step.
        SELECT s.*, r.name AS run_name INTO st
          FROM vital_tenancy.migration_steps s JOIN vital_tenancy.migration_runs r USING (run_id)
         WHERE s.tbl = backfill.tbl AND s.tenant_column = backfill.tenant_column
           AND r.status = 'running' AND r.name = run_name
         ORDER BY s.run_id DESC LIMIT 1;
    END IF;
    IF FOUND AND st.phase = 'done' THEN
        UPDATE vital_tenancy.migration_steps s SET phase = 'catch_up', last_key = NULL, finished_at = NULL, next_batch = 0
         WHERE s.run_id = st.run_id AND s.tbl = backfill.tbl AND s.tenant_column = backfill.tenant_column;
        COMMIT;
        st := vital_tenancy.backfill_step(st.run_id, tbl, tenant_column);
    END IF;

    IF st.run_id IS NULL THEN
        SELECT run_id INTO v_run FROM vital_tenancy.migration_runs
         WHERE name = run_name AND status = 'running' ORDER BY run_id DESC LIMIT 1;
        IF v_run IS NULL THEN
            INSERT INTO vital_tenancy.migration_runs (name) VALUES (run_name) RETURNING run_id INTO v_run;
        END IF;
        IF record_rules AND plan ->> 'classifier' IN ('prompt', 'knowledge', 'agent', 'tool') AND NOT v_add THEN
            SELECT jsonb_object_agg(coalesce(p.tenant_name, p.tenant_id::text) || ' / ' || p.rule, p.row_count)
              INTO v_rules FROM vital_tenancy.preview_classification(plan ->> 'classifier', tbl) p;
        END IF;
        IF v_add THEN
            -- Every existing row gets the majority tenant in the catalog (a short
            -- ACCESS EXCLUSIVE lock, under lock_timeout with retries, until the COMMIT
            -- just below), recorded with the step in the same transaction.
            PERFORM * FROM vital_tenancy.add_tenant_column(tbl, tenant_column, default_tenant => v_default);
        END IF;
        INSERT INTO vital_tenancy.migration_steps
               (run_id, tbl, tenant_column, classifier, options, bounds, batch_size, rows_total, phase_rows, rule_counts,
                default_tenant, column_added_at)
        VALUES (v_run, tbl, tenant_column, classifier, options, v_bounds, batch_size, v_todo, v_todo, v_rules,
                v_default, CASE WHEN v_add THEN clock_timestamp() END);
        INSERT INTO vital_tenancy.migration_metrics (migration_name, phase, records_processed, duration_ms)
        VALUES (v_metric, 'snapshot', v_todo,
                round(extract(epoch FROM clock_timestamp() - t_phase) * 1000));
        COMMIT;
        st := vital_tenancy.backfill_step(v_run, tbl, tenant_column);
        IF st.default_tenant IS NOT NULL THEN
            RAISE NOTICE 'backfill %: run %, % added with tenant % for the % existing rows (in the catalog); % of them classify elsewhere and are rewritten',
                plan ->> 'table', v_run, plan ->> 'tenant_column', st.default_tenant, v_todo, v_todo - v_best;
        ELSE
            RAISE NOTICE 'backfill %: run %, % rows to classify with "%"', plan ->> 'table', v_run, v_todo, classifier;
        END IF;
    ELSE
        v_run := st.run_id;
        IF st.batch_size <> batch_size THEN
            RAISE NOTICE 'backfill %: resuming with the run''s batch_size %, not %', plan ->> 'table', st.batch_size, batch_size;
        END IF;
        RAISE NOTICE 'backfill %: resuming run % in phase %, after key %, % of % rows done',
            plan ->> 'table', v_run, st.phase, coalesce(st.last_key, '(start)'), st.rows_done, st.rows_total;
    END IF;

    -- A tenant assignment is not an application write: unless asked, application
    -- triggers (updated_at stamps, audit) do not fire for it. That needs the
    -- superuser-only session_replication_role, set per batch transaction; the new
    -- tenant values need no FK trigger either, as they come from the classifiers
    -- (whose tenants are checked to exist) and 005 validates the foreign key.
    IF NOT fire_triggers THEN
        IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
            v_replica := true;
        ELSE
            RAISE NOTICE 'backfill %: not a superuser, so the table''s triggers fire for every assigned row', plan ->> 'table';
        END IF;
    END IF;
    v_last := st.last_key;
    v_phase_done := st.rows_done;
    v_call_done := st.rows_done;
    t_start := clock_timestamp();
    t_phase := clock_timestamp();
    LOOP
        -- This CALL owns the step until its batch commits; a second CALL on the same
        -- table waits here and then finds the step moved on without it.
        SELECT s.phase, s.next_batch INTO chk FROM vital_tenancy.migration_steps s
         WHERE s.run_id = v_run AND s.tbl = backfill.tbl AND s.tenant_column = backfill.tenant_column FOR UPDATE;
        IF chk.phase IS DISTINCT FROM st.phase OR chk.next_batch IS DISTINCT FROM st.next_batch THEN
            RAISE EXCEPTION 'backfill %: another CALL is running this backfill (run %)', plan ->> 'table', v_run
                USING ERRCODE = 'object_in_use';
        END IF;
        IF st.phase = 'catch_up' AND st.next_batch = 0 THEN
            -- A catch-up phase starts: batches over the rows without a tenant now.
            SELECT b.rows_todo, b.bounds INTO v_todo, v_bounds
              FROM vital_tenancy.backfill_batches(tbl, st.batch_size, tenant_column, true) b;
            -- The rows this pass leaves without a tenant are counted as it goes.
            UPDATE vital_tenancy.migration_steps s
               SET bounds = v_bounds, next_batch = 1, last_key = NULL, phase_rows = coalesce(v_todo, 0),
                   rows_total = s.rows_total + coalesce(v_todo, 0), rows_failed = 0
             WHERE s.run_id = v_run AND s.tbl = backfill.tbl AND s.tenant_column = backfill.tenant_column;
            COMMIT;
            st := vital_tenancy.backfill_step(v_run, tbl, tenant_column);
            v_last := NULL;
            CONTINUE;
        END IF;
        -- The next precomputed batch (the checkpoint counts the batches done).
        IF st.next_batch > coalesce(cardinality(st.bounds), 0) THEN
            n_batch := 0;
        ELSE
            v_next := st.bounds[st.next_batch];
            n_batch := CASE WHEN st.next_batch < cardinality(st.bounds) THEN st.batch_size
                            ELSE st.phase_rows - st.batch_size * (cardinality(st.bounds) - 1) END;
        END IF;

        IF n_batch = 0 THEN
            INSERT INTO vital_tenancy.migration_metrics (migration_name, phase, records_processed, records_failed, duration_ms)
            SELECT v_metric, CASE WHEN st.phase = 'queue' THEN 'backfill' ELSE 'catch_up' END,
                   s.rows_done - v_phase_done, s.rows_failed,
                   round(extract(epoch FROM clock_timestamp() - t_phase) * 1000)
              FROM vital_tenancy.migration_steps s
             WHERE s.run_id = v_run AND s.tbl = backfill.tbl AND s.tenant_column = backfill.tenant_column;
            IF st.phase = 'queue' AND catch_up THEN
                UPDATE vital_tenancy.migration_steps s SET phase = 'catch_up', last_key = NULL, next_batch = 0
                 WHERE s.run_id = v_run AND s.tbl = backfill.tbl AND s.tenant_column = backfill.tenant_column;
                COMMIT;
                st := vital_tenancy.backfill_step(v_run, tbl, tenant_column);
                v_last := NULL;
                v_phase_done := st.rows_done;
                t_phase := clock_timestamp();
                CONTINUE;
            END IF;
            UPDATE vital_tenancy.migration_steps s
               SET phase = 'done', finished_at = clock_timestamp(), last_key = NULL
             WHERE s.run_id = v_run AND s.tbl = backfill.tbl AND s.tenant_column = backfill.tenant_column;
            COMMIT;
            EXIT;
        END IF;

        v_sql := vital_tenancy.backfill_batch_sql(plan, st.phase, st.default_tenant, v_last IS NULL,
                                                  st.next_batch = cardinality(st.bounds), overwrite);
        IF v_replica THEN
            PERFORM pg_catalog.set_config('session_replication_role', 'replica', true);
        END IF;
        -- A batch commits without waiting for its WAL flush: its rows, journal and
        -- checkpoint are one transaction, so a crash that loses the last few batches
        -- leaves the table at an earlier checkpoint, which the next CALL resumes from.
        -- The final commit (phase done) waits, and so flushes every batch before it.
        PERFORM pg_catalog.set_config('synchronous_commit', 'off', true);
        bat := vital_tenancy.backfill_run_batch(v_sql, tbl, v_run, v_last, v_next, st.default_tenant, batch_size, n_batch);
        UPDATE vital_tenancy.migration_steps s
           SET last_key = v_next, rows_done = s.rows_done + bat.walked,
               next_batch = s.next_batch + 1,
               rows_changed = s.rows_changed + bat.changed, rows_failed = s.rows_failed + bat.failed,
               rows_rewritten = s.rows_rewritten + bat.written,
               rows_total = greatest(s.rows_total, s.rows_done + bat.walked)
         WHERE s.run_id = v_run AND s.tbl = backfill.tbl AND s.tenant_column = backfill.tenant_column;
        COMMIT;
        st := vital_tenancy.backfill_step(v_run, tbl, tenant_column);
        v_last := v_next;

        -- The rate of this CALL (rows done before a resume are not its own).
        v_rate := (st.rows_done - v_call_done) / greatest(extract(epoch FROM clock_timestamp() - t_start), 0.001);
        RAISE NOTICE 'backfill %: % / % rows (% given a tenant, % rewritten) in phase %, % rows/s, ETA %',
            plan ->> 'table', st.rows_done, st.rows_total, st.rows_changed, st.rows_rewritten, st.phase, round(v_rate),
            CASE WHEN st.phase = 'queue' AND v_rate > 0
                 THEN (round((st.rows_total - st.rows_done) / v_rate) || ' s') ELSE '–' END;
        IF sleep_ms > 0 THEN
            PERFORM pg_sleep(sleep_ms / 1000.0);
        END IF;
    END LOOP;

    st := vital_tenancy.backfill_step(v_run, tbl, tenant_column);
    RAISE NOTICE 'backfill %: done, % rows walked, % given a tenant (% rewritten), % left unclassified',
        plan ->> 'table', st.rows_done, st.rows_changed, st.rows_rewritten, st.rows_failed;
END
$$;


-- The rules table's trigger becomes PL/pgSQL over two helpers (a direct call or a
-- trigger on another table then gets PostgreSQL's own errors; F13). The library keeps
-- 0.1.0's C trigger symbol for databases not yet updated.
CREATE FUNCTION vital_tenancy.check_rules_row(kind text, rules jsonb) RETURNS void
    STABLE
    SET search_path TO pg_catalog, pg_temp
    LANGUAGE c
    AS 'MODULE_PATHNAME', 'check_rules_row_wrapper';
CREATE FUNCTION vital_tenancy.rules_changed() RETURNS void
    STRICT VOLATILE
    SET search_path TO pg_catalog, pg_temp
    LANGUAGE c
    AS 'MODULE_PATHNAME', 'rules_changed_wrapper';
COMMENT ON FUNCTION vital_tenancy.check_rules_row(text, jsonb) IS
    'Check one classification_rules row as its trigger does: a kind with rules, rules that compile (ERROR 22023 naming the field), tenants that exist. Writes nothing.';
COMMENT ON FUNCTION vital_tenancy.rules_changed() IS
    'Invalidate every backend''s cached classification rules (the rules table''s statement trigger calls it).';
REVOKE EXECUTE ON FUNCTION vital_tenancy.check_rules_row(text, jsonb) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION vital_tenancy.rules_changed() FROM PUBLIC;
CREATE OR REPLACE FUNCTION vital_tenancy.classification_rules_trigger() RETURNS trigger
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

-- The rules trigger is not for calling (trigger functions need no EXECUTE privilege to fire).
REVOKE EXECUTE ON FUNCTION vital_tenancy.classification_rules_trigger() FROM PUBLIC;


-- The tenant boundary in the Citus shape (issue 14): Citus recreates policies on shards
-- without AS RESTRICTIVE and refuses sub-selects in them; citus_safe_policies() folds
-- the boundary into every policy, boundary_problems() and citus_boundary_status() check
-- tables and shard placements. The application's changed objects are kept in originals.
ALTER TABLE vital_tenancy.rls_tables
    ADD COLUMN policy_shape text NOT NULL DEFAULT 'restrictive' CHECK (policy_shape IN ('restrictive', 'citus'));

COMMENT ON COLUMN vital_tenancy.rls_tables.policy_shape IS
    'restrictive: the boundary as RESTRICTIVE policies with a per-statement sub-select; citus: every policy PERMISSIVE with the boundary folded in, no sub-select (citus_safe_policies())';

CREATE TABLE vital_tenancy.originals (
    tbl         regclass NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('policy', 'foreign key', 'trigger')),
    name        name NOT NULL,
    definition  text NOT NULL,
    action      text NOT NULL CHECK (action IN ('folded', 'set aside')),
    reason      text NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tbl, kind, name)
);
COMMENT ON TABLE vital_tenancy.originals IS
    'The application''s objects as they were before the extension changed them for Citus: policies the tenant boundary was folded into or that were set aside (citus_safe_policies()), foreign keys and triggers migration 008 set aside; each with its original definition and why';
SELECT pg_catalog.pg_extension_config_dump('vital_tenancy.originals', '');

-- vital_tenancy::boundary::boundary_problems
CREATE FUNCTION vital_tenancy.boundary_problems(
	"tbl" regclass,
	"tenant_column" TEXT DEFAULT 'tenant_id'
) RETURNS SETOF TEXT
STRICT STABLE PARALLEL RESTRICTED
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'boundary_problems_wrapper';

-- vital_tenancy::boundary::citus_safe_policies
CREATE FUNCTION vital_tenancy.citus_safe_policies(
	"tbl" regclass,
	"set_aside_subselects" bool DEFAULT false
) RETURNS TABLE (
	"policy" TEXT, 
	"action" TEXT 
)
STRICT VOLATILE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'citus_safe_policies_wrapper';

-- vital_tenancy::citus::citus_boundary_status
CREATE FUNCTION vital_tenancy.citus_boundary_status() RETURNS TABLE (
	"table_name" TEXT, 
	"placement" TEXT, 
	"problem" TEXT 
)
STRICT VOLATILE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'citus_boundary_status_wrapper';

-- The tenant boundary in the Citus shape (src/boundary.rs).
CREATE FUNCTION vital_tenancy.policy_fingerprint(tbl regclass) RETURNS text
LANGUAGE sql STABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT md5(COALESCE(string_agg(e, '|' ORDER BY e), ''))
      FROM (SELECT p.polcmd::text || ':'
                   || array_to_string(ARRAY(SELECT pg_get_userbyid(r) FROM unnest(p.polroles) r ORDER BY 1), ',') || ':'
                   || COALESCE(pg_get_expr(p.polqual, p.polrelid), '') || ':'
                   || COALESCE(pg_get_expr(p.polwithcheck, p.polrelid), '') AS e
              FROM pg_policy p WHERE p.polrelid = tbl) x
$$;
COMMENT ON FUNCTION vital_tenancy.policy_fingerprint(regclass) IS
    'md5 of a table''s policies: commands, role names and expressions (deparsed with search_path pg_catalog), not names or AS PERMISSIVE/RESTRICTIVE; equal on a Citus shard and its table when Citus copied them faithfully.';
COMMENT ON FUNCTION vital_tenancy.boundary_problems(regclass, text) IS
    'Every way the table''s policies, each read as PERMISSIVE (as Citus recreates them on shards), admit a row outside the tenant boundary: a USING or WITH CHECK without the conjunct tenant_id = ANY (visible/writable_tenant_ids()), a sub-select, RLS not enabled. Read from the expression trees; no rows when the boundary holds.';
COMMENT ON FUNCTION vital_tenancy.citus_safe_policies(regclass, boolean) IS
    'Put a managed table''s (or the tenants registry''s) policies in the Citus shape: no restrictive policy, the boundary folded into every policy of the application''s (originals kept in vital_tenancy.originals; a FOR ALL policy gets a read policy beside it), no sub-selects (set aside with set_aside_subselects, else 0A000). Refuses restrictive application policies (0A000).';
COMMENT ON FUNCTION vital_tenancy.citus_boundary_status() IS
    'The tenant boundary on every managed table and, on Citus, on every shard placement (checked by the worker''s boundary_problems() and compared with the table''s policy_fingerprint()): one row per placement, problem NULL where it holds.';
REVOKE EXECUTE ON FUNCTION vital_tenancy.citus_safe_policies(regclass, boolean) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION vital_tenancy.citus_boundary_status() FROM PUBLIC;

COMMENT ON FUNCTION vital_tenancy.distribute_all() IS
    'On a Citus coordinator: create_reference_table for reference tables, create_distributed_table by tenant_id (co-located) for tenant tables, parents first; foreign keys between distributed tables dropped and re-added around it, the extension''s records re-keyed to the new relations. ERROR 55000 when Citus is absent, blockers remain or a boundary is still restrictive (citus_safe_policies()).';


-- Tenant lifecycle (0.2.0): statuses honoured, onboarding, offboarding, moving a
-- tenant, per-tenant activity.
-- What a tenant's registry status allows, where the DBA overrides the built-in
-- meaning (active: read-write; suspended, archived: read-only; pending, deleted:
-- none) or names a status of their own. Read by the policy functions once per
-- statement; only overrides are stored, so pg_dump keeps exactly the DBA's rows.
CREATE TABLE vital_tenancy.tenant_statuses (
    status text PRIMARY KEY,
    access text NOT NULL CHECK (access IN ('read-write', 'read-only', 'none'))
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
    done_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ON vital_tenancy.tenant_deletions (tenant, table_name);
COMMENT ON TABLE vital_tenancy.tenant_deletions IS
    'Journal of delete_tenant(): every committed batch (tenant, table, batch number, rows deleted)';
SELECT pg_catalog.pg_extension_config_dump('vital_tenancy.tenant_deletions', '');
SELECT pg_catalog.pg_extension_config_dump('vital_tenancy.tenant_deletions_id_seq', '');

-- vital_tenancy::tenants::add_tenant
CREATE FUNCTION vital_tenancy.add_tenant(
	"name" TEXT, /* Option < & str > */
	"slug" TEXT, /* Option < & str > */
	"extra" jsonb DEFAULT '{}', /* Option < crate :: catalog :: JsonArg > */
	"id" uuid DEFAULT NULL /* Option < Uuid > */
) RETURNS uuid /* Uuid */
VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'add_tenant_wrapper';

-- vital_tenancy::lifecycle::import_tenant
CREATE FUNCTION vital_tenancy.import_tenant(
	"source" regclass, /* Option < crate :: catalog :: Regclass > */
	"tenant" uuid /* Option < Uuid > */
) RETURNS TABLE (
	"table_name" TEXT,  /* String */
	"source_rows" bigint,  /* i64 */
	"inserted" bigint  /* i64 */
)
VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'import_tenant_wrapper';

-- vital_tenancy::lifecycle::set_status_access
CREATE FUNCTION vital_tenancy.set_status_access(
	"status" TEXT, /* Option < & str > */
	"access" TEXT /* Option < & str > */
) RETURNS TEXT /* String */
VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'set_status_access_wrapper';

-- vital_tenancy::lifecycle::set_status_column
CREATE FUNCTION vital_tenancy.set_status_column(
	"column_name" TEXT /* Option < & str > */
) RETURNS TEXT /* Option < String > */
VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'set_status_column_wrapper';

-- vital_tenancy::activity::tenant_activity
CREATE FUNCTION vital_tenancy.tenant_activity() RETURNS TABLE (
	"tenant_id" uuid,  /* Option < Uuid > */
	"statements" bigint,  /* i64 */
	"rows_read" bigint,  /* i64 */
	"rows_written" bigint,  /* i64 */
	"total_time_ms" double precision,  /* f64 */
	"since" timestamp with time zone  /* pgrx :: datum :: TimestampWithTimeZone */
)
STRICT VOLATILE PARALLEL SAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'tenant_activity_wrapper';

-- vital_tenancy::activity::tenant_activity_reset
CREATE FUNCTION vital_tenancy.tenant_activity_reset() RETURNS timestamp with time zone /* pgrx :: datum :: TimestampWithTimeZone */
STRICT VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'tenant_activity_reset_wrapper';

-- vital_tenancy::lifecycle::tenant_deletion_plan
CREATE FUNCTION vital_tenancy.tenant_deletion_plan(
	"tenant" uuid /* Option < Uuid > */
) RETURNS TABLE (
	"step" INT,  /* i32 */
	"table_name" TEXT,  /* String */
	"tenant_column" TEXT,  /* String */
	"rows" bigint,  /* i64 */
	"batched" bool  /* bool */
)
STABLE PARALLEL RESTRICTED
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'tenant_deletion_plan_wrapper';

-- vital_tenancy::lifecycle::tenant_status
CREATE FUNCTION vital_tenancy.tenant_status() RETURNS TABLE (
	"tenant_id" uuid,  /* Uuid */
	"name" TEXT,  /* Option < String > */
	"slug" TEXT,  /* Option < String > */
	"status" TEXT,  /* Option < String > */
	"access" TEXT,  /* String */
	"known_status" bool  /* bool */
)
STRICT STABLE PARALLEL RESTRICTED
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'tenant_status_wrapper';

-- Offboarding: delete a tenant's rows from every tenant table, children before
-- parents (tenant_deletion_plan()), in batches with a COMMIT and a journal row
-- (vital_tenancy.tenant_deletions) per batch, the registry row last. Dry run by
-- default: it only reports the plan. Resumable: after a crash or a cancel the same
-- CALL continues with what is left (a deleted row is not there to delete twice) and
-- numbers its batches after the journaled ones. Must be CALLed outside a transaction
-- block. No SET clause: a procedure with one cannot COMMIT; every name inside is
-- schema-qualified instead.
--
-- Refuses NULL, Platform (shared with every tenant) and an unknown tenant (the
-- plan's errors). A row of another tenant that still references one of this
-- tenant's rows stops the deletion at that table with the foreign-key error
-- (nothing of that batch is deleted; cross_tenant_references() lists them).
CREATE PROCEDURE vital_tenancy.delete_tenant(
    tenant uuid,
    dry_run boolean DEFAULT true,
    batch_size integer DEFAULT 5000
)
LANGUAGE plpgsql
AS $$
DECLARE
    p       record;
    n       bigint;
    v_batch integer;
    v_total bigint := 0;
BEGIN
    IF batch_size IS NULL OR batch_size < 1 THEN
        RAISE EXCEPTION 'batch_size must be a positive integer, not %', coalesce(batch_size::text, 'NULL')
            USING ERRCODE = '22023';
    END IF;
    IF dry_run IS NULL THEN
        RAISE EXCEPTION 'dry_run must not be NULL' USING ERRCODE = '22004';
    END IF;
    IF dry_run THEN
        FOR p IN SELECT * FROM vital_tenancy.tenant_deletion_plan(tenant) ORDER BY step LOOP
            RAISE NOTICE 'step %: % row(s) of % (%)', p.step, p.rows, p.table_name,
                CASE WHEN p.batched THEN 'batches of ' || batch_size ELSE 'one statement' END;
            v_total := v_total + p.rows;
        END LOOP;
        RAISE NOTICE 'dry run: % row(s) of tenant % would be deleted; nothing changed', v_total, tenant
            USING HINT = pg_catalog.format('CALL vital_tenancy.delete_tenant(%L, dry_run => false);', tenant);
        RETURN;
    END IF;
    FOR p IN SELECT * FROM vital_tenancy.tenant_deletion_plan(tenant) ORDER BY step LOOP
        CONTINUE WHEN p.rows = 0;
        v_batch := coalesce((SELECT max(d.batch) FROM vital_tenancy.tenant_deletions d
                              WHERE d.tenant = delete_tenant.tenant AND d.table_name = p.table_name), 0);
        LOOP
            IF p.batched THEN
                EXECUTE pg_catalog.format(
                    'DELETE FROM %1$s WHERE ctid = ANY (ARRAY(SELECT ctid FROM %1$s WHERE %2$I = $1 LIMIT $2))',
                    p.table_name, p.tenant_column)
                    USING tenant, batch_size;
            ELSE
                EXECUTE pg_catalog.format('DELETE FROM %s WHERE %I = $1', p.table_name, p.tenant_column)
                    USING tenant;
            END IF;
            GET DIAGNOSTICS n = ROW_COUNT;
            EXIT WHEN n = 0;
            v_batch := v_batch + 1;
            INSERT INTO vital_tenancy.tenant_deletions (tenant, table_name, batch, rows)
            VALUES (delete_tenant.tenant, p.table_name, v_batch, n);
            COMMIT;
            v_total := v_total + n;
            EXIT WHEN NOT p.batched;
        END LOOP;
    END LOOP;
    RAISE NOTICE 'tenant %: % row(s) deleted', tenant, v_total;
END
$$;

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

COMMENT ON FUNCTION vital_tenancy.health() IS
    'Health document: database, tenants (every registry tenant with status and access; healthy when the three of the migration exist with data and no status is unknown), referential integrity, RLS coverage (including roles that bypass RLS on tenant tables, rls.bypass_roles), on Citus every shard placement''s boundary (citus_boundary_status()), last migration run.';
COMMENT ON FUNCTION vital_tenancy.export_tenant(uuid, text[]) IS
    'A tenant''s registry row, then its own rows of every tenant table, as (table_name, row jsonb), streamed from a cursor; usable with COPY (SELECT ...) TO STDOUT and loaded elsewhere by import_tenant().';

-- Last, with every function of 0.2.0 in place: the policies from the new definition.
SELECT count(*) FROM vital_tenancy.refresh_tenant_policies();
