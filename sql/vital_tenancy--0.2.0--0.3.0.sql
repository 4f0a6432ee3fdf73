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
