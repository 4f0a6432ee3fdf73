-- What the extension lets every role do, generated from the catalog and held against a
-- reviewed list: each routine PUBLIC may execute and each SECURITY DEFINER routine,
-- with why an application role must be able to call it and how it checks what it is
-- given. A routine the catalog has and the list does not shows as UNREVIEWED, one the
-- list has and the catalog does not as GONE: either fails this test. So do a SECURITY
-- DEFINER routine without a pinned search_path, and a grant to PUBLIC or to another
-- role on anything of the extension beyond those listed at the end.
\set ON_ERROR_ROLLBACK on
\set SHOW_CONTEXT never
begin;
create extension vital_tenancy;

create temp table reviewed (routine text primary key, why text not null, checks text not null);
insert into reviewed values
  ('vital_tenancy.current_tenant_id()', 'the tenant column''s DEFAULT and the application ask for the request''s tenant',
   'no arguments; the context is validated where asked for (22P02, 42704, 42501); SECURITY DEFINER to read the registry and memberships'),
  ('vital_tenancy.visible_tenant_ids(boolean)', 'every tenant policy calls it as the querying role',
   'a bad context is no context (empty), never an error'),
  ('vital_tenancy.writable_tenant_ids()', 'every tenant policy''s WITH CHECK calls it as the querying role',
   'a bad context is no context (empty), never an error'),
  ('vital_tenancy.pre_request()', 'PostgREST calls it as the request''s role (anon, authenticated)',
   'validates the context; SECURITY DEFINER to read the registry and memberships'),
  ('vital_tenancy.set_tenant(uuid)', 'trusted backends call it per transaction, also NOINHERIT login roles',
   'refuses (42501) unless the login role is a member of vital_tenancy_context; checks that the tenant exists and may be used'),
  ('vital_tenancy.tenant_id_by_slug(text)', 'the application resolves a tenant''s slug before sign-in',
   'returns one id or NULL; SECURITY DEFINER so that the registry stays closed'),
  ('vital_tenancy.tenants_table()', 'the context resolution and the classifiers read it as the caller',
   'no arguments; reads the PUBLIC-readable settings table'),
  ('vital_tenancy.platform_tenant_id()', 'a constant the application''s SQL uses', 'no arguments'),
  ('vital_tenancy.digital_health_tenant_id()', 'a constant the application''s SQL uses', 'no arguments'),
  ('vital_tenancy.pharma_tenant_id()', 'a constant the application''s SQL uses', 'no arguments'),
  ('vital_tenancy.classify_prompt_tenant(text,text,uuid,boolean)', 'classifies new rows in the application''s SQL', 'a function of its arguments and the PUBLIC-readable rules'),
  ('vital_tenancy.classify_prompt_tenant(jsonb)', 'classifies new rows in the application''s SQL', 'a key of the wrong type is 22023'),
  ('vital_tenancy.classify_knowledge_tenant(text,text[])', 'classifies new rows in the application''s SQL', 'a function of its arguments and the PUBLIC-readable rules'),
  ('vital_tenancy.classify_knowledge_tenant(jsonb)', 'classifies new rows in the application''s SQL', 'a key of the wrong type is 22023'),
  ('vital_tenancy.classify_agent_tenant(text,text[])', 'classifies new rows in the application''s SQL', 'a function of its arguments and the PUBLIC-readable rules'),
  ('vital_tenancy.classify_agent_tenant(integer,text[])', 'classifies new rows in the application''s SQL', 'a function of its arguments and the PUBLIC-readable rules'),
  ('vital_tenancy.classify_agent_tenant(jsonb)', 'classifies new rows in the application''s SQL', 'a key of the wrong type is 22023'),
  ('vital_tenancy.classify_tool_tenant(uuid)', 'classifies new rows in the application''s SQL', 'a function of its argument'),
  ('vital_tenancy.map_domain_to_suite(text)', 'the application names a prompt''s suite', 'a function of its argument'),
  ('vital_tenancy.tool_category_name(uuid)', 'the application names a tool''s category', 'reads public.tool_categories as the caller (its RLS applies)'),
  ('vital_tenancy.explain_tenant(text,jsonb)', 'shows which rule classifies a row', 'a function of its arguments and the PUBLIC-readable rules; unknown kind 22023'),
  ('vital_tenancy.rules()', 'shows the classification rules in force', 'reads the PUBLIC-readable rules table'),
  ('vital_tenancy.all_tenant_ids()', 'not PUBLIC: platform admins (vital_tenancy_admin) list every tenant',
   'no arguments; SECURITY DEFINER to read the closed registry'),
  ('vital_tenancy.forget_dropped_tables()', 'not PUBLIC: the event trigger on sql_drop runs it for every role''s DROP',
   'no arguments (an event trigger function cannot be called); deletes only the records of the OIDs the DROP removed; SECURITY DEFINER because the dropping role cannot write the extension''s tables');

with r as (
  select p.oid::regprocedure::text as routine, p.prosecdef,
         has_function_privilege('public', p.oid, 'EXECUTE') as public_execute,
         (select string_agg(c, ', ') from unnest(p.proconfig) c where c like 'search_path=%') as search_path
    from pg_proc p
   where p.pronamespace = 'vital_tenancy'::regnamespace
     and (p.prosecdef or has_function_privilege('public', p.oid, 'EXECUTE'))
)
select coalesce(r.routine, v.routine) as routine,
       case when r.routine is null then 'GONE' when v.routine is null then 'UNREVIEWED' else 'reviewed' end as review,
       r.public_execute as public, r.prosecdef as definer,
       case when r.prosecdef then coalesce(r.search_path, 'NOT PINNED') end as definer_search_path
  from r full join reviewed v using (routine)
 order by 1;

-- The reasons, for the record (a changed reason is a changed golden file, reviewed).
select routine, why, checks from reviewed order by 1;

-- Grants beyond the owner's own on anything of the extension: routines, tables,
-- sequences, the schema.
select kind, object, coalesce(nullif(grantee::regrole::text, '-'), 'PUBLIC') as grantee, privilege
  from (
    select 'routine' as kind, p.oid::regprocedure::text as object, a.grantee, a.privilege_type as privilege, p.proowner as owner
      from pg_proc p, aclexplode(p.proacl) a where p.pronamespace = 'vital_tenancy'::regnamespace
    union all
    select 'relation', c.oid::regclass::text, a.grantee, a.privilege_type, c.relowner
      from pg_class c, aclexplode(c.relacl) a where c.relnamespace = 'vital_tenancy'::regnamespace
    union all
    select 'schema', n.nspname::text, a.grantee, a.privilege_type, n.nspowner
      from pg_namespace n, aclexplode(n.nspacl) a where n.nspname = 'vital_tenancy'
  ) g
 where g.grantee <> g.owner
 order by 1, 2, 3, 4;
rollback;
