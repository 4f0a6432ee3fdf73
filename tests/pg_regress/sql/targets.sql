-- The toolkit changes only the application's tables: the extension's own tables, system
-- schemas, temporary tables and the tenants registry are refused (42809) and nothing
-- changes; run_ddl refuses timeouts that would wait forever (22023).
\set ON_ERROR_ROLLBACK on
\set SHOW_CONTEXT never
begin;
create extension vital_tenancy;
select count(*) from vital_tenancy.ensure_tenants('public.tenants', '{"type": "industry"}');
select * from vital_tenancy.enable_tenant_rls('vital_tenancy.tenant_members', 'tenant_id');
\echo :LAST_ERROR_SQLSTATE
select * from vital_tenancy.add_tenant_column('vital_tenancy.settings');
\echo :LAST_ERROR_SQLSTATE
select vital_tenancy.backfill_plan('vital_tenancy.migration_journal_batches', 'platform', '{}', 'old_tenant');
\echo :LAST_ERROR_SQLSTATE
select * from vital_tenancy.add_tenant_column('information_schema.sql_features');
\echo :LAST_ERROR_SQLSTATE
select * from vital_tenancy.add_tenant_column('public.tenants');
\echo :LAST_ERROR_SQLSTATE
select * from vital_tenancy.enable_tenant_rls('public.tenants', 'id');
\echo :LAST_ERROR_SQLSTATE
create temp table tmp_notes (id int primary key, tenant_id uuid);
select * from vital_tenancy.enable_tenant_rls('pg_temp.tmp_notes');
\echo :LAST_ERROR_SQLSTATE
select * from vital_tenancy.ensure_tenants('information_schema.tenants', '{}');
\echo :LAST_ERROR_SQLSTATE
select * from vital_tenancy.ensure_tenants('vital_tenancy.tenants', '{}');
\echo :LAST_ERROR_SQLSTATE
select vital_tenancy.declare_reference('pg_catalog.pg_class', 'relname', 'public.agents', array['name']);
\echo :LAST_ERROR_SQLSTATE
select vital_tenancy.declare_reference('vital_tenancy.settings', 'name', 'public.agents', array['name']);
\echo :LAST_ERROR_SQLSTATE
select count(*) from vital_tenancy.citus_readiness(array['nope']);
\echo :LAST_ERROR_SQLSTATE
select count(*) as system_tables from vital_tenancy.citus_readiness(array['pg_catalog', 'information_schema', 'vital_tenancy']);
-- A table an earlier version accepted stays as it is when the policies are refreshed.
insert into vital_tenancy.rls_tables (tbl, tenant_column, shared, rls_was_enabled, rls_was_forced)
values ('vital_tenancy.settings', 'name', true, false, false);
select * from vital_tenancy.refresh_tenant_policies();
select count(*) as policies_on_settings from pg_policy where polrelid = 'vital_tenancy.settings'::regclass;
delete from vital_tenancy.rls_tables;
-- Nothing changed.
select count(*) as managed from vital_tenancy.rls_tables;
select count(*) as declared from vital_tenancy.declared_references;
select relrowsecurity from pg_class where oid = 'vital_tenancy.tenant_members'::regclass;
select count(*) as extra_columns from pg_attribute where attrelid = 'vital_tenancy.settings'::regclass and attname = 'tenant_id';
select to_regclass('information_schema.tenants') is null as not_created;
-- run_ddl: timeouts that would wait or retry forever.
create table public.vt_targets_t (id int);
select vital_tenancy.run_ddl('ALTER TABLE public.vt_targets_t ADD COLUMN x int', 'step', 'public.vt_targets_t', 0, 3);
\echo :LAST_ERROR_SQLSTATE
select vital_tenancy.run_ddl('ALTER TABLE public.vt_targets_t ADD COLUMN x int', 'step', 'public.vt_targets_t', NULL, 3);
\echo :LAST_ERROR_SQLSTATE
select vital_tenancy.run_ddl('ALTER TABLE public.vt_targets_t ADD COLUMN x int', 'step', 'public.vt_targets_t', 100, NULL);
\echo :LAST_ERROR_SQLSTATE
select vital_tenancy.run_ddl('ALTER TABLE public.vt_targets_t ADD COLUMN x int', 'step', 'public.vt_targets_t', 100, 0);
select count(*) as added from pg_attribute where attrelid = 'public.vt_targets_t'::regclass and attname = 'x';
rollback;
