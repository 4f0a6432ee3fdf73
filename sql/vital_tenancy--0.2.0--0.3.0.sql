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

-- Issue 31, finding 4: a row that other tenants' rows reference kept them when it changed
-- tenant, and a delete cascaded into them. The parent guard (src/keys.rs), created here on
-- every referenced tenant table of a database that has them (what migration 007 now
-- creates too), each under lock_timeout with retries: behind a long transaction the
-- update fails whole (55P03) and can be run again.
CREATE FUNCTION vital_tenancy.tenant_parent_check() RETURNS trigger
    LANGUAGE c VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'tenant_parent_check_wrapper';
COMMENT ON FUNCTION vital_tenancy.tenant_parent_check() IS
    'Trigger on every referenced tenant table (vt_tenant_parent_guard, created by apply_tenant_keys()): a row that rows of other tenants reference keeps its tenant (unless it becomes a Platform row of a shared table), and a delete never reaches rows of another tenant through ON DELETE CASCADE, SET NULL or SET DEFAULT (23503, nothing changed). Runs only as that trigger (else 42501); not executable by PUBLIC.';

SELECT vital_tenancy.run_ddl(p.ddl, 'tenant keys', p.table_name, 2000, 5)
  FROM vital_tenancy.tenant_keys_plan() p
 WHERE p.change OPERATOR(pg_catalog.~~) 'parent guard %' AND p.ddl IS NOT NULL;

-- Issue 31, finding 5: inside a request the request's own SQL does not choose its tenant
-- (src/context.rs, src/guc.rs); the functions are unchanged, their comments say so.
COMMENT ON FUNCTION vital_tenancy.current_tenant_id() IS
    'The tenant of the current request: setting vital.tenant_id, else tenant_id in request.jwt.claims, else x-tenant-id in request.headers if the claims'' sub is a member, else NULL. Only values set in the current transaction count (unless vital_tenancy.session_context), only for a login role that is a member of vital_tenancy_context, and inside a request running as another role only what that role did not set itself or pre_request() fixed. A bad context (malformed, unknown tenant, non-member, untrusted session, chosen inside the request) is an ERROR here. Cached per statement. SECURITY DEFINER, search_path pinned.';
COMMENT ON FUNCTION vital_tenancy.pre_request() IS
    'PostgREST db-pre-request hook: resolves and validates the request''s tenant context once, before the query reads any row, and fixes it for the transaction (a later change of a context setting or of the role gives no context; a second call with other values is 42501); a bad context is an ERROR, values left over from outside the transaction one WARNING. SECURITY DEFINER, search_path pinned.';
COMMENT ON FUNCTION vital_tenancy.set_tenant(uuid) IS
    'Set vital.tenant_id for the rest of the transaction (SET LOCAL semantics) after checking the tenant exists; NULL clears it. Only for login roles that are members of vital_tenancy_context, before any switch to a role that is not (ERROR 42501 otherwise); warns about leftover session values.';

