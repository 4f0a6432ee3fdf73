-- The census of 0.2.0 (../shared/findings/census-2026-12-02.md), the defects that a
-- single transaction shows: each refused with a fitting SQLSTATE, naming the culprit,
-- before anything is written. (Backfills, which commit, and the concurrent ones are in
-- pgrx-tests/tests/census.rs.)
\set ON_ERROR_ROLLBACK on
\set SHOW_CONTEXT never
\set VERBOSITY default
begin;
create extension vital_tenancy;
select count(*) from vital_tenancy.ensure_tenants('public.tenants', '{"type": "industry"}');
create schema fz;
create table fz.plain (id int primary key, name text);
create index plain_name_idx on fz.plain (name);
create type fz.typ as (a int);
create view fz.v as select * from fz.plain;
create sequence fz.seq;

-- N03: a declared reference is between tables, not an index, a composite type, a view
-- or a sequence (each stopped every check that reads declared references).
select vital_tenancy.declare_reference('fz.plain_name_idx', 'name', 'public.agents', array['name']);
\echo :LAST_ERROR_SQLSTATE
select vital_tenancy.declare_reference('fz.typ', 'a', 'public.agents', array['name']);
\echo :LAST_ERROR_SQLSTATE
select vital_tenancy.declare_reference('fz.plain', 'name', 'fz.v', array['name']);
\echo :LAST_ERROR_SQLSTATE
select vital_tenancy.declare_reference('fz.plain', 'name', 'fz.seq', array['last_value']);
\echo :LAST_ERROR_SQLSTATE
-- A declaration 0.2.0 accepted on an index is not read: the checks still run.
insert into vital_tenancy.declared_references values ('fz.plain_name_idx', 'name', 'public.agents', array['name']);
select count(*) >= 0 as orphan_check_runs from vital_tenancy.orphaned_references();
select jsonb_typeof(vital_tenancy.health()) as health;
delete from vital_tenancy.declared_references;

-- N04: a parent whose tenant column is not uuid, refused by the plan (before the
-- backfill adds a column or records a run).
create table fz.par (id int primary key, name text, tenant_id text);
create table fz.ch (id int primary key, name text);
select vital_tenancy.backfill_plan('fz.ch', 'parent', '{"column": "name", "parent": "fz.par", "match": ["name"]}');
\echo :LAST_ERROR_SQLSTATE

-- N07: column names are exact (as %I quotes them); one of blanks only is refused.
select step from vital_tenancy.add_tenant_column('fz.plain', ' ');
\echo :LAST_ERROR_SQLSTATE
select step from vital_tenancy.add_tenant_column('fz.plain', E'\t\n ');
\echo :LAST_ERROR_SQLSTATE
select * from vital_tenancy.backfill_plan('fz.plain', 'platform', tenant_column => ' ');
\echo :LAST_ERROR_SQLSTATE

-- N08: finish_run of a run nobody started.
select vital_tenancy.finish_run('no-such-run');
\echo :LAST_ERROR_SQLSTATE
select vital_tenancy.finish_run('');
\echo :LAST_ERROR_SQLSTATE

-- N09: an option the classifier does not read (a typo ran without its fallback).
select vital_tenancy.backfill_plan('fz.plain', 'parent', '{"column": "name", "parent": "public.agents", "match": ["name"], "fallbak": "11111111-1111-1111-1111-111111111111"}');
\echo :LAST_ERROR_SQLSTATE
select vital_tenancy.backfill_plan('fz.plain', 'tenant', '{"tenant": "11111111-1111-1111-1111-111111111111", "tennant": 1}');
\echo :LAST_ERROR_SQLSTATE
select vital_tenancy.backfill_plan('fz.plain', 'platform', '{"unknown": 1}');
\echo :LAST_ERROR_SQLSTATE

-- N10: a status column holds words; an id or a number would give every tenant no access.
select vital_tenancy.set_status_column('id');
\echo :LAST_ERROR_SQLSTATE
select vital_tenancy.set_status_column('name');
\echo :LAST_ERROR_SQLSTATE
select vital_tenancy.set_status_column(null);

-- N11: rule sets are bounded (54000), by rules and by bytes.
select vital_tenancy.set_rules('prompt', jsonb_build_object(
         'rules', (select jsonb_agg(jsonb_build_object('name', 'r' || g, 'tenant', '00000000-0000-0000-0000-000000000001',
                                                       'name_contains', jsonb_build_array('x' || g)))
                     from generate_series(1, 1001) g),
         'default_tenant', '00000000-0000-0000-0000-000000000001'));
\echo :LAST_ERROR_SQLSTATE
insert into vital_tenancy.classification_rules (kind, rules)
select 'agent', jsonb_build_object('rules', '[]'::jsonb, 'default_tenant', repeat('x', 1100000));
\echo :LAST_ERROR_SQLSTATE

