-- 001: schema fixes (the plan's Phase 1) and tenant columns.
--  * tools.category text column, filled from tool_categories.name and kept in step
--    with category_id (and category renames) by triggers;
--  * the missing organisational tables business_functions, departments,
--    organizational_roles (tenant-scoped; kept as they are where they exist);
--  * a security_invoker view chat_messages over messages, for code using the old name.
-- The tenant columns are not added here: each table's backfill (003, 004) adds its
-- own, with the tenant most of its rows classify to as the catalog default, so that
-- only the other rows are written; 004 then adds the foreign keys still missing and
-- builds the tenant indexes (after the backfill, so its updates can be HOT).
-- One transaction. Idempotent: everything is IF NOT EXISTS / CREATE OR REPLACE /
-- checked first.
\set ON_ERROR_STOP on
BEGIN;
-- Never queue behind a long transaction holding a table this script alters (its
-- ACCESS EXCLUSIVE request would block every reader behind it): give up instead, and
-- run the script again later (it is idempotent).
SET LOCAL lock_timeout = '10s';
SET LOCAL statement_timeout = '5min';

ALTER TABLE public.tools ADD COLUMN IF NOT EXISTS category text;
-- Filling the new column is not an edit of the tools: keep their updated_at (the
-- table's triggers do not fire in replica mode, which only a superuser may set).
SELECT set_config('session_replication_role', 'replica', true)
 WHERE (SELECT rolsuper FROM pg_roles WHERE rolname = current_user);
UPDATE public.tools t SET category = c.name
  FROM public.tool_categories c
 WHERE c.id = t.category_id AND t.category IS DISTINCT FROM c.name;
SELECT set_config('session_replication_role', 'origin', true)
 WHERE (SELECT rolsuper FROM pg_roles WHERE rolname = current_user);

CREATE OR REPLACE FUNCTION public.tools_sync_category() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, public AS $$
BEGIN
  NEW.category := vital_tenancy.tool_category_name(NEW.category_id);
  RETURN NEW;
END $$;
CREATE OR REPLACE FUNCTION public.tool_categories_sync_tools() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, public AS $$
BEGIN
  UPDATE public.tools SET category = NEW.name WHERE category_id = NEW.id AND category IS DISTINCT FROM NEW.name;
  RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS tools_sync_category ON public.tools;
CREATE TRIGGER tools_sync_category BEFORE INSERT OR UPDATE OF category_id, category ON public.tools
  FOR EACH ROW EXECUTE FUNCTION public.tools_sync_category();
DROP TRIGGER IF EXISTS tool_categories_sync_tools ON public.tool_categories;
CREATE TRIGGER tool_categories_sync_tools AFTER UPDATE OF name ON public.tool_categories
  FOR EACH ROW EXECUTE FUNCTION public.tool_categories_sync_tools();

CREATE TABLE IF NOT EXISTS public.business_functions (
  id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  tenant_id           uuid,
  name                text NOT NULL,
  description         text,
  department          text,
  healthcare_category text,
  is_active           boolean NOT NULL DEFAULT true,
  created_at          timestamptz NOT NULL DEFAULT now(),
  updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS public.departments (
  id                   uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  tenant_id            uuid,
  name                 text NOT NULL,
  description          text,
  business_function_id uuid REFERENCES public.business_functions (id) ON DELETE SET NULL,
  is_active            boolean NOT NULL DEFAULT true,
  created_at           timestamptz NOT NULL DEFAULT now(),
  updated_at           timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS public.organizational_roles (
  id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  tenant_id     uuid,
  name          text NOT NULL,
  description   text,
  department_id uuid REFERENCES public.departments (id) ON DELETE SET NULL,
  level         text,
  is_active     boolean NOT NULL DEFAULT true,
  created_at    timestamptz NOT NULL DEFAULT now(),
  updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE OR REPLACE VIEW public.chat_messages WITH (security_invoker = true) AS SELECT * FROM public.messages;

-- References without a foreign key, for the validation checks (005).
SELECT vital_tenancy.declare_reference('public.messages', 'agent_id', 'public.agents', ARRAY['id', 'name']);
COMMIT;
