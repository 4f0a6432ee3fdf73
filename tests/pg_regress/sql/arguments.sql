-- Arguments the SQL interface refuses with a fitting SQLSTATE and a message naming
-- them, and tables it must not mistake for tenant tables (findings F06, F07, F09, F11).
\set ON_ERROR_ROLLBACK on
\set SHOW_CONTEXT never
begin;
create extension vital_tenancy;
select count(*) from vital_tenancy.ensure_tenants('public.tenants', '{"type": "industry"}');
select step from vital_tenancy.add_tenant_column('public.prompts', default_tenant => vital_tenancy.platform_tenant_id())
 where step like 'add column%';

-- F09: a NULL element of a text[] argument (22004), not an internal error.
select * from vital_tenancy.validate(array[null]::text[]);
\echo :LAST_ERROR_SQLSTATE
select * from vital_tenancy.tenant_distribution(array['public', null]);
\echo :LAST_ERROR_SQLSTATE
select * from vital_tenancy.duplicates('public.prompts', array['name', null]);
\echo :LAST_ERROR_SQLSTATE
select * from vital_tenancy.snapshot_counts('x', array[null]::text[]);
\echo :LAST_ERROR_SQLSTATE
select vital_tenancy.declare_reference('public.messages', 'agent_id', 'public.agents', array[null]::text[]);
\echo :LAST_ERROR_SQLSTATE

