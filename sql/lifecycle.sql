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
