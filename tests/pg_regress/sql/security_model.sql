-- What PostgreSQL row-level security cannot hide, checked: each hazard of the README's
-- "Security model" table, as an ordinary role in Digital Health's context, next to
-- 100 rows of Pharmaceuticals it cannot see. (Pooled-connection leftovers: see the
-- e2e pool tests.)
\set ON_ERROR_ROLLBACK on
\set SHOW_CONTEXT never
begin;
create extension vital_tenancy;
select count(*) from vital_tenancy.ensure_tenants('public.tenants', '{"type": "industry"}');
create table public.vt_secrets (id int primary key, tenant_id uuid not null references public.tenants (id), body text);
insert into public.vt_secrets
select g, case when g = 1 then vital_tenancy.digital_health_tenant_id() else vital_tenancy.pharma_tenant_id() end,
       case when g = 1 then 'dh note' else 'pharma secret ' || g end
  from generate_series(1, 101) g;
select count(*) > 0 as enabled from vital_tenancy.enable_tenant_rls('public.vt_secrets');
analyze public.vt_secrets;
create role vt_sm_app;
grant select, update on public.vt_secrets to vt_sm_app;
-- The trusted session chooses the tenant, then switches to the application role.
select vital_tenancy.set_tenant(vital_tenancy.digital_health_tenant_id()) is not null as in_digital_health;
set local role vt_sm_app;
select count(*) as visible from public.vt_secrets;

-- 1. EXPLAIN ANALYZE counts the rows the policy removed. Closed here: refused for a
--    role under row level security (vital_tenancy.restrict_explain_analyze, on by
--    default), also through a view, a sub-select or a prepared statement; plain EXPLAIN
--    and statements on other tables are not.
set local enable_indexscan = off;
set local enable_bitmapscan = off;
explain (analyze, costs off, timing off, summary off, buffers off) select * from public.vt_secrets;
\echo :LAST_ERROR_SQLSTATE
explain (analyze, costs off, timing off, summary off, buffers off) select 1 where exists (select 1 from public.vt_secrets where body >= 'pharma');
\echo :LAST_ERROR_SQLSTATE
prepare vt_sm_p as select count(*) from public.vt_secrets;
explain (analyze, costs off, timing off, summary off, buffers off) execute vt_sm_p;
\echo :LAST_ERROR_SQLSTATE
explain (costs off) select * from public.vt_secrets;
explain (analyze, costs off, timing off, summary off, buffers off) select 1 as unrelated;
set local vital_tenancy.restrict_explain_analyze = off;
\echo :LAST_ERROR_SQLSTATE
-- What it hides: with the option off (a superuser's choice), 100 invisible rows show up.
reset role;
set local vital_tenancy.restrict_explain_analyze = off;
set local role vt_sm_app;
explain (analyze, costs off, timing off, summary off, buffers off) select * from public.vt_secrets;
reset role;
reset vital_tenancy.restrict_explain_analyze;
set local role vt_sm_app;
reset enable_indexscan;
reset enable_bitmapscan;

-- 2. Planner statistics: pg_class.reltuples (and EXPLAIN estimates, PostgREST's
--    Prefer: count=planned/estimated) count every tenant's rows.
select reltuples::int as reltuples_all_tenants from pg_class where oid = 'public.vt_secrets'::regclass;

-- 3. Closed by PostgreSQL: pg_stats hides the column statistics (most common values)
--    of a table under row level security from roles that do not bypass it.
select count(*) as pg_stats_rows from pg_stats where tablename = 'vt_secrets';

-- 4. LOCK TABLE needs only UPDATE: a tenant role can stall every tenant's queries
--    (set lock_timeout / statement_timeout for application roles).
lock table public.vt_secrets in access exclusive mode;
\echo :SQLSTATE

-- 5. Closed here: the policy shape gives no error-vs-empty oracle and no constant-true
--    policy (see context_rls); a bad context reads nothing.
select set_config('request.headers', '{"x-tenant-id": "not-a-uuid"}', true) is not null as bad_header,
       vital_tenancy.set_tenant(null) is null as cleared;
select count(*) as with_a_bad_context from public.vt_secrets where body >= 'pharma' and body < 'pharmb';
reset role;
rollback;
