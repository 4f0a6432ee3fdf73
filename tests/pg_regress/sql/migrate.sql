-- The migration toolkit's SQL interface on the real fixture: plans, counts, online
-- column steps, and every bad input with its SQLSTATE. (The batched backfill procedure
-- commits, so it cannot run inside this test's transaction: the e2e tests run it.)
\set ON_ERROR_ROLLBACK on
\set SHOW_CONTEXT never
begin;
create extension vital_tenancy;
select count(*) from vital_tenancy.ensure_tenants('public.tenants', '{"type": "industry"}');

-- Online column steps; the index comes back as a statement for \gexec.
select step, ddl from vital_tenancy.add_tenant_column('public.prompts');
select step from vital_tenancy.add_tenant_column('public.prompts');
select attnotnull, (select convalidated from pg_constraint where conname = 'prompts_tenant_id_vt_fk') as fk_valid
  from pg_attribute where attrelid = 'public.prompts'::regclass and attname = 'tenant_id';

-- A column added with a default tenant: every existing row has it from the catalog
-- (attmissingval: no row rewritten, the table keeps its file), the default itself is
-- gone (a row inserted later arrives without a tenant).
select pg_relation_filenode('public.knowledge_domains') as filenode \gset
select step from vital_tenancy.add_tenant_column('public.knowledge_domains',
                                                 default_tenant => '{00000000-0000-0000-0000-000000000001}');
select atthasmissing, atthasdef, attmissingval::text
  from pg_attribute where attrelid = 'public.knowledge_domains'::regclass and attname = 'tenant_id';
select pg_relation_filenode('public.knowledge_domains') = :filenode as not_rewritten,
       count(*) filter (where tenant_id = vital_tenancy.platform_tenant_id()) = count(*) as all_platform
  from public.knowledge_domains;
insert into public.knowledge_domains (code, name, slug) values ('NEW', 'New domain', 'new-domain') returning tenant_id;
-- On a column that exists, the default does not apply (the rows keep their values).
select step from vital_tenancy.add_tenant_column('public.knowledge_domains',
                                                 default_tenant => '11111111-1111-1111-1111-111111111111');
-- A default tenant that is not a tenant, or no uuid PostgreSQL would accept.
select * from vital_tenancy.add_tenant_column('public.tool_categories', default_tenant => '99999999-9999-9999-9999-999999999999');
\echo :LAST_ERROR_SQLSTATE
select attname from pg_attribute where attrelid = 'public.tool_categories'::regclass and attname = 'tenant_id';

-- What a backfill would run; before the column exists the plan says so.
select vital_tenancy.backfill_plan('public.tools', 'tool') - 'table' - 'pk' - 'pk_type' as tool_plan_without_column;
select vital_tenancy.backfill_plan('public.prompts', 'prompt') ->> 'expression' as prompt_expression;
select count(*) as steps from vital_tenancy.add_tenant_column('public.messages');
select count(*) as steps from vital_tenancy.add_tenant_column('public.agents');
select vital_tenancy.backfill_plan('public.agents', 'agent') ->> 'expression' as agent_expression;
select vital_tenancy.backfill_plan('public.messages', 'parent',
         '{"column": "agent_id", "parent": "public.agents", "match": ["id", "name"], "private": true,
           "fallback": "11111111-1111-1111-1111-111111111111"}') ->> 'expression' as message_expression;

-- The batches a backfill walks: the key ending every 100th row without a tenant,
-- then the table's highest key (for the rest, and rows appended meanwhile).
select b.rows_todo, cardinality(b.bounds) as batches,
       b.bounds = (select array_agg(s.id::text order by s.id)
                     from (select id, row_number() over (order by id) as rn from public.prompts) s
                    where s.rn % 100 = 0)
                  || (select id::text from public.prompts order by id desc limit 1) as every_100th_then_highest
  from vital_tenancy.backfill_batches('public.prompts', 100) b;
select rows_todo, bounds = array[(select id::text from public.prompts order by id desc limit 1)] as one_batch
  from vital_tenancy.backfill_batches('public.prompts');

-- Fill by hand, then enforce NOT NULL the online way.
update public.prompts set tenant_id = vital_tenancy.classify_prompt_tenant(name, domain, created_by, null);
-- A few rows left to do (as in a catch-up pass): the same bounds, read another way.
update public.prompts set tenant_id = null where id in (select id from public.prompts order by id offset 500 limit 7);
select b.rows_todo,
       b.bounds = (select array_agg(s.id::text order by s.id)
                     from (select id, row_number() over (order by id) as rn from public.prompts where tenant_id is null) s
                    where s.rn % 3 = 0)
                  || (select id::text from public.prompts order by id desc limit 1) as every_3rd_then_highest
  from vital_tenancy.backfill_batches('public.prompts', 3) b;
update public.prompts set tenant_id = vital_tenancy.classify_prompt_tenant(name, domain, created_by, null) where tenant_id is null;
select * from vital_tenancy.backfill_batches('public.prompts');
select rows_todo, cardinality(bounds) as batches from vital_tenancy.backfill_batches('public.prompts', 1000, only_missing => false);
select step from vital_tenancy.enforce_tenant_column('public.prompts');
select attnotnull, (select convalidated from pg_constraint where conname = 'prompts_tenant_id_vt_fk') as fk_valid
  from pg_attribute where attrelid = 'public.prompts'::regclass and attname = 'tenant_id';
select step from vital_tenancy.enforce_tenant_column('public.prompts');
select tbl, step, attempts from vital_tenancy.migration_log order by id;

-- Count snapshots.
select count(*) from vital_tenancy.snapshot_counts('before');
insert into public.tool_categories (name) values ('One more');
select count(*) from vital_tenancy.snapshot_counts('before');
select count(*) from vital_tenancy.snapshot_counts('after');
select * from vital_tenancy.compare_counts('before', 'after') where difference <> 0;

-- Bad input.
select vital_tenancy.backfill_plan('public.prompts', 'nonsense');
\echo :LAST_ERROR_SQLSTATE
select vital_tenancy.backfill_plan('public.prompts', 'tenant', '{"tenant": "x''; drop table prompts; --"}');
\echo :LAST_ERROR_SQLSTATE
select vital_tenancy.backfill_plan('public.tools', 'prompt', tenant_column => 'name');
\echo :LAST_ERROR_SQLSTATE
select vital_tenancy.backfill_plan('public.messages', 'parent', '{"column": "agent_id", "parent": "public.nope"}');
\echo :LAST_ERROR_SQLSTATE
select vital_tenancy.backfill_plan('public.messages', 'parent', '{"column": "nope", "parent": "public.agents"}');
\echo :LAST_ERROR_SQLSTATE
select vital_tenancy.backfill_plan('public.messages', 'parent', '{"column": "agent_id", "parent": "public.tools"}');
\echo :LAST_ERROR_SQLSTATE
select vital_tenancy.backfill_plan('public.prompts', 'prompt', '[]');
\echo :LAST_ERROR_SQLSTATE
-- Tenants named in options must exist (the batches write them with the foreign
-- key's trigger off) and be uuids as PostgreSQL reads them (F04, F14).
select vital_tenancy.backfill_plan('public.prompts', 'tenant', '{"tenant": "99999999-9999-9999-9999-999999999999"}');
\echo :LAST_ERROR_SQLSTATE
select vital_tenancy.backfill_plan('public.messages', 'parent',
         '{"column": "agent_id", "parent": "public.agents", "fallback": "99999999-9999-9999-9999-999999999999"}');
\echo :LAST_ERROR_SQLSTATE
select vital_tenancy.backfill_plan('public.prompts', 'tenant', '{"tenant": "+0000000-0000-0000-0000-000000000001"}');
\echo :LAST_ERROR_SQLSTATE
select vital_tenancy.backfill_plan('public.prompts', 'tenant', '{"tenant": "----00000000000000000000000000000001"}');
\echo :LAST_ERROR_SQLSTATE
select vital_tenancy.backfill_plan('public.prompts', 'tenant', '{"tenant": "{F7AA6FD4-0AF9-4706-8B31-034F1F7ACCDA}"}') ->> 'expression' as braced_upper_case;
select * from vital_tenancy.add_tenant_column(null);
\echo :LAST_ERROR_SQLSTATE
select * from vital_tenancy.add_tenant_column('public.chat_nope');
\echo :LAST_ERROR_SQLSTATE
create view public.vt_view as select * from public.prompts;
select * from vital_tenancy.add_tenant_column('public.vt_view');
\echo :LAST_ERROR_SQLSTATE
select * from vital_tenancy.add_tenant_column('public.tools', 'name');
\echo :LAST_ERROR_SQLSTATE
select * from vital_tenancy.add_tenant_column('public.tools', lock_timeout_ms => 0);
\echo :LAST_ERROR_SQLSTATE
select * from vital_tenancy.enforce_tenant_column('public.tools');
\echo :LAST_ERROR_SQLSTATE
select * from vital_tenancy.snapshot_counts('');
\echo :LAST_ERROR_SQLSTATE
select * from vital_tenancy.snapshot_counts('x', array['no_such_schema']);
\echo :LAST_ERROR_SQLSTATE
select * from vital_tenancy.compare_counts('before', 'never taken');
\echo :LAST_ERROR_SQLSTATE
select * from vital_tenancy.revert_run(424242);
\echo :LAST_ERROR_SQLSTATE
select vital_tenancy.migration_report('no such run');
\echo :LAST_ERROR_SQLSTATE
select * from vital_tenancy.backfill_batches('public.prompts', 0);
\echo :LAST_ERROR_SQLSTATE
select * from vital_tenancy.backfill_batches('public.prompts', 10, 'no_such_column');
\echo :LAST_ERROR_SQLSTATE
call vital_tenancy.backfill('public.prompts', 'prompt', run_name => ' ');
\echo :LAST_ERROR_SQLSTATE
call vital_tenancy.backfill('public.prompts', 'prompt', overwrite => null);
\echo :LAST_ERROR_SQLSTATE
select * from vital_tenancy.backfill_batches('public.prompts', 10, only_missing => null);
\echo :LAST_ERROR_SQLSTATE
select * from vital_tenancy.backfill_batches('public.vt_view');
\echo :LAST_ERROR_SQLSTATE
call vital_tenancy.backfill('public.prompts', 'prompt', batch_size => 0);
\echo :LAST_ERROR_SQLSTATE
-- A tenant column name over 63 bytes is refused before anything is read or written
-- (PostgreSQL would cut it: the backfill looked up one name and added another, census
-- N01), and so are absurd batch sizes and sleeps (a sleep of 24 days between batches).
call vital_tenancy.backfill('public.tools', 'tool', tenant_column => repeat('t', 64));
\echo :LAST_ERROR_SQLSTATE
call vital_tenancy.backfill('public.prompts', 'prompt', sleep_ms => 2147483647);
\echo :LAST_ERROR_SQLSTATE
call vital_tenancy.backfill('public.prompts', 'prompt', batch_size => 2000000);
\echo :LAST_ERROR_SQLSTATE
select count(*) as cut_columns from pg_catalog.pg_attribute where attrelid = 'public.tools'::regclass and attname like 'ttt%';
-- One batch is counted by backfill_run_batch: rows the classifier left without a
-- tenant are the rest of the batch; rows inserted into its range count as walked.
insert into vital_tenancy.migration_runs (run_id, name) values (0, 'batch counts');
select * from vital_tenancy.backfill_run_batch('select 3::bigint, null::bigint, 3::bigint, null::bigint',
                                               'public.prompts', 0, null, null, null, 10, 5);
select * from vital_tenancy.backfill_run_batch('select 4::bigint, 1::bigint, 2::bigint, 7::bigint',
                                               'public.prompts', 0, 'a', 'b', null, 10, 5);
-- A batch that keeps deadlocking is retried ten times, then the error is the caller's.
create function pg_temp.always_deadlocks() returns bigint language plpgsql as
  $$ begin raise exception 'simulated' using errcode = 'deadlock_detected'; end $$;
select * from vital_tenancy.backfill_run_batch('select pg_temp.always_deadlocks(), 0::bigint, 0::bigint, 0::bigint',
                                               'public.prompts', 0, null, null, null, 10, 5);
\echo :LAST_ERROR_SQLSTATE
-- Inside a transaction block a backfill cannot commit per batch: PostgreSQL says so.
call vital_tenancy.backfill('public.agents', 'agent');
\echo :LAST_ERROR_SQLSTATE
rollback;
