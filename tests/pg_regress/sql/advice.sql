-- query_advice() and query_coverage() read the application's statements from
-- pg_stat_statements: without it in the database, a clear error (55000) saying how to
-- get it; health() then measures index coverage from the table statistics. Neither
-- is executable by PUBLIC (the statements' text is the whole workload's).
\set ON_ERROR_ROLLBACK on
\set SHOW_CONTEXT never
begin;
create extension vital_tenancy;
select * from vital_tenancy.query_advice();
\echo :LAST_ERROR_SQLSTATE
select vital_tenancy.query_coverage();
\echo :LAST_ERROR_SQLSTATE
select vital_tenancy.health() -> 'indexes' ->> 'source' as source,
       vital_tenancy.health() -> 'indexes' ->> 'target_percent' as target;
-- Issue 32, item 1: a NULL element of index_coverage()'s text[] is refused (22004).
select vital_tenancy.index_coverage(array[null]::text[]);
\echo :LAST_ERROR_SQLSTATE
create role vt_regress_nobody;
set local role vt_regress_nobody;
select * from vital_tenancy.query_advice();
\echo :LAST_ERROR_SQLSTATE
select vital_tenancy.query_coverage();
\echo :LAST_ERROR_SQLSTATE
reset role;
rollback;