-- N12: the fingerprint of a table's policies, and the backfill's helpers, for an OID no
-- table has (they returned md5 of nothing, a row of NULLs, or journaled under it).
select vital_tenancy.policy_fingerprint(0::oid::regclass);
\echo :LAST_ERROR_SQLSTATE
select vital_tenancy.policy_fingerprint(4294967295::oid::regclass);
\echo :LAST_ERROR_SQLSTATE
select vital_tenancy.policy_fingerprint('fz.plain_name_idx');
\echo :LAST_ERROR_SQLSTATE
select vital_tenancy.policy_fingerprint('fz.plain') = md5('') as no_policies;
select * from vital_tenancy.backfill_step(1, 0::oid::regclass, 'tenant_id');
\echo :LAST_ERROR_SQLSTATE
select * from vital_tenancy.backfill_step(1, 'fz.plain', 'tenant_id');
\echo :LAST_ERROR_SQLSTATE
select * from vital_tenancy.backfill_run_batch('select 1, 1, 1, 1', 0::oid::regclass, 1, null, null, null, 10, 10);
\echo :LAST_ERROR_SQLSTATE
select * from vital_tenancy.backfill_run_batch('select 1, 1, 1, 1', 'fz.plain', null, null, null, null, 10, 10);
\echo :LAST_ERROR_SQLSTATE
select * from vital_tenancy.backfill_run_batch('select 1, 1, 1, 1', 'fz.plain', 424242, null, null, null, 10, 10);
\echo :LAST_ERROR_SQLSTATE
select count(*) as journaled from vital_tenancy.migration_journal_batches;

-- N14: a uuid with spaces around it is malformed in the tenant context, as in
-- PostgreSQL's uuid input.
select set_config('vital.tenant_id', ' 00000000-0000-0000-0000-000000000001', true);
select vital_tenancy.current_tenant_id();
\echo :LAST_ERROR_SQLSTATE
select set_config('vital.tenant_id', '', true);
select set_config('request.jwt.claims', '{"tenant_id": "11111111-1111-1111-1111-111111111111 "}', true);
select vital_tenancy.current_tenant_id();
\echo :LAST_ERROR_SQLSTATE
-- N15: valid JSON holding a number double precision cannot hold.
select set_config('request.jwt.claims', '{"tenant_id": 1e400}', true);
select vital_tenancy.current_tenant_id();
\echo :LAST_ERROR_SQLSTATE
select set_config('request.jwt.claims', '', true);

-- N15: messages that name the culprit, before anything runs.
select * from vital_tenancy.backfill_batches('fz.plain', null);
\echo :LAST_ERROR_SQLSTATE
select vital_tenancy.run_ddl('ALTER TABLE fz.plain ADD COLUMN zz int', null, 'fz.plain');
\echo :LAST_ERROR_SQLSTATE
select count(*) as zz_added from pg_attribute where attrelid = 'fz.plain'::regclass and attname = 'zz';
select * from vital_tenancy.backfill_majority('fz.plain', '{}', true);
\echo :LAST_ERROR_SQLSTATE
select vital_tenancy.backfill_batch_sql('{}', 'queue', null, true, true, false);
\echo :LAST_ERROR_SQLSTATE
select * from vital_tenancy.ensure_tenants('pg_temp.fz_tmp', '{}');
\echo :LAST_ERROR_SQLSTATE

-- Item 6 of the bad-input issue: lock limits bounded, the bound named.
select * from vital_tenancy.add_tenant_column('fz.plain', lock_timeout_ms => 2147483647);
\echo :LAST_ERROR_SQLSTATE
select * from vital_tenancy.apply_tenant_keys(retries => 1000);
\echo :LAST_ERROR_SQLSTATE
select * from vital_tenancy.prepare_for_citus(lock_timeout_ms => 0);
\echo :LAST_ERROR_SQLSTATE
select vital_tenancy.run_ddl('select 1', 'x', 'fz.plain', 2000, 101);
\echo :LAST_ERROR_SQLSTATE
-- Item 4 of the bad-input issue: a dropped table's records go with it (an event
-- trigger on sql_drop), so a later table that gets its OID is not taken for it.
create table fz.gone (id int primary key, name text, tenant_id uuid references public.tenants (id));
select count(*) > 0 as enabled from vital_tenancy.enable_tenant_rls('fz.gone');
select vital_tenancy.declare_reference('fz.gone', 'name', 'public.agents', array['name']);
select vital_tenancy.declare_reference('fz.plain', 'name', 'fz.gone', array['name']);
insert into vital_tenancy.migration_runs (run_id, name) values (-1, 'census-gone');
insert into vital_tenancy.migration_steps (run_id, tbl, tenant_column, classifier) values (-1, 'fz.gone', 'tenant_id', 'platform');
select vital_tenancy.declare_reference('fz.plain', 'id', 'public.agents', array['name']);
create temp table gone_oid as select 'fz.gone'::regclass::oid as oid;
drop table fz.gone;
select (select count(*) from vital_tenancy.rls_tables r, gone_oid g where r.tbl::oid = g.oid) as rls_rows,
       (select count(*) from vital_tenancy.declared_references d, gone_oid g where g.oid in (d.child::oid, d.parent::oid)) as declared_rows,
       (select dropped_at is not null from vital_tenancy.migration_steps where run_id = -1) as step_marked_dropped;
update vital_tenancy.migration_runs set status = 'completed' where run_id = -1;
set local client_min_messages = warning;
select table_name like '(dropped table %)' as reported_dropped, reverted from vital_tenancy.revert_run(-1);
reset client_min_messages;
-- Dropping other objects (a view, an index) leaves the records alone.
drop view fz.v;
drop index fz.plain_name_idx;
select count(*) as declared_left from vital_tenancy.declared_references;
-- DROP EXTENSION is not stopped by its own event trigger.
set local client_min_messages = warning;
drop extension vital_tenancy cascade;
reset client_min_messages;
select count(*) as extension_left from pg_extension where extname = 'vital_tenancy';
rollback;
