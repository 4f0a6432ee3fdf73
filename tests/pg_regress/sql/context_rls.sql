-- Tenant context and tenant RLS on the real fixture's messages table (its own
-- policies are USING (true) for everything) and a table without policies.
\set ON_ERROR_ROLLBACK on
\set SHOW_CONTEXT never
begin;
create extension vital_tenancy;
select count(*) from vital_tenancy.ensure_tenants('public.tenants', '{"type": "industry"}');
create role vt_regress_app login;
-- A trusted login role (a backend, PostgREST's authenticator): the sources below are
-- set by it, as they are before a request's role switch (NOINHERIT, like Supabase's authenticator).
create role vt_regress_backend login noinherit;
grant vital_tenancy_context, vt_regress_app, vital_tenancy_service to vt_regress_backend;
create temp view t(id, slug) as select id, slug::text from public.tenants;
grant select on t to vt_regress_app, vt_regress_backend;
-- A superuser has the privileges of vital_tenancy_admin, so sees every tenant.
select vital_tenancy.visible_tenant_ids() = vital_tenancy.all_tenant_ids() as superuser_sees_all;

-- Context sources, in order, as the trusted backend. Nothing set: NULL, nothing visible.
set local session authorization vt_regress_backend;
select vital_tenancy.current_tenant_id() is null as no_context, vital_tenancy.visible_tenant_ids(), vital_tenancy.writable_tenant_ids();
-- 1. vital.tenant_id (set_tenant is transaction-local).
select vital_tenancy.set_tenant(vital_tenancy.pharma_tenant_id()) is not null as set;
select slug, current_setting('vital.tenant_id') from t where id = vital_tenancy.current_tenant_id();
select array_length(vital_tenancy.visible_tenant_ids(), 1) as shared_ids, vital_tenancy.visible_tenant_ids(false) = array[vital_tenancy.pharma_tenant_id()] as own_only;
select vital_tenancy.writable_tenant_ids() = array[vital_tenancy.pharma_tenant_id()] as writes_own_only;
-- 2. tenant_id in request.jwt.claims (when vital.tenant_id is empty).
select set_config('vital.tenant_id', '', true);
set local request.jwt.claims = '{"sub": "aaaaaaaa-0000-4000-8000-000000000001", "tenant_id": "11111111-1111-1111-1111-111111111111"}';
select slug from t where id = vital_tenancy.current_tenant_id();
-- 3. x-tenant-id header: only for members.
set local request.jwt.claims = '{"sub": "aaaaaaaa-0000-4000-8000-000000000001"}';
set local request.headers = '{"x-tenant-id": "f7aa6fd4-0af9-4706-8b31-034f1f7accda"}';
select vital_tenancy.current_tenant_id();
\echo :LAST_ERROR_SQLSTATE
reset session authorization;
insert into vital_tenancy.tenant_members values ('aaaaaaaa-0000-4000-8000-000000000001', 'f7aa6fd4-0af9-4706-8b31-034f1f7accda', 'member');
set local session authorization vt_regress_backend;
select slug from t where id = vital_tenancy.current_tenant_id();
-- A header without an authenticated user.
set local request.jwt.claims = '';
select vital_tenancy.current_tenant_id();
\echo :LAST_ERROR_SQLSTATE
reset request.headers;

