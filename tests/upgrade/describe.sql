-- Everything an install of vital_tenancy defines, as sorted text lines: an updated
-- install and a fresh one must print the same (tests/upgrade/run.sh diffs them).
\pset format unaligned
\pset tuples_only on
WITH ext AS (SELECT oid, extnamespace FROM pg_extension WHERE extname = 'vital_tenancy'),
members AS (
  SELECT d.classid, d.objid FROM pg_depend d, ext
   WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext.oid AND d.deptype = 'e'
)
SELECT line FROM (
  -- functions and procedures: signature, result, attributes, body, comment, privileges
  SELECT format('function %s returns %s kind=%s vol=%s par=%s strict=%s secdef=%s config=%s src=%s bin=%s acl=%s comment=%s',
                p.oid::regprocedure, pg_get_function_result(p.oid), p.prokind, p.provolatile, p.proparallel,
                p.proisstrict, p.prosecdef, p.proconfig,
                CASE WHEN p.prolang = (SELECT l.oid FROM pg_language l WHERE l.lanname = 'c') THEN p.prosrc ELSE md5(p.prosrc) END,
                p.probin, p.proacl, obj_description(p.oid, 'pg_proc')) AS line
    FROM pg_proc p JOIN members m ON m.classid = 'pg_proc'::regclass AND m.objid = p.oid
  UNION ALL
  SELECT format('function %s args=%s', p.oid::regprocedure, pg_get_function_arguments(p.oid))
    FROM pg_proc p JOIN members m ON m.classid = 'pg_proc'::regclass AND m.objid = p.oid
  UNION ALL
  -- relations: kind, privileges, comment, options
  SELECT format('relation %s kind=%s acl=%s options=%s comment=%s', c.oid::regclass, c.relkind, c.relacl, c.reloptions,
                obj_description(c.oid, 'pg_class'))
    FROM pg_class c JOIN members m ON m.classid = 'pg_class'::regclass AND m.objid = c.oid
  UNION ALL
  SELECT format('column %s.%s %s notnull=%s default=%s compression=%s', c.oid::regclass, a.attname,
                format_type(a.atttypid, a.atttypmod), a.attnotnull, pg_get_expr(ad.adbin, ad.adrelid), a.attcompression)
    FROM pg_class c JOIN members m ON m.classid = 'pg_class'::regclass AND m.objid = c.oid
    JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
    LEFT JOIN pg_attrdef ad ON ad.adrelid = c.oid AND ad.adnum = a.attnum
  UNION ALL
  SELECT format('index %s', pg_get_indexdef(i.indexrelid))
    FROM pg_index i JOIN members m ON m.classid = 'pg_class'::regclass AND m.objid = i.indrelid
  UNION ALL
  SELECT format('constraint %s %s', con.conrelid::regclass, pg_get_constraintdef(con.oid))
    FROM pg_constraint con JOIN members m ON m.classid = 'pg_class'::regclass AND m.objid = con.conrelid
  UNION ALL
  SELECT format('view %s %s', c.oid::regclass, md5(pg_get_viewdef(c.oid)))
    FROM pg_class c JOIN members m ON m.classid = 'pg_class'::regclass AND m.objid = c.oid WHERE c.relkind = 'v'
  UNION ALL
  SELECT format('trigger %s', pg_get_triggerdef(t.oid))
    FROM pg_trigger t JOIN members m ON m.classid = 'pg_class'::regclass AND m.objid = t.tgrelid WHERE NOT t.tgisinternal
  UNION ALL
  SELECT format('type %s', t.oid::regtype)
    FROM pg_type t JOIN members m ON m.classid = 'pg_type'::regclass AND m.objid = t.oid
  UNION ALL
  SELECT format('config-dump %s %s', cfg.c::regclass, cond.c)
    FROM pg_extension e, unnest(e.extconfig) WITH ORDINALITY cfg(c, n)
    LEFT JOIN LATERAL unnest(e.extcondition) WITH ORDINALITY cond(c, n2) ON cond.n2 = cfg.n
   WHERE e.extname = 'vital_tenancy'
  UNION ALL
  SELECT format('member %s', pg_describe_object(m.classid, m.objid, 0)) FROM members m
  UNION ALL
  -- the schema of the objects (pg_extension.extnamespace is only where CREATE EXTENSION
  -- was pointed, holds nothing and is not compared: pg_catalog after an update from 0.1.0)
  SELECT format('schema %s owner=%s acl=%s', n.nspname, pg_get_userbyid(n.nspowner), n.nspacl)
    FROM pg_namespace n WHERE n.nspname = 'vital_tenancy'
  UNION ALL
  -- the privileges pg_dump treats as the extension's own (it dumps only changes to them)
  SELECT format('init-privs %s %s', pg_describe_object(i.classoid, i.objoid, i.objsubid), i.initprivs)
    FROM pg_init_privs i JOIN members m ON m.classid = i.classoid AND m.objid = i.objoid
  UNION ALL
  SELECT format('role %s login=%s bypassrls=%s', rolname, rolcanlogin, rolbypassrls)
    FROM pg_roles WHERE rolname LIKE 'vital\_tenancy\_%'
) s ORDER BY line;
