-- The guard of a reference between tenant tables (see src/keys.rs): a BEFORE trigger
-- on the child, created by apply_tenant_keys() with the arguments
--   (parent table, child column, parent column, child tenant column, parent tenant column).
-- The parent must belong to the child row's tenant or to Platform. It is looked up as
-- the extension's owner (SECURITY DEFINER), so a tenant's invisible rows count, and the
-- error is the same whether the parent does not exist or belongs to another tenant:
-- success vs failure tells nothing about other tenants.
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
