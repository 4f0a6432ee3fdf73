#!/usr/bin/env bash
# Benchmark: a tenant's requests on the 3-node Citus test cluster (scripts/citus-cluster)
# holding the real fixture migrated by 000-008 (32 shards), with routing from the tenant
# context (vital_tenancy.citus_routing, the default) and without it. Per request shape:
# the Task Count of its EXPLAIN, and pgbench's latency and throughput as an ordinary
# LOGIN application role (BEGIN, SET LOCAL vital.tenant_id, the statement, COMMIT), with
# the simple and the prepared protocol. Needs citus.so installed for PostgreSQL 15 (built
# by hand; see docs/citus.md); exits 3 without it.
#
#   bash benches/citus_routing.sh [seconds] [clients]     (default 10 s, 1 and 8 clients)
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
SECONDS_EACH="${1:-10}"
CLIENTS="${2:-1 8}"
DB=vt_bench_route
PHARMA=f7aa6fd4-0af9-4706-8b31-034f1f7accda

vt_install_deps
vt_select_major 15
[ -f "$("${VT_PG_CONFIG}" --pkglibdir)/citus.so" ] || { echo "citus.so is not installed: no Citus benchmark" >&2; exit 3; }
vt_install_extension --release
# The library is preloaded: restart the nodes so that they run the build just installed.
bash "${VT_ROOT}/scripts/citus-cluster" stop
conn="$(bash "${VT_ROOT}/scripts/citus-cluster" start "${DB}" --fresh | tail -1)"
log "loading and migrating the fixture (000-008)"
bash "${VT_ROOT}/../shared/fixtures/vital-pre-migration/load.sh" "${conn}" >/dev/null
vt_psql "${conn}" -qc "CREATE EXTENSION vital_tenancy"
bash "${VT_ROOT}/scripts/migrate" "${conn}" --no-backup --report "${VT_WORK}/citus-routing-report.md" >/dev/null
vt_psql "${conn}" -q <<'SQL'
DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'vt_bench_app') THEN CREATE ROLE vt_bench_app LOGIN; END IF;
END $$;
GRANT vital_tenancy_context, authenticated TO vt_bench_app;
SQL
id="$(vt_psql "${conn}" -tAc "SELECT id FROM public.prompts WHERE tenant_id = '${PHARMA}' ORDER BY id LIMIT 1")"
app="${conn/user=postgres/user=vt_bench_app}"

dir="$(mktemp -d)"
trap 'rm -rf "${dir}"' EXIT
declare -A SQL=(
  [point]="SELECT * FROM public.prompts WHERE id = '${id}'"
  [count]="SELECT count(*) FROM public.prompts"
  [active50]="SELECT id, name FROM public.prompts WHERE status = 'active' ORDER BY created_at DESC LIMIT 50"
  [update]="UPDATE public.prompts SET updated_at = updated_at WHERE id = '${id}'"
)
ORDER=(point count active50 update)
for k in "${ORDER[@]}"; do
  printf 'BEGIN;\nSET LOCAL vital.tenant_id = %s;\n%s;\nCOMMIT;\n' "'${PHARMA}'" "${SQL[$k]}" > "${dir}/${k}.sql"
done
chmod -R a+rX "${dir}"

tasks() { # routing statement
  PGOPTIONS="-c vital_tenancy.citus_routing=$1" vt_psql "${app}" -tA <<EOF | sed -n 's/^ *Task Count: //p' | head -1
BEGIN;
SET LOCAL vital.tenant_id = '${PHARMA}';
EXPLAIN $2;
COMMIT;
EOF
}

echo "| request (Pharmaceuticals) | routing | Task Count | protocol | clients | latency avg ms | tps |"
echo "|---|---|---:|---|---:|---:|---:|"
for k in "${ORDER[@]}"; do
  for routing in on off; do
    t="$(tasks "${routing}" "${SQL[$k]}")"
    for mode in simple prepared; do
      for c in ${CLIENTS}; do
        out="$(PGOPTIONS="-c vital_tenancy.citus_routing=${routing}" \
          "${VT_PG_BIN}/pgbench" -n -h 127.0.0.1 -p 54350 -U vt_bench_app -M "${mode}" -c "${c}" -j "${c}" \
          -T "${SECONDS_EACH}" -f "${dir}/${k}.sql" "${DB}" 2>&1)"
        lat="$(sed -n 's/^latency average = \([0-9.]*\) ms/\1/p' <<<"${out}")"
        tps="$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' <<<"${out}")"
        [ -n "${tps}" ] || { echo "pgbench failed: ${out}" >&2; exit 1; }
        echo "| ${k} | ${routing} | ${t} | ${mode} | ${c} | ${lat} | ${tps} |"
      done
    done
  done
done