-- F10: a regclass that names no relation (a dropped table's stored OID, or 0).
select * from vital_tenancy.enable_tenant_rls(4000000000::oid::regclass);
\echo :LAST_ERROR_SQLSTATE
select * from vital_tenancy.preview_classification('prompt', 0::oid::regclass);
\echo :LAST_ERROR_SQLSTATE
select vital_tenancy.declare_reference('public.messages', 'agent_id', 0::oid::regclass);
\echo :LAST_ERROR_SQLSTATE

-- F08: valid jsonb that serde_json cannot hold: an argument is refused with a fitting
-- SQLSTATE; a table row holding it is exported as it is.
select vital_tenancy.classify_prompt_tenant(('{"x":' || repeat('[', 200) || repeat(']', 200) || '}')::jsonb);
\echo :LAST_ERROR_SQLSTATE
select vital_tenancy.set_rules('agent', '{"rules": [{"name": "t", "tenant": "00000000-0000-0000-0000-000000000001", "tier_in": [1e400]}], "default_tenant": "11111111-1111-1111-1111-111111111111"}');
\echo :LAST_ERROR_SQLSTATE
select * from vital_tenancy.ensure_tenants('public.tenants', ('{"type": ' || repeat('[', 200) || repeat(']', 200) || '}')::jsonb);
\echo :LAST_ERROR_SQLSTATE
create schema fzj;
create table fzj.weird (id int primary key, tenant_id uuid, payload jsonb, n numeric);
insert into fzj.weird values (1, vital_tenancy.platform_tenant_id(), (repeat('[', 300) || repeat(']', 300))::jsonb, 1e400);
select table_name, (row -> 'payload') = (select payload from fzj.weird) as payload_intact,
       (row ->> 'n') = (select n::text from fzj.weird) as number_intact
  from vital_tenancy.export_tenant(vital_tenancy.platform_tenant_id(), array['fzj']);

-- F11: export_tenant(NULL).
select * from vital_tenancy.export_tenant(null);
\echo :LAST_ERROR_SQLSTATE

-- F06: a schema list that leaves nothing to validate is an error, not "all passed",
-- with an orphan tenant id planted.
alter table public.prompts disable trigger all;
update public.prompts set tenant_id = '99999999-9999-9999-9999-999999999999'
 where id = (select id from public.prompts order by id limit 1);
alter table public.prompts enable trigger all;
select * from vital_tenancy.validate('{}');
\echo :LAST_ERROR_SQLSTATE
select vital_tenancy.assert_valid(array['vital_tenancy', 'pg_catalog']);
\echo :LAST_ERROR_SQLSTATE
select check_name, table_name, failing from vital_tenancy.validate(array['public'])
 where check_name = 'orphaned_tenant_refs' and failing > 0;

-- F07: a column named tenant_id that is not a uuid makes that table no tenant table;
-- everything else keeps working, and validate names the table.
create schema fz;
create table fz.texttenant (id int primary key, name text, tenant_id text);
insert into fz.texttenant values (1, 'a', 'not a uuid');
select (vital_tenancy.health() ->> 'status') is not null as health_works;
select count(*) > 0 as exported from vital_tenancy.export_tenant(vital_tenancy.platform_tenant_id());
select table_name from vital_tenancy.tenant_id_coverage() where table_name like 'fz.%';
select check_name, severity, table_name, failing, detail from vital_tenancy.validate()
 where check_name = 'tenant_column_type';
select count(*) >= 0 as readiness_works from vital_tenancy.citus_readiness();

-- F12, F19, issue 16: a name longer than 63 bytes is cut as PostgreSQL cuts every
-- identifier it reads (with its NOTICE 42622), so the long name finds what PostgreSQL
-- made of it: backfill_plan finds the column add_tenant_column added, a second
-- add_tenant_column adds nothing, ensure_tenants' table is the one regclass input
-- names. An empty name is refused.
select step from vital_tenancy.add_tenant_column('fz.texttenant', repeat('c', 64));
select step from vital_tenancy.add_tenant_column('fz.texttenant', repeat('c', 64));
select count(*) as cut_to_63 from pg_attribute
 where attrelid = 'fz.texttenant'::regclass and attname = repeat('c', 63);
select vital_tenancy.backfill_plan('fz.texttenant', 'platform', '{}', repeat('c', 64)) ->> 'column_exists' as found;
select * from vital_tenancy.add_tenant_column('fz.texttenant', '');
\echo :LAST_ERROR_SQLSTATE
select count(*) as created from vital_tenancy.ensure_tenants('fz.' || repeat('t', 64), '{}') where action = 'created';
select count(*) as created_again from vital_tenancy.ensure_tenants('fz.' || repeat('t', 64), '{}') where action = 'created';
select vital_tenancy.tenants_table() = ('fz.' || repeat('t', 64))::regclass as same_table;
-- PostgreSQL folds only ASCII letters in a UTF-8 database: unquoted fz.<A-umlaut>RZTE is
-- the table "<A-umlaut>rzte", which the registry then is (U& escapes keep this file ASCII).
select count(*) as created from vital_tenancy.ensure_tenants(U&'fz.\00C4RZTE', '{}') where action = 'created';
select vital_tenancy.tenants_table() = to_regclass(U&'fz."\00C4rzte"') as unquoted_non_ascii_kept;
-- F29: a column of the wrong type or none, named.
select * from vital_tenancy.tenant_distribution_of('fz.texttenant', 'name');
\echo :LAST_ERROR_SQLSTATE
select * from vital_tenancy.tenant_distribution_of('fz.texttenant', 'nope');
\echo :LAST_ERROR_SQLSTATE
select * from vital_tenancy.backfill_batches(null, 10);
\echo :LAST_ERROR_SQLSTATE
call vital_tenancy.backfill('fz.texttenant', null);
\echo :LAST_ERROR_SQLSTATE
call vital_tenancy.backfill('fz.texttenant', 'platform', run_name => null);
\echo :LAST_ERROR_SQLSTATE
call vital_tenancy.backfill('fz.texttenant', 'platform', catch_up => null);
\echo :LAST_ERROR_SQLSTATE

-- F29: a label or run name too long to index; duplicates() over more than 50 columns.
select * from vital_tenancy.snapshot_counts(repeat('l', 1001));
\echo :LAST_ERROR_SQLSTATE
call vital_tenancy.backfill('fz.texttenant', 'platform', run_name => repeat('r', 1001));
\echo :LAST_ERROR_SQLSTATE
select count(*) from vital_tenancy.duplicates('public.prompts', (select array_agg('name'::text) from generate_series(1, 101)));

-- F20: a tenant index for a table with a 63-byte name keeps its suffix.
create table fz.aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa (id int primary key, tenant_id uuid);
select action from vital_tenancy.enable_tenant_rls('fz.aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa')
 where action like '%index%';

-- F21: batches of one row count each row once.
create table fz.ten (id int primary key, tenant_id uuid);
insert into fz.ten select g, null from generate_series(1, 10) g;
select rows_todo, cardinality(bounds) as batches from vital_tenancy.backfill_batches('fz.ten', 1);

-- F22: a run's report takes only its own metrics (not those of a run whose name
-- matches it as a LIKE pattern or a prefix).
insert into vital_tenancy.migration_runs (name) values ('fz_a');
insert into vital_tenancy.migration_metrics (migration_name, phase) values ('fzXa2:public.other', 'backfill'), ('fz_a2:public.other', 'backfill');
select position('fzXa2' in vital_tenancy.migration_report('fz_a')) > 0 as other_run_included,
       position('fz_a2' in vital_tenancy.migration_report('fz_a')) > 0 as prefix_run_included;

