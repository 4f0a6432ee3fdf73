-- vital_tenancy migration procedures: the parts that need what only PL/pgSQL has
-- (exception blocks for lock-timeout retries, COMMIT per batch). The planning —
-- which expression classifies a row, which DDL steps to run — is Rust
-- (backfill_plan, add_tenant_column, enforce_tenant_column).

-- Run one DDL statement under lock_timeout, retrying with backoff when the lock is
-- not granted in time; log each attempt. Each try is a subtransaction, so a timed-out
-- try leaves nothing behind.
CREATE FUNCTION @extschema@.run_ddl(
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

-- The batches of a backfill, fixed when a phase starts: how many rows are to do and
-- the key that ends every batch_size-th of them (the last bound is the table's
-- highest key, so the last batch also covers rows appended meanwhile). One count,
-- then one ordered pass over the keys in a cursor, skipping batch_size - 1 rows at a
-- time with MOVE (the executor discards them; no window function, no array of every
-- key: memory is one bound per batch). When few rows are to do (a catch-up after a
-- run), the keys are collected from a plain scan and sorted, rather than walking the
-- whole primary key index past rows that already have a tenant.
CREATE FUNCTION @extschema@.backfill_batches(
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
    -- Validates the table, its key and the tenant column; quotes the identifiers.
    plan := @extschema@.backfill_plan(tbl, 'platform', '{}'::jsonb, tenant_column);
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
        MOVE FORWARD (batch_size - 1) IN c;
        GET DIAGNOSTICS n_moved = ROW_COUNT;
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

-- Assign tenant_id to a table's rows with a classifier, in keyset batches over the
-- primary key with a COMMIT per batch. The batches are fixed when the run starts
-- (the key that ends every batch_size-th row without a tenant); the checkpoint and the
-- journal commit with each batch, so after a crash the same CALL resumes where it
-- stopped and no row is assigned or journaled twice. Then rows that appeared since
-- without a tenant are done the same way (catch_up). Must be CALLed outside a
-- transaction block. No SET clause: a procedure with one cannot COMMIT; every name
-- inside is schema-qualified instead.
CREATE PROCEDURE @extschema@.backfill(
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
    v_bounds  text[];
    v_todo    bigint;
    v_last    text;
    n_batch   bigint;
    n_changed bigint;
    n_failed  bigint;
    t_start   timestamptz;
    t_phase   timestamptz;
    v_rate    numeric;
    v_sql     text;
    v_kind    text;
    v_rules   jsonb;
    v_metric  text;
    v_next    text;
    n_retry   integer;
    v_phase_done bigint;
    v_replica boolean := false;
    v_range   text;
BEGIN
    IF batch_size IS NULL OR batch_size < 1 THEN
        RAISE EXCEPTION 'batch_size must be a positive integer, not %', batch_size USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF sleep_ms IS NULL OR sleep_ms < 0 THEN
        RAISE EXCEPTION 'sleep_ms must not be negative, not %', sleep_ms USING ERRCODE = 'invalid_parameter_value';
    END IF;
    plan := @extschema@.backfill_plan(tbl, classifier, options, tenant_column);
    v_metric := run_name || ':' || (plan ->> 'table');

    -- The step to resume, if any: the latest unfinished one for this table.
    SELECT s.* INTO st
      FROM @extschema@.migration_steps s JOIN @extschema@.migration_runs r USING (run_id)
     WHERE s.tbl = backfill.tbl AND s.tenant_column = backfill.tenant_column
       AND s.phase <> 'done' AND r.status = 'running'
     ORDER BY s.run_id DESC LIMIT 1;

    IF NOT FOUND THEN
        t_phase := clock_timestamp();
        SELECT b.rows_todo, b.bounds INTO v_todo, v_bounds
          FROM @extschema@.backfill_batches(tbl, batch_size, tenant_column, NOT overwrite) b;
        IF v_todo = 0 THEN
            RAISE NOTICE 'backfill %: every row already has a tenant; nothing to do', plan ->> 'table';
            RETURN;
        END IF;
        -- Done earlier in this (still running) run: another catch-up pass of the same step.
        SELECT s.* INTO st
          FROM @extschema@.migration_steps s JOIN @extschema@.migration_runs r USING (run_id)
         WHERE s.tbl = backfill.tbl AND s.tenant_column = backfill.tenant_column
           AND r.status = 'running' AND r.name = run_name
         ORDER BY s.run_id DESC LIMIT 1;
    END IF;
    IF FOUND AND st.phase = 'done' THEN
        UPDATE @extschema@.migration_steps s SET phase = 'catch_up', last_key = NULL, finished_at = NULL, next_batch = 0
         WHERE s.run_id = st.run_id AND s.tbl = backfill.tbl AND s.tenant_column = backfill.tenant_column
        RETURNING s.* INTO st;
        COMMIT;
    END IF;

    IF st.run_id IS NULL THEN
        SELECT run_id INTO v_run FROM @extschema@.migration_runs
         WHERE name = run_name AND status = 'running' ORDER BY run_id DESC LIMIT 1;
        IF v_run IS NULL THEN
            INSERT INTO @extschema@.migration_runs (name) VALUES (run_name) RETURNING run_id INTO v_run;
        END IF;
        v_kind := plan ->> 'classifier';
        IF record_rules AND v_kind IN ('prompt', 'knowledge', 'agent', 'tool') THEN
            SELECT jsonb_object_agg(coalesce(p.tenant_name, p.tenant_id::text) || ' / ' || p.rule, p.row_count)
              INTO v_rules FROM @extschema@.preview_classification(v_kind, tbl) p;
        END IF;
        INSERT INTO @extschema@.migration_steps
               (run_id, tbl, tenant_column, classifier, options, bounds, batch_size, rows_total, phase_rows, rule_counts)
        VALUES (v_run, tbl, tenant_column, classifier, options, v_bounds, batch_size, v_todo, v_todo, v_rules);
        INSERT INTO @extschema@.migration_metrics (migration_name, phase, records_processed, duration_ms)
        VALUES (v_metric, 'snapshot', v_todo,
                round(extract(epoch FROM clock_timestamp() - t_phase) * 1000));
        COMMIT;
        SELECT s.* INTO st FROM @extschema@.migration_steps s
         WHERE s.run_id = v_run AND s.tbl = backfill.tbl AND s.tenant_column = backfill.tenant_column;
        RAISE NOTICE 'backfill %: run %, % rows to classify with "%"', plan ->> 'table', v_run, v_todo, classifier;
    ELSE
        v_run := st.run_id;
        RAISE NOTICE 'backfill %: resuming run % in phase %, after key %, % of % rows done',
            plan ->> 'table', v_run, st.phase, coalesce(st.last_key, '(start)'), st.rows_done, st.rows_total;
    END IF;

    -- A tenant assignment is not an application write: unless asked, application
    -- triggers (updated_at stamps, audit) do not fire for it. That needs the
    -- superuser-only session_replication_role, set per batch transaction; the new
    -- tenant values need no FK trigger either, as they come from the classifiers and
    -- 005 validates the foreign key.
    IF NOT fire_triggers THEN
        IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
            v_replica := true;
        ELSE
            RAISE NOTICE 'backfill %: not a superuser, so the table''s triggers fire for every assigned row', plan ->> 'table';
        END IF;
    END IF;
    v_last := st.last_key;
    v_phase_done := st.rows_done;
    t_start := clock_timestamp();
    t_phase := clock_timestamp();
    LOOP
        IF st.phase = 'catch_up' AND st.next_batch = 0 THEN
            -- A catch-up phase starts: batches over the rows without a tenant now.
            SELECT b.rows_todo, b.bounds INTO v_todo, v_bounds
              FROM @extschema@.backfill_batches(tbl, st.batch_size, tenant_column, true) b;
            -- The rows this pass leaves without a tenant are counted as it goes.
            UPDATE @extschema@.migration_steps s
               SET bounds = v_bounds, next_batch = 1, last_key = NULL, phase_rows = coalesce(v_todo, 0),
                   rows_total = s.rows_total + coalesce(v_todo, 0), rows_failed = 0
             WHERE s.run_id = v_run AND s.tbl = backfill.tbl AND s.tenant_column = backfill.tenant_column
            RETURNING s.* INTO st;
            COMMIT;
            v_last := NULL;
        END IF;
        -- The next precomputed batch (the checkpoint counts the batches done).
        IF st.next_batch > coalesce(cardinality(st.bounds), 0) THEN
            n_batch := 0;
        ELSE
            v_next := st.bounds[st.next_batch];
            n_batch := CASE WHEN st.next_batch < cardinality(st.bounds) THEN st.batch_size
                            ELSE st.phase_rows - st.batch_size * (cardinality(st.bounds) - 1) END;
        END IF;
        v_range := CASE WHEN v_last IS NULL THEN ''
                        ELSE format('t.%s > $1::%s AND ', plan ->> 'pk', plan ->> 'pk_type') END
                   || format('t.%s <= $5::%s', plan ->> 'pk', plan ->> 'pk_type')
                   || CASE WHEN st.phase = 'catch_up' THEN format(' AND t.%s IS NULL', plan ->> 'tenant_column') ELSE '' END;
        IF overwrite THEN
            -- Rows may already have a tenant: read the old value, then update only
            -- rows still holding it (a concurrent change wins; the journal is exact).
            v_sql := format($q$
                WITH x AS (SELECT t.%1$s AS k, t.%2$s AS old, (%3$s) AS new FROM %4$s t WHERE %5$s),
                     u AS (UPDATE %4$s t SET %2$s = x.new FROM x
                            WHERE t.%1$s = x.k AND x.new IS NOT NULL AND x.new IS DISTINCT FROM x.old
                              AND t.%2$s IS NOT DISTINCT FROM x.old
                           RETURNING x.k, x.old, x.new),
                     j AS (INSERT INTO %6$I.migration_journal_batches (run_id, tbl, old_tenant, new_tenant, keys)
                           SELECT $3, $4, u.old, u.new, array_agg(u.k::text) FROM u GROUP BY u.old, u.new
                           RETURNING 1)
                SELECT (SELECT count(*) FROM u), (SELECT count(*) FROM x WHERE x.new IS NULL)
                $q$, plan ->> 'pk', plan ->> 'tenant_column', plan ->> 'expression', plan ->> 'table', v_range,
                     '@extschema@');
        ELSE
            -- Only rows without a tenant: the old value is NULL by construction (and
            -- re-checked if a row changes under us). A row the classifier cannot place
            -- is left alone (tested only for classifiers that can return NULL).
            v_sql := format($q$
                WITH u AS (UPDATE %4$s t SET %2$s = (%3$s)
                            WHERE %5$s AND t.%2$s IS NULL%7$s
                           RETURNING t.%1$s AS k, t.%2$s AS new),
                     j AS (INSERT INTO %6$I.migration_journal_batches (run_id, tbl, old_tenant, new_tenant, keys)
                           SELECT $3, $4, NULL, u.new, array_agg(u.k::text) FROM u GROUP BY u.new
                           RETURNING 1)
                SELECT (SELECT count(*) FROM u), NULL::bigint
                $q$, plan ->> 'pk', plan ->> 'tenant_column', plan ->> 'expression', plan ->> 'table', v_range,
                     '@extschema@',
                     CASE WHEN (plan -> 'may_return_null')::boolean
                          THEN format(' AND (%s) IS NOT NULL', plan ->> 'expression') ELSE '' END);
        END IF;
        -- A batch that deadlocks with an application transaction is retried; the
        -- subtransaction leaves nothing behind (COMMIT stays outside this block).
        n_retry := 0;
        IF v_replica THEN
            PERFORM pg_catalog.set_config('session_replication_role', 'replica', true);
        END IF;
        -- A batch commits without waiting for its WAL flush: its rows, journal and
        -- checkpoint are one transaction, so a crash that loses the last few batches
        -- leaves the table at an earlier checkpoint, which the next CALL resumes from.
        -- The final commit (phase done) waits, and so flushes every batch before it.
        IF n_batch > 0 THEN
            PERFORM pg_catalog.set_config('synchronous_commit', 'off', true);
        END IF;
        LOOP
            BEGIN
                IF n_batch = 0 THEN
                    EXIT;
                END IF;
                EXECUTE v_sql INTO n_changed, n_failed USING v_last, batch_size, v_run, tbl, v_next;
                -- Without overwrite, rows in the batch left without a tenant are the
                -- ones the classifier gave none (or that vanished meanwhile).
                n_failed := coalesce(n_failed, greatest(n_batch - n_changed, 0));
                EXIT;
            EXCEPTION WHEN deadlock_detected OR lock_not_available THEN
                n_retry := n_retry + 1;
                IF n_retry > 10 THEN
                    RAISE;
                END IF;
                RAISE NOTICE 'backfill %: batch after key % hit a lock conflict, retrying (%)',
                    plan ->> 'table', coalesce(v_last, '(start)'), n_retry;
                PERFORM pg_sleep(0.05 * n_retry);
            END;
        END LOOP;

        IF n_batch = 0 THEN
            INSERT INTO @extschema@.migration_metrics (migration_name, phase, records_processed, records_failed, duration_ms)
            SELECT v_metric, CASE WHEN st.phase = 'queue' THEN 'backfill' ELSE 'catch_up' END,
                   s.rows_done - v_phase_done, s.rows_failed,
                   round(extract(epoch FROM clock_timestamp() - t_phase) * 1000)
              FROM @extschema@.migration_steps s
             WHERE s.run_id = v_run AND s.tbl = backfill.tbl AND s.tenant_column = backfill.tenant_column;
            IF st.phase = 'queue' AND catch_up THEN
                UPDATE @extschema@.migration_steps s SET phase = 'catch_up', last_key = NULL, next_batch = 0
                 WHERE s.run_id = v_run AND s.tbl = backfill.tbl AND s.tenant_column = backfill.tenant_column
                RETURNING s.* INTO st;
                COMMIT;
                v_last := NULL;
                SELECT s.rows_done INTO v_phase_done FROM @extschema@.migration_steps s
                 WHERE s.run_id = v_run AND s.tbl = backfill.tbl AND s.tenant_column = backfill.tenant_column;
                t_phase := clock_timestamp();
                CONTINUE;
            END IF;
            UPDATE @extschema@.migration_steps s
               SET phase = 'done', finished_at = clock_timestamp(), last_key = NULL
             WHERE s.run_id = v_run AND s.tbl = backfill.tbl AND s.tenant_column = backfill.tenant_column;
            COMMIT;
            EXIT;
        END IF;

        UPDATE @extschema@.migration_steps s
           SET last_key = v_next, rows_done = s.rows_done + n_batch,
               next_batch = s.next_batch + 1,
               rows_changed = s.rows_changed + n_changed, rows_failed = s.rows_failed + n_failed,
               rows_total = greatest(s.rows_total, s.rows_done + n_batch)
         WHERE s.run_id = v_run AND s.tbl = backfill.tbl AND s.tenant_column = backfill.tenant_column
        RETURNING s.* INTO st;
        COMMIT;
        v_last := v_next;

        v_rate := st.rows_done / greatest(extract(epoch FROM clock_timestamp() - t_start), 0.001);
        RAISE NOTICE 'backfill %: % / % rows (% changed) in phase %, % rows/s, ETA %',
            plan ->> 'table', st.rows_done, st.rows_total, st.rows_changed, st.phase, round(v_rate),
            CASE WHEN st.phase = 'queue' AND v_rate > 0
                 THEN (round((st.rows_total - st.rows_done) / v_rate) || ' s') ELSE '–' END;
        IF sleep_ms > 0 THEN
            PERFORM pg_sleep(sleep_ms / 1000.0);
        END IF;
    END LOOP;

    SELECT s.* INTO st FROM @extschema@.migration_steps s
     WHERE s.run_id = v_run AND s.tbl = backfill.tbl AND s.tenant_column = backfill.tenant_column;
    RAISE NOTICE 'backfill %: done, % rows walked, % changed, % left unclassified',
        plan ->> 'table', st.rows_done, st.rows_changed, st.rows_failed;
END
$$;
