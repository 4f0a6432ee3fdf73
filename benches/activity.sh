#!/usr/bin/env bash
# Benchmark: what the per-tenant activity collector (tenant_activity(), executor hooks
# in shared memory) costs. The same database on two clusters, one without and one with
# shared_preload_libraries = 'vital_tenancy'; the real fixture migrated by the shipped
# scripts, prompts scaled up x20 (its columns, indexes, uuid keys and tenant mix), read
# by an application role through the policies, per transaction the context of one of the
# two tenants and either real reads ("page") or one indexed row ("point"). pgbench, 2
# clients, alternating runs; prints the median TPS and latency of each and the ratio.
#
#   bash benches/activity.sh [seconds per run] [runs]      (default 20 s, 5 runs)
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
SECONDS_PER_RUN="${1:-20}"
RUNS="${2:-5}"
PGBENCH="${VT_PG_BIN}/pgbench"

vt_install_deps
vt_install_extension --release

build() { # cluster port options
  VT_PG_OPTS="$3" vt_cluster_start "$1" "$2"
  vt_fresh_fixture_db vt_bench_activity >/dev/null
  vt_psql -d vt_bench_activity -c "CREATE EXTENSION vital_tenancy" >/dev/null
  PG_BIN="${VT_PG_BIN}" bash "${VT_ROOT}/scripts/migrate" \
    "host=${VT_HOST} port=${VT_PORT} user=postgres dbname=vt_bench_activity" \
    --no-backup --report "${VT_WORK}/bench-activity-report.md" >/dev/null 2>&1 || { echo "migration failed on $1" >&2; exit 1; }
  vt_psql -d vt_bench_activity >/dev/null <<'SQL'
-- x20: copies of every prompt with new ids and names, same tenant and columns.
INSERT INTO public.prompts
SELECT (jsonb_populate_record(NULL::public.prompts,
          to_jsonb(p) || jsonb_build_object('id', gen_random_uuid(), 'name', p.name || '-' || g))).*
  FROM public.prompts p, generate_series(1, 19) g;
VACUUM ANALYZE public.prompts;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'vt_bench_activity_app') THEN CREATE ROLE vt_bench_activity_app LOGIN; END IF; END $$;
GRANT vital_tenancy_context, authenticated TO vt_bench_activity_app;
SQL
}

log "cluster without the collector"
build bench-plain "${VT_BENCH_PORT:-54331}" ""
PLAIN=("${VT_HOST}" "${VT_PORT}")
log "cluster with vital_tenancy preloaded"
build bench-preload "$(( ${VT_BENCH_PORT:-54331} + 10 ))" "-c shared_preload_libraries=vital_tenancy"
PRELOAD=("${VT_HOST}" "${VT_PORT}")

# Two workloads: "page" (a page of 20 prompts and a count by domain: real reads) and
# "point" (one indexed row of the tenant: the statement is cheap, so a per-statement
# cost shows).
cat > "${VT_WORK}/bench-activity-page.sql" <<'SQL'
\set t random(0, 1)
BEGIN;
SELECT set_config('vital.tenant_id', CASE :t WHEN 0 THEN '11111111-1111-1111-1111-111111111111' ELSE 'f7aa6fd4-0af9-4706-8b31-034f1f7accda' END, true);
SELECT id, name FROM public.prompts ORDER BY tenant_id, id LIMIT 20;
SELECT count(*) FROM public.prompts WHERE domain = 'general';
COMMIT;
SQL
cat > "${VT_WORK}/bench-activity-point.sql" <<'SQL'
\set t random(0, 1)
BEGIN;
SELECT set_config('vital.tenant_id', CASE :t WHEN 0 THEN '11111111-1111-1111-1111-111111111111' ELSE 'f7aa6fd4-0af9-4706-8b31-034f1f7accda' END, true);
SELECT id FROM public.prompts WHERE tenant_id = (CASE :t WHEN 0 THEN '11111111-1111-1111-1111-111111111111' ELSE 'f7aa6fd4-0af9-4706-8b31-034f1f7accda' END)::uuid LIMIT 1;
COMMIT;
SQL

run() { # host port workload -> "tps latency_ms"
  "${PGBENCH}" -n -h "$1" -p "$2" -U vt_bench_activity_app -c 2 -j 2 -T "${SECONDS_PER_RUN}" -f "${VT_WORK}/bench-activity-$3.sql" vt_bench_activity 2>/dev/null \
    | awk '/^latency average/ {lat=$4} /^tps/ {tps=$3} END {print tps, lat}'
}
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

rows=$(PGHOST="${PRELOAD[0]}" PGPORT="${PRELOAD[1]}" vt_psql -d vt_bench_activity -tAc "SELECT count(*) FROM public.prompts")
echo "prompts rows: ${rows}; ${RUNS} alternating runs of ${SECONDS_PER_RUN} s per cluster and workload, 2 clients"
# Three ways per workload, alternating: the cluster without the library preloaded, the
# preloaded cluster collecting, and the same preloaded cluster with
# vital_tenancy.track_activity off for the role (the hooks installed but idle).
track() { PGHOST="${PRELOAD[0]}" PGPORT="${PRELOAD[1]}" vt_psql -d vt_bench_activity -qc "$1" >/dev/null; }
for w in page point; do
  : > "${VT_WORK}/bench-activity-plain.txt"; : > "${VT_WORK}/bench-activity-preload.txt"; : > "${VT_WORK}/bench-activity-off.txt"
  for i in $(seq 1 "${RUNS}"); do
    run "${PLAIN[@]}" "$w" >> "${VT_WORK}/bench-activity-plain.txt"
    track "ALTER ROLE vt_bench_activity_app RESET vital_tenancy.track_activity"
    run "${PRELOAD[@]}" "$w" >> "${VT_WORK}/bench-activity-preload.txt"
    track "ALTER ROLE vt_bench_activity_app SET vital_tenancy.track_activity = off"
    run "${PRELOAD[@]}" "$w" >> "${VT_WORK}/bench-activity-off.txt"
  done
  track "ALTER ROLE vt_bench_activity_app RESET vital_tenancy.track_activity"
  tp=$(awk '{print $1}' "${VT_WORK}/bench-activity-plain.txt" | median)
  tc=$(awk '{print $1}' "${VT_WORK}/bench-activity-preload.txt" | median)
  to=$(awk '{print $1}' "${VT_WORK}/bench-activity-off.txt" | median)
  lp=$(awk '{print $2}' "${VT_WORK}/bench-activity-plain.txt" | median)
  lc=$(awk '{print $2}' "${VT_WORK}/bench-activity-preload.txt" | median)
  lo=$(awk '{print $2}' "${VT_WORK}/bench-activity-off.txt" | median)
  echo "${w}: not preloaded ${tp} tps, ${lp} ms; collecting ${tc} tps, ${lc} ms; preloaded, track_activity off ${to} tps, ${lo} ms"
  awk -v w="$w" -v a="$tp" -v b="$tc" -v o="$to" 'BEGIN {printf "%s: throughput collecting/not preloaded %.3f, collecting/off %.3f\n", w, b / a, b / o}'
done
# The collector saw the load, per tenant.
PGHOST="${PRELOAD[0]}" PGPORT="${PRELOAD[1]}" vt_psql -d vt_bench_activity -c \
  "SELECT tenant_id, statements, rows_read, round(total_time_ms::numeric, 1) AS ms FROM vital_tenancy.tenant_activity()"
vt_cluster_stop bench-plain
vt_cluster_stop bench-preload
