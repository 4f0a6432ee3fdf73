-- The guard of a reference between tenant tables (src/keys.rs): a BEFORE INSERT OR
-- UPDATE row trigger on the child, created by apply_tenant_keys() with the arguments
--   (parent table, child column, parent column, child tenant column, parent tenant column).
-- A C function, SECURITY INVOKER, not executable by PUBLIC (so no role can attach it to
-- a table of its own): it runs only as a trigger that matches a foreign key between
-- two permanent tables under tenant RLS, decides as the writer what to check, and
-- looks the parent up as the extension's owner. search_path pinned: the look-up's
-- operators are pg_catalog's whatever the writer's search_path.
CREATE FUNCTION vital_tenancy.tenant_reference_check() RETURNS trigger
    LANGUAGE c VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'tenant_reference_check_wrapper';

-- The parent side (src/keys.rs): a BEFORE UPDATE OF <tenant column> OR DELETE row
-- trigger, vt_tenant_parent_guard, on every referenced tenant table (apply_tenant_keys()):
-- a row that other tenants' rows reference keeps its tenant, and a delete never reaches
-- another tenant's rows through ON DELETE CASCADE / SET NULL / SET DEFAULT. Same
-- hardening as the reference guard: C, SECURITY INVOKER, not executable by PUBLIC,
-- runs only as that trigger on a permanent managed table.
CREATE FUNCTION vital_tenancy.tenant_parent_check() RETURNS trigger
    LANGUAGE c VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'tenant_parent_check_wrapper';