-- F28: a partitioned table takes the online path too; its foreign key (which
-- PostgreSQL 15 cannot add NOT VALID there) comes when the column is enforced.
create table fz.parted (id int, tenant_id uuid, primary key (id)) partition by range (id);
create table fz.parted_1 partition of fz.parted for values from (0) to (100);
insert into fz.parted select g, vital_tenancy.platform_tenant_id() from generate_series(1, 10) g;
select step, ddl from vital_tenancy.add_tenant_column('fz.parted');
select step from vital_tenancy.enforce_tenant_column('fz.parted');
select conname, convalidated from pg_constraint where conrelid = 'fz.parted'::regclass and contype = 'f';

-- F26: index_advice keeps to its schema filter.
select count(*) from vital_tenancy.index_advice(array['fz']) where table_name like 'public.%';

-- F23: SQL built from catalog names reads the same with standard_conforming_strings off.
create table fz."back\slash" (id int primary key, "col\" text, tenant_id uuid);
set local standard_conforming_strings = off;
set local escape_string_warning = off;
select count(*) from vital_tenancy.duplicates('fz."back\\slash"', array['col\\']);
set local standard_conforming_strings = on;

-- F13: the rules trigger is not for calling, nor for other tables.
create table fz.plain (id int primary key, kind text, rules jsonb);
create trigger t before insert on fz.plain for each row execute function vital_tenancy.classification_rules_trigger();
insert into fz.plain values (1, 'prompt', '{}');
\echo :LAST_ERROR_SQLSTATE
select has_function_privilege('public', 'vital_tenancy.classification_rules_trigger()', 'execute') as public_may_call;
select vital_tenancy.classification_rules_trigger();
\echo :LAST_ERROR_SQLSTATE

-- F29: revert_run of a run whose table was dropped since reverts the rest.
create table fz.gone (id int primary key, tenant_id uuid);
insert into vital_tenancy.migration_runs (name, status) values ('fz_gone', 'completed');
insert into vital_tenancy.migration_steps (run_id, tbl, tenant_column, classifier)
select run_id, 'fz.gone'::regclass, 'tenant_id', 'platform' from vital_tenancy.migration_runs where name = 'fz_gone';
drop table fz.gone;
set local client_min_messages = warning;
select table_name like '(dropped table %)' as dropped, reverted
  from vital_tenancy.revert_run((select run_id from vital_tenancy.migration_runs where name = 'fz_gone'));
set local client_min_messages = notice;

-- F18: export_tenant read through a cursor whose first rows were fetched in a savepoint
-- that is rolled back: its portal is gone, and the export says so (no internal error,
-- no garbage rows).
declare c cursor for select vital_tenancy.export_tenant(vital_tenancy.platform_tenant_id());
savepoint s;
move 1 in c;
rollback to savepoint s;
\set VERBOSITY terse
move 3000 in c;
\echo :LAST_ERROR_SQLSTATE
\set VERBOSITY default

-- F33: a tenant-context setting that is JSON but no object says so.
set local request.jwt.claims = '[]';
select vital_tenancy.current_tenant_id();
\echo :LAST_ERROR_SQLSTATE
rollback;
