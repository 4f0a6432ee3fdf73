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
