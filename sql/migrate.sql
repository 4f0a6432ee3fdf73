-- vital_tenancy migration procedures: the parts that need what only PL/pgSQL has
-- (exception blocks for lock-timeout retries, COMMIT per batch). The planning —
-- which expression classifies a row, which DDL steps to run — is Rust
-- (backfill_plan, add_tenant_column, enforce_tenant_column).

-- Run one DDL statement under lock_timeout, retrying with backoff when the lock is
-- not granted in time; log each attempt. Each try is a subtransaction, so a timed-out
-- try leaves nothing behind.
CREATE FUNCTION vital_tenancy.run_ddl(
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

-- The batches of a backfill, fixed when a phase starts: how many rows are to do and
-- the key that ends every batch_size-th of them (the last bound is the table's
-- highest key, so the last batch also covers rows appended meanwhile). One count,
-- then one ordered pass over the keys in a cursor, skipping batch_size - 1 rows at a
-- time with MOVE (the executor discards them; no window function, no array of every
-- key: memory is one bound per batch). When few rows are to do (a catch-up after a
-- run), the keys are collected from a plain scan and sorted, rather than walking the
-- whole primary key index past rows that already have a tenant.
CREATE FUNCTION vital_tenancy.backfill_batches(
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

-- A backfill's step of one table in one run, as it is now; an ERROR where there is none.
CREATE FUNCTION vital_tenancy.backfill_step(run_id bigint, tbl regclass, tenant_column text)
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
CREATE PROCEDURE vital_tenancy.backfill(
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
