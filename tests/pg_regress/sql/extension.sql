-- The extension's object model: one schema, documented functions, truthful
-- volatility, pg_dump-kept configuration tables, and DROP EXTENSION that never
-- touches application data.
\set ON_ERROR_ROLLBACK on
\set SHOW_CONTEXT never
begin;
create extension vital_tenancy;

select extname, extversion, extrelocatable, extnamespace::regnamespace
  from pg_extension where extname = 'vital_tenancy';
-- The objects' schema is created by the install script, as a member of the extension.
select pg_describe_object(d.classid, d.objid, 0) as member_schema
  from pg_depend d join pg_extension e on e.oid = d.refobjid and e.extname = 'vital_tenancy'
 where d.deptype = 'e' and d.classid = 'pg_namespace'::regclass;

-- Every function lives in schema vital_tenancy and has a comment.
select p.oid::regprocedure as function, p.provolatile, p.proparallel, p.proisstrict,
       p.prosecdef, obj_description(p.oid, 'pg_proc') is not null as documented
  from pg_proc p
 where p.pronamespace = 'vital_tenancy'::regnamespace
 order by p.oid::regprocedure::text;

-- Every extension object is in schema vital_tenancy (or is the schema itself, or its
-- event trigger, which has no schema).
select count(*) as objects_outside_schema
  from pg_depend d
  join pg_extension e on e.oid = d.refobjid and e.extname = 'vital_tenancy'
 where d.deptype = 'e'
   and not exists (select 1 from pg_proc p where p.oid = d.objid and p.pronamespace = 'vital_tenancy'::regnamespace)
   and not exists (select 1 from pg_class c where c.oid = d.objid and c.relnamespace = 'vital_tenancy'::regnamespace)
   and not exists (select 1 from pg_type t where t.oid = d.objid and t.typnamespace = 'vital_tenancy'::regnamespace)
   and not (d.classid = 'pg_namespace'::regclass and d.objid = 'vital_tenancy'::regnamespace)
   and not exists (select 1 from pg_event_trigger t where t.oid = d.objid and t.evtname = 'vital_tenancy_forget_dropped');

-- Every table of the extension is kept by pg_dump.
select c.oid::regclass as config_table,
       c.oid = any (e.extconfig) as dumped_by_pg_dump
  from pg_class c, pg_extension e
 where e.extname = 'vital_tenancy' and c.relnamespace = 'vital_tenancy'::regnamespace and c.relkind = 'r'
 order by c.relname;

-- Ordinary roles can use the schema; ensure_tenants is for DBAs only.
select has_schema_privilege('authenticated', 'vital_tenancy', 'USAGE') as public_usage,
       has_function_privilege('authenticated', 'vital_tenancy.platform_tenant_id()', 'EXECUTE') as ids_callable,
       has_function_privilege('authenticated', 'vital_tenancy.ensure_tenants(text, jsonb)', 'EXECUTE') as ensure_callable;

-- The tenant ids are constants the planner folds.
select vital_tenancy.platform_tenant_id(), vital_tenancy.digital_health_tenant_id(), vital_tenancy.pharma_tenant_id();
explain (costs off) select count(*) from public.agents a where a.id = vital_tenancy.platform_tenant_id();

-- DROP EXTENSION removes only the extension: the tenants it created and the
-- application's data stay.
select * from vital_tenancy.ensure_tenants('public.tenants', '{"type": "industry"}') where action = 'created';
drop extension vital_tenancy;
-- The schema went with it.
select count(*) as schemas_left from pg_namespace where nspname = 'vital_tenancy';
select count(*) as tenants from public.tenants;
select count(*) as agents from public.agents;
select count(*) as prompts from public.prompts;

-- A schema of that name that is not the extension's (the empty one DROP EXTENSION of
-- 0.1.0 leaves) stops CREATE EXTENSION with a hint; nothing is created.
create schema vital_tenancy;
create extension vital_tenancy;
select count(*) as extensions from pg_extension where extname = 'vital_tenancy';
-- Restoring a 0.1.0 database's dump (CREATE SCHEMA vital_tenancy; CREATE EXTENSION
-- vital_tenancy WITH SCHEMA vital_tenancy) installs into that schema, as 0.1.0 did,
-- and DROP EXTENSION then leaves it, empty.
create extension vital_tenancy schema vital_tenancy;
select extnamespace::regnamespace, vital_tenancy.platform_tenant_id()
  from pg_extension where extname = 'vital_tenancy';
drop extension vital_tenancy;
select (select count(*) from pg_class where relnamespace = 'vital_tenancy'::regnamespace) as relations_left,
       (select count(*) from pg_proc where pronamespace = 'vital_tenancy'::regnamespace) as functions_left;
drop schema vital_tenancy;
rollback;
