-- Tenant-scoped keys and references: the plan, applying it, the guard, bad input.
\set ON_ERROR_ROLLBACK on
\set SHOW_CONTEXT never
begin;
create extension vital_tenancy;
select count(*) from vital_tenancy.ensure_tenants('public.tenants', '{"type": "industry"}');
create table public.vt_parents (id uuid primary key default gen_random_uuid(), tenant_id uuid not null references public.tenants (id), name text not null unique);
create table public.vt_children (id uuid primary key default gen_random_uuid(), tenant_id uuid not null references public.tenants (id),
                                 parent_id uuid references public.vt_parents (id));
select count(*) > 0 as enabled from vital_tenancy.enable_tenant_rls('public.vt_parents');
select count(*) > 0 as enabled from vital_tenancy.enable_tenant_rls('public.vt_children');
select table_name, change, index_ddl, ddl from vital_tenancy.tenant_keys_plan() order by 1, 2;
-- The index must exist first (CREATE INDEX CONCURRENTLY runs outside a transaction).
select * from vital_tenancy.apply_tenant_keys();
\echo :LAST_ERROR_SQLSTATE
-- (inside this test's transaction, the same index built the plain way)
create unique index vt_parents_tenant_name_key on public.vt_parents (tenant_id, name);
select * from vital_tenancy.apply_tenant_keys(lock_timeout_ms => 500, retries => 1);
select count(*) as left_to_do from vital_tenancy.tenant_keys_plan();
select pg_get_constraintdef(oid) from pg_constraint where conname = 'vt_parents_name_key';
-- A unique index that backs no constraint is reported, with nothing to apply.
create unique index vt_children_parent_once on public.vt_children (parent_id);
select table_name, change, index_ddl is null as no_index_ddl, ddl is null as no_ddl from vital_tenancy.tenant_keys_plan();
drop index public.vt_children_parent_once;
-- The guard: a parent of the row's tenant or Platform; the same error for another
-- tenant's parent and for one that does not exist.
insert into public.vt_parents (id, tenant_id, name) values
  ('aaaaaaaa-0000-4000-8000-00000000000a', vital_tenancy.pharma_tenant_id(), 'x'),
  ('aaaaaaaa-0000-4000-8000-00000000000b', vital_tenancy.platform_tenant_id(), 'x'),
  ('aaaaaaaa-0000-4000-8000-00000000000c', vital_tenancy.digital_health_tenant_id(), 'x');
insert into public.vt_children (tenant_id, parent_id) values (vital_tenancy.digital_health_tenant_id(), 'aaaaaaaa-0000-4000-8000-00000000000a');
\echo :LAST_ERROR_SQLSTATE
insert into public.vt_children (tenant_id, parent_id) values (vital_tenancy.digital_health_tenant_id(), 'aaaaaaaa-0000-4000-8000-0000000000ff');
\echo :LAST_ERROR_SQLSTATE
insert into public.vt_children (tenant_id, parent_id) values
  (vital_tenancy.digital_health_tenant_id(), 'aaaaaaaa-0000-4000-8000-00000000000b'),
  (vital_tenancy.digital_health_tenant_id(), 'aaaaaaaa-0000-4000-8000-00000000000c'),
  (vital_tenancy.digital_health_tenant_id(), null);
select count(*) as children from public.vt_children;
-- Moving a child to another tenant is checked too.
update public.vt_children set tenant_id = vital_tenancy.pharma_tenant_id() where parent_id = 'aaaaaaaa-0000-4000-8000-00000000000c';
\echo :LAST_ERROR_SQLSTATE
-- Only DBAs apply it.
create role vt_keys_app;
set local role vt_keys_app;
select * from vital_tenancy.apply_tenant_keys();
\echo :LAST_ERROR_SQLSTATE
reset role;
rollback;