-- Another membership table can be configured (uuid user and tenant columns).
reset session authorization;
create table public.org_members (member uuid, org uuid, note text);
select vital_tenancy.set_membership_table('public.org_members', 'nope', 'org');
\echo :LAST_ERROR_SQLSTATE
select vital_tenancy.set_membership_table('public.org_members', 'member', 'note');
\echo :LAST_ERROR_SQLSTATE
create temp table tmp_members (member uuid, org uuid);
select vital_tenancy.set_membership_table('pg_temp.tmp_members', 'member', 'org');
\echo :LAST_ERROR_SQLSTATE
select vital_tenancy.set_membership_table('public.org_members', 'member', 'org');
select value from vital_tenancy.settings where name = 'membership_table';
set local session authorization vt_regress_backend;
set local request.jwt.claims = '{"sub": "aaaaaaaa-0000-4000-8000-000000000001"}';
set local request.headers = '{"x-tenant-id": "f7aa6fd4-0af9-4706-8b31-034f1f7accda"}';
select vital_tenancy.current_tenant_id();
\echo :LAST_ERROR_SQLSTATE
reset session authorization;
insert into public.org_members values ('aaaaaaaa-0000-4000-8000-000000000001', 'f7aa6fd4-0af9-4706-8b31-034f1f7accda');
set local session authorization vt_regress_backend;
select slug from t where id = vital_tenancy.current_tenant_id();
reset session authorization;
-- A bare name stored by an earlier version that resolves to a session's own temp table
-- never decides memberships (no context in policies; 55000 where asked for).
update vital_tenancy.settings set value = 'tmp_members' where name = 'membership_table';
insert into pg_temp.tmp_members values ('aaaaaaaa-0000-4000-8000-000000000001', 'f7aa6fd4-0af9-4706-8b31-034f1f7accda');
set local session authorization vt_regress_backend;
select vital_tenancy.visible_tenant_ids() as via_temp_table;
select vital_tenancy.current_tenant_id();
\echo :LAST_ERROR_SQLSTATE
reset session authorization;
delete from vital_tenancy.settings where name like 'membership%';
set local session authorization vt_regress_backend;
set local request.jwt.claims = '';
reset request.headers;

-- Malformed values: 22P02 naming the source; unknown tenants: 42704.
set local vital.tenant_id = 'not-a-uuid';
select vital_tenancy.current_tenant_id();
\echo :LAST_ERROR_SQLSTATE
set local vital.tenant_id = '99999999-9999-9999-9999-999999999999';
select vital_tenancy.current_tenant_id();
\echo :LAST_ERROR_SQLSTATE
set local vital.tenant_id = '';
set local request.jwt.claims = '{"tenant_id": 42}';
select vital_tenancy.current_tenant_id();
\echo :LAST_ERROR_SQLSTATE
set local request.jwt.claims = '{broken';
select vital_tenancy.current_tenant_id();
\echo :LAST_ERROR_SQLSTATE
set local request.jwt.claims = '';
set local request.headers = '{"x-tenant-id": "123"}';
select vital_tenancy.current_tenant_id();
\echo :LAST_ERROR_SQLSTATE
reset request.headers;
select vital_tenancy.set_tenant('99999999-9999-9999-9999-999999999999');
\echo :LAST_ERROR_SQLSTATE
select vital_tenancy.set_tenant(NULL) is null as cleared, vital_tenancy.current_tenant_id() is null as no_context;

-- Pool safety: a value that would outlive the transaction (plain SET,
-- set_config(..., false)) is no context; pre_request() and set_tenant() say so once.
set vital.tenant_id = 'f7aa6fd4-0af9-4706-8b31-034f1f7accda';
select vital_tenancy.current_tenant_id() is null as session_value_ignored, vital_tenancy.visible_tenant_ids();
-- (pre_request() fixes the request's context until the transaction ends; the savepoint
-- undoes that, as it undoes the settings.)
savepoint p;
select vital_tenancy.pre_request();
rollback to p;
select set_config('request.jwt.claims', '{"tenant_id": "11111111-1111-1111-1111-111111111111"}', false);
select vital_tenancy.current_tenant_id() is null as session_claims_ignored;
select vital_tenancy.set_tenant(vital_tenancy.digital_health_tenant_id()) = vital_tenancy.current_tenant_id() as local_value_counts;
select set_config('vital.tenant_id', '', true), set_config('request.jwt.claims', '', true);
-- Inside the policies a bad context is no context, never an ERROR (whose firing would
-- depend on the rows); where the context is asked for, it is the ERROR.
set local request.jwt.claims = '{broken';
select vital_tenancy.visible_tenant_ids(), vital_tenancy.writable_tenant_ids();
select vital_tenancy.pre_request();
\echo :LAST_ERROR_SQLSTATE
set local request.jwt.claims = '{"sub": "aaaaaaaa-0000-4000-8000-000000000009"}';
set local request.headers = '{"x-tenant-id": "11111111-1111-1111-1111-111111111111"}';
select vital_tenancy.visible_tenant_ids(), vital_tenancy.writable_tenant_ids();
select vital_tenancy.pre_request();
\echo :LAST_ERROR_SQLSTATE
set local request.jwt.claims = '';
set local request.headers = '';

