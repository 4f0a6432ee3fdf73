-- ensure_tenants() on the real VITAL fixture (loaded into this database before the run):
-- it has Platform and Digital Health but not Pharmaceuticals, and its tenants table
-- requires a "type" column with a CHECK.
\set ON_ERROR_ROLLBACK on
\set SHOW_CONTEXT never
begin;
create extension vital_tenancy;

select id, name, slug, type from public.tenants order by id;

-- Without extra, the third tenant cannot be created: "type" is NOT NULL without default.
select * from vital_tenancy.ensure_tenants('public.tenants');
\echo :LAST_ERROR_SQLSTATE

-- A value the CHECK refuses is named with its column.
select * from vital_tenancy.ensure_tenants('public.tenants', '{"type": "pharma"}');
\echo :LAST_ERROR_SQLSTATE

-- Nothing was changed by the failed calls.
select count(*) from public.tenants;

-- The documented call: creates Pharmaceuticals, keeps the two existing rows as they are.
select * from vital_tenancy.ensure_tenants('public.tenants', '{"type": "industry"}');
select id, name, slug, type from public.tenants order by id;

-- Second run: a no-op.
select * from vital_tenancy.ensure_tenants('public.tenants', '{"type": "industry"}');
select count(*) from public.tenants;
select vital_tenancy.tenants_table();

-- Per-tenant extra, keyed by slug, on a table the function creates itself.
create schema app2;
select * from vital_tenancy.ensure_tenants('app2.tenants', '{"pharmaceuticals": {"settings": {"region": "eu"}}}');
select slug, settings from app2.tenants order by slug;
\d app2.tenants

-- Bad input: every one an ERROR with its SQLSTATE, naming the culprit.
select * from vital_tenancy.ensure_tenants('tenants');
\echo :LAST_ERROR_SQLSTATE
select * from vital_tenancy.ensure_tenants('a.b.c');
\echo :LAST_ERROR_SQLSTATE
select * from vital_tenancy.ensure_tenants(NULL);
\echo :LAST_ERROR_SQLSTATE
select * from vital_tenancy.ensure_tenants('no_such_schema.tenants');
\echo :LAST_ERROR_SQLSTATE
create table app2.no_slug (id uuid primary key, name text);
select * from vital_tenancy.ensure_tenants('app2.no_slug');
\echo :LAST_ERROR_SQLSTATE
create table app2.int_id (id int primary key, name text, slug text);
select * from vital_tenancy.ensure_tenants('app2.int_id');
\echo :LAST_ERROR_SQLSTATE
create view app2.tenants_view as select * from app2.tenants;
select * from vital_tenancy.ensure_tenants('app2.tenants_view');
\echo :LAST_ERROR_SQLSTATE
select * from vital_tenancy.ensure_tenants('public.tenants', '[1, 2]');
\echo :LAST_ERROR_SQLSTATE
select * from vital_tenancy.ensure_tenants('public.tenants', '{"id": "x"}');
\echo :LAST_ERROR_SQLSTATE
select * from vital_tenancy.ensure_tenants('public.tenants', '{"no_such_column": 1}');
\echo :LAST_ERROR_SQLSTATE
select * from vital_tenancy.ensure_tenants('public.tenants', '{"platform": "x"}');
\echo :LAST_ERROR_SQLSTATE
-- A slug already used by another id.
create table app2.taken (id uuid primary key, name text not null, slug text unique not null);
insert into app2.taken values ('22222222-2222-2222-2222-222222222222', 'Other', 'pharmaceuticals');
select * from vital_tenancy.ensure_tenants('app2.taken');
\echo :LAST_ERROR_SQLSTATE
select count(*) from app2.taken;
rollback;
