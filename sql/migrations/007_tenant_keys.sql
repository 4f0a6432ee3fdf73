-- 007: tenant-scoped keys and references. Every unique key of a tenant table becomes
-- per tenant ((tenant_id, name) instead of (name): no tenant learns or squats another's
-- names), every reference between tenant tables gets a guard (a row's parent must
-- belong to its tenant, or to Platform where the parent table is shared), and every
-- referenced tenant table a parent guard (a row other tenants' rows reference keeps
-- its tenant; a delete never cascades into another tenant's rows). Online: the unique indexes are built
-- CONCURRENTLY first (one statement each, outside a transaction), then the
-- constraints are swapped onto them and the guards created, each under lock_timeout
-- with retries. Idempotent: a second run finds nothing to do.
\set ON_ERROR_STOP on
SELECT table_name, change FROM vital_tenancy.tenant_keys_plan() ORDER BY 1, 2;
SELECT index_ddl FROM vital_tenancy.tenant_keys_plan() WHERE index_ddl IS NOT NULL ORDER BY table_name, index_ddl
\gexec
BEGIN;
SELECT * FROM vital_tenancy.apply_tenant_keys();
COMMIT;
SELECT count(*) AS left_to_do FROM vital_tenancy.tenant_keys_plan() WHERE ddl IS NOT NULL;