-- Only a login role that is a member of vital_tenancy_context establishes a context.
reset role;
set local session authorization vt_regress_app;
select session_user, pg_has_role('vital_tenancy_context', 'member') as trusted;
set local vital.tenant_id = 'f7aa6fd4-0af9-4706-8b31-034f1f7accda';
\echo :LAST_ERROR_SQLSTATE
select vital_tenancy.set_tenant(vital_tenancy.pharma_tenant_id());
\echo :LAST_ERROR_SQLSTATE
set local request.jwt.claims = '{"tenant_id": "f7aa6fd4-0af9-4706-8b31-034f1f7accda"}';
select vital_tenancy.visible_tenant_ids() as untrusted_sees;
select vital_tenancy.current_tenant_id();
\echo :LAST_ERROR_SQLSTATE
set local request.jwt.claims = '';
select vital_tenancy.set_tenant(NULL) is null as clearing_is_allowed;
reset session authorization;
reset role;

-- Inside a request (the trusted login switched to an application role, as PostgREST
-- does) the request's own SQL does not choose its tenant: a tenant it sets is refused,
-- set_tenant() too; claims and headers it sets count only once pre_request() has fixed
-- them; after that, a change of a setting or of the role (a switch to
-- vital_tenancy_service with a header of its choosing) gives no context.
set local session authorization vt_regress_backend;
savepoint r;
set local role vt_regress_app;
set local vital.tenant_id = 'f7aa6fd4-0af9-4706-8b31-034f1f7accda';
\echo :LAST_ERROR_SQLSTATE
select set_config('vital.tenant_id', 'f7aa6fd4-0af9-4706-8b31-034f1f7accda', true);
\echo :LAST_ERROR_SQLSTATE
select vital_tenancy.set_tenant(vital_tenancy.pharma_tenant_id());
\echo :LAST_ERROR_SQLSTATE
select set_config('request.jwt.claims', '{"tenant_id": "f7aa6fd4-0af9-4706-8b31-034f1f7accda"}', true) is not null as claims_set_inside;
select vital_tenancy.visible_tenant_ids() as before_pre_request;
select vital_tenancy.current_tenant_id();
\echo :LAST_ERROR_SQLSTATE
select vital_tenancy.pre_request();
select slug from t where id = vital_tenancy.current_tenant_id();
select set_config('request.jwt.claims', '{"tenant_id": "11111111-1111-1111-1111-111111111111"}', true) is not null as changed;
select vital_tenancy.visible_tenant_ids() as after_change;
select vital_tenancy.current_tenant_id();
\echo :LAST_ERROR_SQLSTATE
select vital_tenancy.pre_request();
\echo :LAST_ERROR_SQLSTATE
select set_config('request.jwt.claims', '{"tenant_id": "f7aa6fd4-0af9-4706-8b31-034f1f7accda"}', true) is not null as restored;
select vital_tenancy.visible_tenant_ids() = array[vital_tenancy.pharma_tenant_id(), vital_tenancy.platform_tenant_id()] as restored_context;
set local role vital_tenancy_service;
select set_config('request.headers', '{"x-tenant-id": "11111111-1111-1111-1111-111111111111"}', true) is not null as service_header;
select vital_tenancy.visible_tenant_ids() as after_role_switch;
rollback to r;
reset session authorization;

-- Policies. messages gets a tenant column, classified by hand for the test (after
-- enable_tenant_rls, so that its new index is usable in this transaction).
alter table public.messages add column tenant_id uuid references public.tenants (id);
select * from vital_tenancy.enable_tenant_rls('public.messages');
update public.messages set tenant_id = case
  when role = 'user' then vital_tenancy.digital_health_tenant_id()
  when role = 'assistant' then vital_tenancy.pharma_tenant_id()
  else vital_tenancy.platform_tenant_id() end;
