#!/usr/bin/env bash
# Benchmark: the shipped migration's backfill (003 + 004) on the real fixture with
# `prompts` grown SCALE times (default 200: 215,600 rows; SCALE=928 gives 1,000,384),
# against the naive way on an identical copy:
#   (shipped)  sql/migrations/003_platform_data.sql + 004_tenant_data.sql, as
#              scripts/migrate runs them (psql -f), after 000-002;
#   (update)   ALTER TABLE prompts ADD COLUMN tenant_id uuid + one
#              UPDATE prompts SET tenant_id = classify_prompt_tenant(...).
# The grown rows are the real rows with suffixed names: the same columns, the real
# indexes (uuid primary key, unique name, btree and GIN), the real trigger, and the
# real tenant mix (~95% of prompts classify to Platform). Reports wall time and the
# prompts table's size after / before (heap: pg_table_size; with indexes:
# pg_total_relation_size), no VACUUM FULL, and checks that every prompt's tenant
# equals the classifier's and that the rows staying Platform were not rewritten.
#
# The VM's CPU speed drifts, so ROUNDS rounds (default 3) run on fresh copies
# (CREATE DATABASE ... TEMPLATE) after a CHECKPOINT, alternating which goes first; the
# median of the per-round ratios is the figure. Cluster as production: fsync on,
# shared_buffers 1GB, max_wal_size 4GB.
#
#   bash benches/backfill_real.sh                 (SCALE=200, ROUNDS=3)
#   SCALE=928 ROUNDS=1 bash benches/backfill_real.sh
#   PARTIAL=1 bash benches/backfill_real.sh       (prompts already has a nullable
#       tenant_id, as in the fixture's WITH_PARTIAL_TENANT lineage: no catalog default)
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

SCALE="${SCALE:-200}"
ROUNDS="${ROUNDS:-3}"
PARTIAL="${PARTIAL:-0}"
vt_install_deps
vt_install_extension --release
export VT_PG_OPTS="-c fsync=on -c shared_buffers=1GB -c max_wal_size=4GB"
vt_cluster_start "$(vt_cluster_name bench)" "${VT_BENCH_PORT:-54331}"
if [ "$(vt_psql -d postgres -tAc "SELECT current_setting('fsync') || current_setting('shared_buffers')")" != "on1GB" ]; then
  vt_cluster_stop "$(vt_cluster_name bench)"
  vt_cluster_start "$(vt_cluster_name bench)" "${VT_BENCH_PORT:-54331}"
fi
BASE=vt_real_base
CONN="host=${VT_HOST} port=${VT_PORT} user=postgres"
MIG="${VT_ROOT}/sql/migrations"

# The base holds only the data (the extension and 000-002 run in each copy), so it can
# be reused across builds with REUSE_BASE=1.
TAG="scale=${SCALE} partial=${PARTIAL}"
if [ "${REUSE_BASE:-0}" = 1 ] && [ "$(vt_psql -d postgres -tAc "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = '${BASE}'")" = "$TAG" ]; then
  log "reusing the base database (${TAG})"
else
log "base database: the real fixture, prompts x${SCALE}, migrations 000-002"
vt_psql -d postgres -c "DROP DATABASE IF EXISTS ${BASE} WITH (FORCE)" -c "CREATE DATABASE ${BASE}"
WITH_PARTIAL_TENANT="${PARTIAL}" PSQL="${VT_PG_BIN}/psql" bash "${VT_FIXTURE}/load.sh" "${CONN} dbname=${BASE}" 2>/dev/null
vt_psql -d "$BASE" <<SQL
-- The real rows again with suffixed names (name is UNIQUE), new uuid keys; every
-- other column as it is. The updated_at trigger does not fire for INSERT.
INSERT INTO public.prompts
SELECT (pg_catalog.jsonb_populate_record(NULL::public.prompts,
          pg_catalog.to_jsonb(p) || pg_catalog.jsonb_build_object('id', gen_random_uuid(), 'name', p.name || '-' || g))).*
  FROM public.prompts p CROSS JOIN generate_series(2, ${SCALE}) g;
SQL
if [ "$PARTIAL" = 1 ]; then
  # The later lineage had prompts.tenant_id (nullable, with its FK and index).
  vt_psql -d "$BASE" -c "ALTER TABLE public.prompts ADD COLUMN tenant_id uuid REFERENCES public.tenants (id)" \
    -c "CREATE INDEX idx_prompts_tenant ON public.prompts (tenant_id)"
fi
vt_psql -d "$BASE" -c "VACUUM ANALYZE" -c "COMMENT ON DATABASE ${BASE} IS '${TAG}'"
fi
ROWS=$(vt_psql -d "$BASE" -tAc "SELECT count(*) FROM public.prompts")
INDEXES=$(vt_psql -d "$BASE" -tAc "SELECT count(*) FROM pg_index WHERE indrelid = 'public.prompts'::regclass")

