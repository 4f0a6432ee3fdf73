-- 002: make sure the three tenants exist (Platform, Digital Health Startup,
-- Pharmaceuticals). Existing rows are never changed; the real tenants table needs a
-- "type", given per slug. One transaction; a second run changes nothing.
\set ON_ERROR_STOP on
BEGIN;
SELECT tenant_id, name, slug, action, detail
  FROM vital_tenancy.ensure_tenants('public.tenants',
         '{"type": "industry", "platform": {"type": "platform"}}');
COMMIT;