select slug, count(*) from public.messages m join t on t.id = m.tenant_id group by slug order by slug;
-- Idempotent: the second run replaces only its own policies.
select count(*) as actions from vital_tenancy.enable_tenant_rls('public.messages');
select polname, polpermissive, polcmd, pg_get_expr(polqual, polrelid) as using_expr
  from pg_policy where polrelid = 'public.messages'::regclass order by polname;
select * from vital_tenancy.rls_status();
-- No policy of the extension is constant-true; refresh_tenant_policies() re-creates
-- them from the current definition (what ALTER EXTENSION UPDATE runs).
select count(*) as constant_true from pg_policy where polrelid = 'public.messages'::regclass and polname like 'vt\_%'
   and 'true' in (pg_get_expr(polqual, polrelid), pg_get_expr(polwithcheck, polrelid));
select * from vital_tenancy.refresh_tenant_policies();
select count(*) as policies from pg_policy where polrelid = 'public.messages'::regclass;
grant select, insert, update, delete on public.messages to vt_regress_app;

-- As an ordinary role: the boundary holds although the table's own policies say USING (true).
set local role vt_regress_app;
select count(*) as without_context from public.messages;
reset role;
select vital_tenancy.set_tenant(vital_tenancy.digital_health_tenant_id()) is not null;
set local role vt_regress_app;
select slug, count(*) from public.messages m join t on t.id = m.tenant_id group by slug order by slug;
update public.messages set content = content;
delete from public.messages where tenant_id = vital_tenancy.platform_tenant_id();
insert into public.messages (role, content) values ('user', 'new') returning tenant_id = vital_tenancy.digital_health_tenant_id() as defaulted;
insert into public.messages (role, content, tenant_id) values ('user', 'x', vital_tenancy.pharma_tenant_id());
\echo :LAST_ERROR_SQLSTATE
insert into public.messages (role, content, tenant_id) values ('user', 'x', vital_tenancy.platform_tenant_id());
\echo :LAST_ERROR_SQLSTATE
update public.messages set tenant_id = vital_tenancy.pharma_tenant_id();
\echo :LAST_ERROR_SQLSTATE
-- The plan: the tenant column is an index condition on a once-per-statement value.
set local enable_seqscan = off;
explain (costs off) select * from public.messages;
reset enable_seqscan;
reset role;

-- Bad input.
select * from vital_tenancy.enable_tenant_rls('public.messages', 'no_such_column');
\echo :LAST_ERROR_SQLSTATE
select * from vital_tenancy.enable_tenant_rls('public.messages', 'agent_id');
\echo :LAST_ERROR_SQLSTATE
create view public.vt_v as select * from public.messages;
select * from vital_tenancy.enable_tenant_rls('public.vt_v');
\echo :LAST_ERROR_SQLSTATE
select * from vital_tenancy.enable_tenant_rls('public.no_such_table');
\echo :LAST_ERROR_SQLSTATE
select * from vital_tenancy.disable_tenant_rls('public.agents');
\echo :LAST_ERROR_SQLSTATE

-- disable_tenant_rls undoes exactly what enable did.
select * from vital_tenancy.disable_tenant_rls('public.messages');
select polname from pg_policy where polrelid = 'public.messages'::regclass order by polname;
select relrowsecurity, relforcerowsecurity from pg_class where oid = 'public.messages'::regclass;
select pg_get_expr(adbin, adrelid) from pg_attrdef where adrelid = 'public.messages'::regclass and adnum = (select attnum from pg_attribute where attrelid = 'public.messages'::regclass and attname = 'tenant_id');
select count(*) as extension_indexes from pg_indexes where indexname like '%vt_idx';
select count(*) as recorded from vital_tenancy.rls_tables;

-- Every SECURITY DEFINER function pins search_path.
select p.oid::regprocedure, p.proconfig from pg_proc p
 where p.pronamespace = 'vital_tenancy'::regnamespace and p.prosecdef order by p.oid::regprocedure::text;
rollback;
