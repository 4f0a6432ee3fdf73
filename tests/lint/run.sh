#!/usr/bin/env bash
# The extension's own SQL through the linters of its ecosystem, one suite line each:
#   pgspot         the install script of this version (as installed) and every upgrade
#                  script: search_path capture, unsafe CREATE OR REPLACE, ...
#   plpgsql_check  every PL/pgSQL routine the extension installs, with its performance,
#                  security and extra warnings on (PostgreSQL 15, Debian's package)
#   squawk         the shipped migrations (sql/migrations/)
# A finding fails its suite unless tests/lint/*.accepted (or .squawk.toml) lists it with
# the reason. Needs the test cluster (VT_HOST/VT_PORT) with the extension installed for
# PostgreSQL 15. Prints "lint: N passed, N failed".
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib.sh"
vt_select_major 15
vt_cluster_start "$(vt_cluster_name test)" "${VT_TEST_PORT:-54330}"
LINT="${VT_ROOT}/tests/lint"
VENV="${VT_WORK}/lint-venv"
PASSED=0
FAILED=0
pass() { PASSED=$((PASSED + 1)); echo "lint $1: ok${2:+ ($2)}"; }
fail() { FAILED=$((FAILED + 1)); echo "lint $1: FAILED"; }

# Pinned: a new linter release must not change a test's outcome by itself.
if ! "${VENV}/bin/pgspot" --version 2>/dev/null | grep -q '0.9.4' \
   || ! "${VENV}/bin/squawk" --version 2>/dev/null | grep -q '2.70.0'; then
  log "pip install pgspot==0.9.4 squawk-cli==2.70.0 into ${VENV}"
  python3 -m venv "${VENV}"
  "${VENV}/bin/pip" install -q pgspot==0.9.4 squawk-cli==2.70.0
fi
if ! dpkg-query -W -f='${Status}' postgresql-15-plpgsql-check 2>/dev/null | grep -q "install ok installed"; then
  log "apt-get install postgresql-15-plpgsql-check"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15-plpgsql-check >/dev/null
fi

# --- pgspot -----------------------------------------------------------------------
version="$(sed -n 's/^version = "\(.*\)"$/\1/p' "${VT_ROOT}/Cargo.toml" | head -1)"
install_script="$("${VT_PG_CONFIG}" --sharedir)/extension/vital_tenancy--${version}.sql"
accepted="${LINT}/pgspot.accepted"
# Findings of one script, each "line<TAB>finding", the statement line pgspot reports.
findings() {
  (cd /tmp && "${VENV}/bin/pgspot" "$1" 2>&1) \
    | sed -nE 's/^(PS[0-9]+: .*) at line ([0-9]+)$/\2\t\1/p; s/^ *(syntax error.*)$/0\t\1/p'
}
code_ok() { awk -v c="$1" -v f="$2" '$1 == "code" && $2 == c && $3 == f {found = 1} END {exit !found}' "${accepted}"; }
routine_ok() { grep -qxF "$1" < <(sed -nE 's/^routine (.*) \| .*/\1/p' "${accepted}"); }
ok=1
for f in "${install_script}" "${VT_ROOT}"/sql/vital_tenancy--*--*.sql; do
  rel="${f#"${VT_ROOT}/"}"
  pinned="$(awk -v f="${rel}" '$1 == "released" && $2 == f {print $3}' "${accepted}")"
  if [ -n "${pinned}" ]; then
    if [ "$(sha256sum "${f}" | cut -d' ' -f1)" = "${pinned}" ]; then
      echo "  ${rel}: released, $(findings "${f}" | wc -l) findings accepted (tests/lint/pgspot.accepted)"
    else
      echo "  ${rel}: a released upgrade script changed (sha256 differs from tests/lint/pgspot.accepted)"; ok=0
    fi
    continue
  fi
  # Lines of the statements that create an accepted routine: their findings are accepted.
  declare -A lines=()
  while IFS=$'\t' read -r line what; do
    case "${what}" in
      "PS005: Function without explicit search_path: "*)
        routine_ok "${what#PS005: Function without explicit search_path: }" && lines[${line}]=1 ;;
    esac
  done < <(findings "${f}")
  n=0
  while IFS=$'\t' read -r line what; do
    [ -n "${lines[${line}]:-}" ] && { n=$((n + 1)); continue; }
    code_ok "${what%%:*}" "${rel}" && { n=$((n + 1)); continue; }
    echo "  ${rel}:${line}: ${what}"; ok=0
  done < <(findings "${f}")
  unset lines
  echo "  ${rel}: ${n} findings accepted (tests/lint/pgspot.accepted)"
done
[ "${ok}" = 1 ] && pass pgspot || fail pgspot

# --- plpgsql_check ----------------------------------------------------------------
db=vt_lint
vt_psql -d postgres -c "DROP DATABASE IF EXISTS ${db}" -c "CREATE DATABASE ${db}" >/dev/null
vt_psql -d "${db}" -c "CREATE EXTENSION vital_tenancy" -c "CREATE EXTENSION plpgsql_check" >/dev/null
got="$(vt_psql -d "${db}" -tA -F ' | ' <<'SQL'
SELECT p.oid::regprocedure, r.message, r.level || ' at line ' || coalesce(r.lineno::text, '?') || ': ' || coalesce(r.detail, '')
  FROM pg_catalog.pg_proc p
  JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
  JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid AND e.extname = 'vital_tenancy'
  JOIN pg_catalog.pg_language l ON l.oid = p.prolang AND l.lanname = 'plpgsql'
 CROSS JOIN LATERAL plpgsql_check_function_tb(p.oid,
       relid => CASE WHEN p.prorettype = 'trigger'::regtype
                     THEN coalesce((SELECT t.tgrelid FROM pg_catalog.pg_trigger t WHERE t.tgfoid = p.oid LIMIT 1),
                                   'vital_tenancy.classification_rules'::regclass) ELSE 0 END,
       performance_warnings => true, security_warnings => true, extra_warnings => true) r
 ORDER BY 1, 2
SQL
)"
checked="$(vt_psql -d "${db}" -tAc "SELECT count(*) FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_depend d ON d.objid = p.oid AND d.classid = 'pg_catalog.pg_proc'::regclass AND d.deptype = 'e' JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid AND e.extname = 'vital_tenancy' JOIN pg_catalog.pg_language l ON l.oid = p.prolang AND l.lanname = 'plpgsql'")"
vt_psql -d postgres -c "DROP DATABASE ${db}" >/dev/null
ok=1; n=0
while IFS= read -r row; do
  [ -n "${row}" ] || continue
  fn="${row%% | *}"; rest="${row#* | }"; msg="${rest%% | *}"
  if grep -qF "${fn} | ${msg} | " "${LINT}/plpgsql_check.accepted"; then n=$((n + 1)); else echo "  ${row}"; ok=0; fi
done <<<"${got}"
[ "${ok}" = 1 ] && pass plpgsql_check "${checked} routines, ${n} accepted findings" || fail plpgsql_check

# --- squawk -----------------------------------------------------------------------
if (cd "${VT_ROOT}" && "${VENV}/bin/squawk" sql/migrations/*.sql); then pass squawk; else fail squawk; fi

echo "lint: ${PASSED} passed, ${FAILED} failed"
[ "${FAILED}" -eq 0 ]