now_ms() { date +%s%3N; }
# A copy of the base with the extension (this build) and migrations 000-002 run.
copy() {
  vt_psql -d postgres -c "DROP DATABASE IF EXISTS $1 WITH (FORCE)" -c "CREATE DATABASE $1 TEMPLATE ${BASE}"
  vt_psql -d "$1" -c "CREATE EXTENSION vital_tenancy"
  for f in 000_pre_migration_counts 001_schema_fixes 002_tenant_setup; do
    vt_psql -d "$1" -f "$MIG/$f.sql" >/dev/null 2>&1
  done
  vt_psql -d "$1" -c "VACUUM ANALYZE public.prompts" -c "CHECKPOINT"; sync
  PLATFORM_SHARE=$(vt_psql -d "$1" -tAc "SELECT round(100.0 * count(*) FILTER (WHERE vital_tenancy.classify_prompt_tenant(name, domain, created_by, NULL) = vital_tenancy.platform_tenant_id()) / count(*), 1) FROM public.prompts")
}
sizes() {
  vt_psql -d "$1" -tAc "SELECT pg_table_size('public.prompts') || ' ' || pg_total_relation_size('public.prompts')"
}
# The check both variants must pass: every prompt's tenant is the classifier's.
check() {
  local bad
  bad=$(vt_psql -d "$1" -tAc "SELECT count(*) FROM public.prompts WHERE tenant_id IS DISTINCT FROM
           vital_tenancy.classify_prompt_tenant(name, domain, created_by, NULL)")
  [ "$bad" = 0 ] || { echo "FAILED: $1 has $bad prompts whose tenant is not the classifier's" >&2; exit 1; }
}

run_shipped() {
  local db=vt_real_a before t0 after
  copy "$db"
  before=$(sizes "$db")
  [ "$r" = 1 ] && echo "prompts: ${ROWS} rows, ${INDEXES} indexes, ${PLATFORM_SHARE}% classify to Platform"
  # ctid + xmin of the rows that stay Platform, to check they were not rewritten.
  vt_psql -d "$db" -c "CREATE TABLE public.bench_untouched AS SELECT id, ctid::text AS tid, xmin::text AS txmin FROM public.prompts
                        WHERE vital_tenancy.classify_prompt_tenant(name, domain, created_by, NULL) = vital_tenancy.platform_tenant_id()"
  vt_psql -d "$db" -c CHECKPOINT
  t0=$(now_ms)
  vt_psql -d "$db" -f "$MIG/003_platform_data.sql" >/dev/null 2>&1
  vt_psql -d "$db" -f "$MIG/004_tenant_data.sql" >/dev/null 2>&1
  TS=$(( $(now_ms) - t0 ))
  after=$(sizes "$db")
  check "$db"
  REWRITTEN=$(vt_psql -d "$db" -tAc "SELECT count(*) FROM public.bench_untouched u JOIN public.prompts p USING (id)
                                     WHERE p.ctid::text <> u.tid OR p.xmin::text <> u.txmin")
  UNTOUCHED=$(vt_psql -d "$db" -tAc "SELECT count(*) FROM public.bench_untouched")
  SIZE_S=$(awk -v b="$before" -v a="$after" 'BEGIN { split(b, x, " "); split(a, y, " "); printf "%.2f× / %.2f×", y[1] / x[1], y[2] / x[2] }')
}
run_update() {
  local db=vt_real_b before t0 after col
  copy "$db"
  before=$(sizes "$db")
  col="ALTER TABLE public.prompts ADD COLUMN tenant_id uuid"
  [ "$PARTIAL" = 1 ] && col="SELECT 1"
  t0=$(now_ms)
  vt_psql -d "$db" -c "$col" -c "UPDATE public.prompts SET tenant_id = vital_tenancy.classify_prompt_tenant(name, domain, created_by, NULL)" >/dev/null
  TU=$(( $(now_ms) - t0 ))
  after=$(sizes "$db")
  check "$db"
  SIZE_U=$(awk -v b="$before" -v a="$after" 'BEGIN { split(b, x, " "); split(a, y, " "); printf "%.2f× / %.2f×", y[1] / x[1], y[2] / x[2] }')
}

RATIOS=()
printf '\n| round | shipped 003+004 | size after/before (heap / with indexes) | ADD COLUMN + one UPDATE | size after/before | ratio |\n|---|---:|---:|---:|---:|---:|\n' > /tmp/backfill_real.md
for r in $(seq 1 "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then run_shipped; run_update; else run_update; run_shipped; fi
  ratio=$(awk -v a="$TS" -v b="$TU" 'BEGIN { printf "%.2f", a / b }')
  RATIOS+=("$ratio")
  printf '| %s | %.1f s | %s | %.1f s | %s | %s× |\n' "$r" "$(awk -v v="$TS" 'BEGIN{print v/1000}')" "$SIZE_S" \
    "$(awk -v v="$TU" 'BEGIN{print v/1000}')" "$SIZE_U" "$ratio" >> /tmp/backfill_real.md
  echo "round $r: shipped ${TS} ms, update ${TU} ms, ratio ${ratio}; rows staying Platform rewritten: ${REWRITTEN} of ${UNTOUCHED}"
done
MEDIAN=$(printf '%s\n' "${RATIOS[@]}" | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }')
cat /tmp/backfill_real.md
echo
echo "prompts: ${ROWS} rows (x${SCALE}), ${INDEXES} indexes, ${PLATFORM_SHARE}% Platform; PARTIAL=${PARTIAL}"
echo "median time ratio shipped / one UPDATE: ${MEDIAN}×; Platform rows rewritten by the shipped backfill: ${REWRITTEN} of ${UNTOUCHED}"