-- Issue 33 (census N01) and issue 32 (item 6): the backfill refuses a tenant column name
-- over 63 bytes (PostgreSQL cut it, and the run looked up one name and added another),
-- a batch_size over 1000000 and a sleep_ms over 60000, before anything is read or written.
CREATE OR REPLACE FUNCTION vital_tenancy.backfill_check_arguments(
    tbl regclass, classifier text, batch_size integer, sleep_ms integer, options jsonb,
    tenant_column text, overwrite boolean, run_name text, catch_up boolean,
    record_rules boolean, fire_triggers boolean
) RETURNS void
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF batch_size IS NULL OR batch_size < 1 OR batch_size > 1000000 THEN
        RAISE EXCEPTION 'batch_size must be between 1 and 1000000, not %', coalesce(batch_size::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF sleep_ms IS NULL OR sleep_ms < 0 OR sleep_ms > 60000 THEN
        RAISE EXCEPTION 'sleep_ms must be between 0 and 60000 (one minute between batches), not %', coalesce(sleep_ms::text, 'NULL')
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
    -- PostgreSQL cuts a longer name to 63 bytes; the backfill would look up one name and
    -- add another (census N01). Refused before anything is read or written.
    IF octet_length(tenant_column) > 63 THEN
        RAISE EXCEPTION 'tenant_column is % bytes long; a column name has at most 63', octet_length(tenant_column)
            USING ERRCODE = 'name_too_long';
    END IF;
END
$$;
COMMENT ON FUNCTION vital_tenancy.backfill_check_arguments(regclass, text, integer, integer, jsonb, text, boolean, text, boolean, boolean, boolean) IS
    'The arguments of CALL backfill checked (NULLs, batch_size 1 to 1000000, sleep_ms 0 to 60000, a tenant_column over 63 bytes, run_name) before anything is read or written; raises 22023/22004/42622 naming the argument.';

-- backfill_batches: the cursor's query and its MOVE count are sub-selects (pgspot parses
-- those operands as statements); backfill_majority: typed loop variables instead of a
-- record (plpgsql_check reads their types). Behaviour unchanged.
-- The batches of a backfill, fixed when a phase starts: how many rows are to do and
-- the key that ends every batch_size-th of them (the last bound is the table's
-- highest key, so the last batch also covers rows appended meanwhile). One count,
-- then one ordered pass over the keys in a cursor, skipping batch_size - 1 rows at a
-- time with MOVE (the executor discards them; no window function, no array of every
-- key: memory is one bound per batch). When few rows are to do (a catch-up after a
-- run), the keys are collected from a plain scan and sorted, rather than walking the
-- whole primary key index past rows that already have a tenant.
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
    IF batch_size IS NULL OR batch_size < 1 OR batch_size > 1000000 THEN
        RAISE EXCEPTION 'batch_size must be between 1 and 1000000, not %', coalesce(batch_size::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
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
    -- (Here and in MOVE below a sub-select: pgspot parses these operands as statements.)
    OPEN c FOR EXECUTE (SELECT v_keys);
    LOOP
        -- (MOVE FORWARD 0 would re-read the current row: nothing to skip for batches of 1.)
        n_moved := 0;
        IF batch_size > 1 THEN
            MOVE FORWARD (SELECT batch_size - 1) IN c;
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

-- Before the backfill adds a tenant column: one pass that writes nothing counts the
-- classifier's tenants: the rule preview where the run records per-rule counts (the
-- same rules, per rule), else the classification expression grouped. The most
-- frequent tenant becomes the catalog default (ties: the smallest id). No SET clause:
-- the classification expression runs as it would in the CALL (the caller's search_path).
CREATE OR REPLACE FUNCTION vital_tenancy.backfill_majority(
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
    v_kind   text := plan ->> 'classifier';
    v_tenant uuid;
    v_n      bigint;
BEGIN
    IF tbl IS NULL OR plan IS NULL OR record_rules IS NULL THEN
        RAISE EXCEPTION '% must not be NULL', CASE WHEN tbl IS NULL THEN 'tbl' WHEN plan IS NULL THEN 'plan' ELSE 'record_rules' END
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF NOT plan OPERATOR(pg_catalog.?&) ARRAY['table', 'classifier', 'expression'] THEN
        RAISE EXCEPTION 'plan is not a backfill plan (backfill_plan() makes one): %', left(plan::text, 200)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
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
    FOR v_tenant, v_n IN EXECUTE format('SELECT e.tenant, count(*) AS n FROM (SELECT (%s) AS tenant FROM %s t) e GROUP BY 1',
                                        plan ->> 'expression', plan ->> 'table') LOOP
        rows_total := rows_total + v_n;
        IF v_tenant IS NOT NULL AND (v_n > default_rows OR (v_n = default_rows AND v_tenant::text < default_tenant::text)) THEN
            default_tenant := v_tenant;
            default_rows := v_n;
        END IF;
    END LOOP;
END
$$;

-- Issue 26: index advice from the application's statements (src/advice.rs).
CREATE FUNCTION vital_tenancy.query_advice() RETURNS TABLE (
    kind text, table_name text, index_definition text, statements jsonb,
    cost_before double precision, cost_after double precision, why text, ddl text)
    STRICT VOLATILE
    SET search_path = pg_catalog, pg_temp
    LANGUAGE c AS 'MODULE_PATHNAME', 'query_advice_wrapper';
CREATE FUNCTION vital_tenancy.query_coverage() RETURNS double precision
    STRICT STABLE
    SET search_path = pg_catalog, pg_temp
    LANGUAGE c AS 'MODULE_PATHNAME', 'query_coverage_wrapper';
COMMENT ON FUNCTION vital_tenancy.query_advice() IS
    'Index advice from the application''s statements in pg_stat_statements: each planned as the role that ran it, under its policies and without them (parsed and planned only, never run); tenant-leading (or, for a page of the newest rows, order-leading) indexes where a plan scans or sorts a tenant table, each checked with hypopg (cost before and after). Rows: index (ddl: CREATE INDEX CONCURRENTLY IF NOT EXISTS), rebuild (ddl: drop an invalid index first), rls_leakproof (a condition that loses an index only under RLS), seq_scan (still scanned), not_planned (why). Apply with SELECT ddl FROM vital_tenancy.query_advice() WHERE ddl IS NOT NULL \gexec or scripts/migrate --apply-advice. Not executable by PUBLIC.';
COMMENT ON FUNCTION vital_tenancy.query_coverage() IS
    'Index coverage as the migration plan means it: the percentage of the application''s calls on tenant tables (pg_stat_statements) whose plan reads no tenant table sequentially; NULL without such calls. Not executable by PUBLIC.';

-- Issue 32 and 33 (census): generated from sql/migrate.sql and sql/finalize.sql

-- by the session that changed them (the upgrade tier compares the bodies with a fresh
-- install). run_ddl: lock limits bounded (1..600000 ms, 0..100 retries), NULL ddl or
-- step refused before anything runs, the table in its lock-timeout message. The
-- backfill: no resume of a dropped table's step, and no "nothing to do" where a
-- finished run left rows with its catalog default (N01, N05). Its helpers refuse
-- NULLs, dangling tables, unknown runs and jsonb that is not a plan (N12, N15).
-- policy_fingerprint: 42P01/42809 for what is not a table (N12).
ALTER TABLE vital_tenancy.migration_steps ADD COLUMN dropped_at timestamptz;

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
    -- 0 or NULL would wait for the lock forever, NULL retries would retry forever; the
    -- bounds are LockLimits' (src/logic/migrate.rs).
    IF ddl IS NULL OR step IS NULL THEN
        RAISE EXCEPTION 'run_ddl: % must not be NULL', CASE WHEN ddl IS NULL THEN 'ddl' ELSE 'step' END
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF lock_timeout_ms IS NULL OR lock_timeout_ms < 1 OR lock_timeout_ms > 600000 THEN
        RAISE EXCEPTION 'run_ddl: lock_timeout_ms must be between 1 and 600000, not %', COALESCE(lock_timeout_ms::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF retries IS NULL OR retries < 0 OR retries > 100 THEN
        RAISE EXCEPTION 'run_ddl: retries must be between 0 and 100, not %', COALESCE(retries::text, 'NULL')
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
                RAISE EXCEPTION '% could not get its lock within % ms, % attempts', coalesce(tbl || ': ', '') || step, lock_timeout_ms, attempt
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

CREATE OR REPLACE FUNCTION vital_tenancy.backfill_batch_sql(
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
    IF plan IS NULL OR phase IS NULL OR from_start IS NULL OR last_batch IS NULL OR overwrite IS NULL THEN
        RAISE EXCEPTION '% must not be NULL',
                CASE WHEN plan IS NULL THEN 'plan' WHEN phase IS NULL THEN 'phase' WHEN from_start IS NULL THEN 'from_start'
                     WHEN last_batch IS NULL THEN 'last_batch' ELSE 'overwrite' END
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF NOT plan ?& ARRAY['table', 'pk', 'pk_type', 'tenant_column', 'expression'] THEN
        RAISE EXCEPTION 'plan is not a backfill plan (backfill_plan() makes one): %', left(plan::text, 200)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF phase NOT IN ('queue', 'catch_up') THEN
        RAISE EXCEPTION 'phase must be queue or catch_up, not %', left(phase, 100) USING ERRCODE = 'invalid_parameter_value';
    END IF;
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

CREATE OR REPLACE FUNCTION vital_tenancy.backfill_run_batch(
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
    -- Checked before the batch runs: a NULL or a dangling table would journal rows
    -- revert_run() can never find (census N12, N15).
    IF batch_sql IS NULL OR tbl IS NULL OR run_id IS NULL OR batch_size IS NULL OR expected IS NULL THEN
        RAISE EXCEPTION '% must not be NULL',
                CASE WHEN batch_sql IS NULL THEN 'batch_sql' WHEN tbl IS NULL THEN 'tbl' WHEN run_id IS NULL THEN 'run_id'
                     WHEN batch_size IS NULL THEN 'batch_size' ELSE 'expected' END
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class k WHERE k.oid OPERATOR(pg_catalog.=) tbl::pg_catalog.oid) THEN
        RAISE EXCEPTION 'relation with OID % does not exist', tbl::pg_catalog.oid USING ERRCODE = 'undefined_table';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM vital_tenancy.migration_runs r WHERE r.run_id OPERATOR(pg_catalog.=) backfill_run_batch.run_id) THEN
        RAISE EXCEPTION 'migration run % does not exist', run_id USING ERRCODE = 'invalid_parameter_value';
    END IF;
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

CREATE OR REPLACE FUNCTION vital_tenancy.backfill_step(run_id bigint, tbl regclass, tenant_column text)
RETURNS vital_tenancy.migration_steps
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    st vital_tenancy.migration_steps;
BEGIN
    SELECT s.* INTO st FROM vital_tenancy.migration_steps s
     WHERE s.run_id = backfill_step.run_id AND s.tbl = backfill_step.tbl AND s.tenant_column = backfill_step.tenant_column;
    IF NOT FOUND THEN
        IF tbl IS NOT NULL AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class k WHERE k.oid = tbl::oid) THEN
            RAISE EXCEPTION 'relation with OID % does not exist', tbl::oid USING ERRCODE = 'undefined_table';
        END IF;
        RAISE EXCEPTION 'migration run % has no backfill step for % (column %)',
                coalesce(run_id::text, 'NULL'), coalesce(tbl::text, 'NULL'), coalesce(quote_ident(tenant_column), 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN st;
END
$$;

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
       AND s.phase <> 'done' AND r.status = 'running' AND s.dropped_at IS NULL
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
                -- Every row has a tenant, but a run that added the column and was
                -- marked finished before its batches passed every row left the rest
                -- with its catalog default, unclassified (census N01, N05).
                SELECT s.run_id, r.name AS run_name, s.last_key INTO chk
                  FROM vital_tenancy.migration_steps s JOIN vital_tenancy.migration_runs r USING (run_id)
                 WHERE s.tbl = backfill.tbl AND s.tenant_column = backfill.tenant_column AND s.dropped_at IS NULL
                   AND s.phase = 'queue' AND s.default_tenant IS NOT NULL AND r.status = 'completed'
                 ORDER BY s.run_id DESC LIMIT 1;
                IF FOUND THEN
                    RAISE EXCEPTION 'backfill %: run % (%) added % and stopped after key %, then was marked finished: the rows after it hold its catalog default tenant, unclassified',
                            plan ->> 'table', chk.run_id, chk.run_name, plan ->> 'tenant_column', coalesce(chk.last_key, '(start)')
                        USING ERRCODE = 'object_not_in_prerequisite_state',
                              HINT = format('SELECT * FROM vital_tenancy.revert_run(%s) puts the table back as it was before that run; then CALL backfill again.', chk.run_id);
                END IF;
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
           AND r.status = 'running' AND r.name = run_name AND s.dropped_at IS NULL
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

CREATE OR REPLACE FUNCTION vital_tenancy.policy_fingerprint(tbl regclass) RETURNS text
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

COMMENT ON FUNCTION vital_tenancy.backfill_run_batch(text, regclass, bigint, text, text, uuid, integer, bigint) IS
    'Run one backfill batch and count it (given a tenant, left without, rewritten, walked), retrying on deadlock or lock timeout up to 10 times. Refuses NULL arguments, a table no relation is and an unknown run before the batch runs.';

COMMENT ON FUNCTION vital_tenancy.backfill_step(bigint, regclass, text) IS
    'A backfill''s checkpoint row (migration_steps) for one table in one run; ERROR 42P01 for an OID no relation has, 22023 where the run has no such step.';

COMMENT ON FUNCTION vital_tenancy.revert_run(bigint) IS
    'Put back every tenant value a migration run journaled, where it is still the value the run wrote; where the run added the column and stopped before its batches passed every row, the rows past its checkpoint still holding its catalog default are reset to NULL too. A table dropped since is reported, not touched.';

COMMENT ON FUNCTION vital_tenancy.finish_run(text) IS
    'Mark the named running migration run completed; returns its id (a run already completed: its id, with a NOTICE; no run of that name: 22023). A WARNING per step that stopped before its last batch: finished, it can no longer be resumed, only reverted.';

COMMENT ON FUNCTION vital_tenancy.policy_fingerprint(regclass) IS
    'md5 of a table''s policies: commands, role names and expressions (deparsed with search_path pg_catalog), not names or AS PERMISSIVE/RESTRICTIVE; equal on a Citus shard and its table when Citus copied them faithfully. 42P01 for an OID no relation has, 42809 for a relation that is not a table.';


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

-- Records of tables dropped before this update (their OIDs may name other tables by
-- now: nothing tells which), and declarations 0.2.0 accepted on what is not a table.
DELETE FROM vital_tenancy.rls_tables r WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) r.tbl::pg_catalog.oid);
DELETE FROM vital_tenancy.originals o WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) o.tbl::pg_catalog.oid);
DELETE FROM vital_tenancy.declared_references d
 WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) d.child::pg_catalog.oid AND c.relkind OPERATOR(pg_catalog.=) ANY (ARRAY['r', 'p']::pg_catalog."char"[]))
    OR NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) d.parent::pg_catalog.oid AND c.relkind OPERATOR(pg_catalog.=) ANY (ARRAY['r', 'p']::pg_catalog."char"[]));
UPDATE vital_tenancy.migration_steps s SET dropped_at = pg_catalog.clock_timestamp()
 WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) s.tbl::pg_catalog.oid);
-- end of the census block

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
