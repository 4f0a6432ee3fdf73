-- vital_tenancy 0.1.0 -> 0.1.1, the first step of ALTER EXTENSION vital_tenancy UPDATE
-- from 0.1.0: the schema vital_tenancy becomes a member of the extension, so that
-- DROP EXTENSION drops it, as it does after a fresh install of 0.2.0.
--
-- 0.1.0's control file named the schema, so PostgreSQL created it outside the
-- extension and made it the extension's own schema (pg_extension.extnamespace), which
-- ALTER EXTENSION ADD SCHEMA refuses. So: ALTER EXTENSION SET SCHEMA pg_catalog (the
-- extension's schema becomes pg_catalog; its objects move there for the time of this
-- transaction), ADD SCHEMA vital_tenancy, and every object back into it with ALTER ...
-- SET SCHEMA. Objects keep their OIDs: the policies, defaults and triggers of
-- application tables that call the extension's functions, pg_extension_config_dump
-- registrations, initial privileges (pg_init_privs) and grants are untouched. Objects
-- a DBA created in the schema stay in it. ALTER EXTENSION SET SCHEMA needs the
-- extension relocatable while it runs: vital_tenancy--0.1.1.control says so.
\echo Use "ALTER EXTENSION vital_tenancy UPDATE" to load this file. \quit

DO $$
DECLARE
  ext  oid := (SELECT e.oid FROM pg_catalog.pg_extension e WHERE e.extname = 'vital_tenancy');
  taken text;
BEGIN
  IF NOT (SELECT e.extrelocatable FROM pg_catalog.pg_extension e WHERE e.oid = ext) THEN
    RAISE EXCEPTION USING ERRCODE = '55000',
      MESSAGE = 'vital_tenancy--0.1.1.control is not installed next to vital_tenancy.control',
      HINT = 'Install the sql/vital_tenancy--*.control files of this release with its scripts, then run ALTER EXTENSION vital_tenancy UPDATE again.';
  END IF;
  IF (SELECT e.extnamespace FROM pg_catalog.pg_extension e WHERE e.oid = ext)
     IS DISTINCT FROM (SELECT n.oid FROM pg_catalog.pg_namespace n WHERE n.nspname = 'vital_tenancy') THEN
    RAISE EXCEPTION USING ERRCODE = '55000',
      MESSAGE = 'extension vital_tenancy 0.1.0 is not installed in schema vital_tenancy';
  END IF;
  -- A name the objects would take in pg_catalog meanwhile stops the update before
  -- anything moves (relations with their indexes and row types, functions by signature).
  SELECT pg_catalog.string_agg(x.what, ', ' ORDER BY x.what) INTO taken FROM (
    SELECT 'relation ' || c.relname AS what FROM pg_catalog.pg_class c
     WHERE c.relnamespace = 'vital_tenancy'::regnamespace
       AND EXISTS (SELECT 1 FROM pg_catalog.pg_class s WHERE s.relnamespace = 'pg_catalog'::regnamespace AND s.relname = c.relname)
    UNION ALL
    SELECT 'type ' || t.typname FROM pg_catalog.pg_type t
     WHERE t.typnamespace = 'vital_tenancy'::regnamespace
       AND EXISTS (SELECT 1 FROM pg_catalog.pg_type s WHERE s.typnamespace = 'pg_catalog'::regnamespace AND s.typname = t.typname)
    UNION ALL
    SELECT 'function ' || p.oid::pg_catalog.regprocedure::text FROM pg_catalog.pg_proc p
     WHERE p.pronamespace = 'vital_tenancy'::regnamespace
       AND EXISTS (SELECT 1 FROM pg_catalog.pg_proc s WHERE s.pronamespace = 'pg_catalog'::regnamespace
                     AND s.proname = p.proname AND s.proargtypes = p.proargtypes)) x;
  IF taken IS NOT NULL THEN
    RAISE EXCEPTION USING ERRCODE = '42710',
      MESSAGE = 'cannot make schema vital_tenancy a member of the extension: pg_catalog has ' || taken,
      HINT = 'Nothing was changed. Rename those objects in schema vital_tenancy if you created them there, then update again.';
  END IF;
END $$;

ALTER EXTENSION vital_tenancy SET SCHEMA pg_catalog;
ALTER EXTENSION vital_tenancy ADD SCHEMA vital_tenancy;

DO $$
DECLARE
  ext  oid := (SELECT e.oid FROM pg_catalog.pg_extension e WHERE e.extname = 'vital_tenancy');
  o    record;
  left_behind text;
BEGIN
  -- Tables first: each carries its indexes, owned sequences and row type along.
  FOR o IN
    SELECT c.oid, c.relname, c.relkind FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_class c ON c.oid = d.objid
     WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.refclassid = 'pg_catalog.pg_extension'::regclass
       AND d.refobjid = ext AND d.deptype = 'e'
     ORDER BY c.relkind NOT IN ('r', 'p'), c.relname
  LOOP
    IF (SELECT c.relnamespace FROM pg_catalog.pg_class c WHERE c.oid = o.oid) = 'pg_catalog'::regnamespace THEN
      EXECUTE pg_catalog.format('ALTER %s pg_catalog.%I SET SCHEMA vital_tenancy',
        CASE o.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW' WHEN 'S' THEN 'SEQUENCE'
                       WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END, o.relname);
    END IF;
  END LOOP;
  FOR o IN
    SELECT p.proname, pg_catalog.pg_get_function_identity_arguments(p.oid) AS args
      FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_proc p ON p.oid = d.objid
     WHERE d.classid = 'pg_catalog.pg_proc'::regclass AND d.refclassid = 'pg_catalog.pg_extension'::regclass
       AND d.refobjid = ext AND d.deptype = 'e' AND p.pronamespace = 'pg_catalog'::regnamespace
  LOOP
    EXECUTE pg_catalog.format('ALTER ROUTINE pg_catalog.%I(%s) SET SCHEMA vital_tenancy', o.proname, o.args);
  END LOOP;
  FOR o IN
    SELECT t.typname FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_type t ON t.oid = d.objid
     WHERE d.classid = 'pg_catalog.pg_type'::regclass AND d.refclassid = 'pg_catalog.pg_extension'::regclass
       AND d.refobjid = ext AND d.deptype = 'e' AND t.typnamespace = 'pg_catalog'::regnamespace
  LOOP
    EXECUTE pg_catalog.format('ALTER TYPE pg_catalog.%I SET SCHEMA vital_tenancy', o.typname);
  END LOOP;
  -- Nothing of the extension may stay in pg_catalog.
  SELECT pg_catalog.string_agg(pg_catalog.pg_describe_object(d.classid, d.objid, 0), ', ') INTO left_behind
    FROM pg_catalog.pg_depend d
   WHERE d.refclassid = 'pg_catalog.pg_extension'::regclass AND d.refobjid = ext AND d.deptype = 'e'
     AND (pg_catalog.pg_identify_object(d.classid, d.objid, 0)).schema = 'pg_catalog';
  IF left_behind IS NOT NULL THEN
    RAISE EXCEPTION USING ERRCODE = '55000',
      MESSAGE = 'vital_tenancy update could not move back into schema vital_tenancy: ' || left_behind;
  END IF;
END $$;
