#!/usr/bin/env bash
# Benchmark: the tenant column's DEFAULT vital_tenancy.current_tenant_id() evaluated
# for every row of a big INSERT must cost a comparison, not a query (the context is
# cached per statement). 100k rows inserted as an ordinary role with set_tenant():
#   (a) tenant_id left to the DEFAULT, (b) tenant_id given explicitly, and on the
#   narrow table (c) a DEFAULT that runs one query per row, for contrast,
# on the migrated real fixture's prompts table (its columns, nine indexes, uuid keys,
# RLS WITH CHECK) and on a narrow synthetic table where the default's cost is not
# hidden by index maintenance. Each INSERT is rolled back; medians of N runs.
#
#   bash benches/context_default.sh [runs]      (default 5)
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
RUNS="${1:-5}"
ROWS="${ROWS:-100000}"

vt_install_deps
vt_install_extension --release
vt_cluster_start "$(vt_cluster_name bench)" "${VT_BENCH_PORT:-54331}"
vt_fresh_fixture_db vt_bench_ctx
CONN="host=${VT_HOST} port=${VT_PORT} user=postgres dbname=vt_bench_ctx"
vt_psql -d vt_bench_ctx -c "CREATE EXTENSION vital_tenancy"
log "migrating the real fixture"
PG_BIN="${VT_PG_BIN}" bash "${VT_ROOT}/scripts/migrate" "$CONN" --no-backup --report /dev/null >/dev/null 2>&1
vt_psql -d vt_bench_ctx <<'SQL'
CREATE TABLE public.narrow (id bigserial PRIMARY KEY, tenant_id uuid NOT NULL REFERENCES public.tenants (id), n integer);
SELECT count(*) FROM vital_tenancy.enable_tenant_rls('public.narrow');
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'vt_bench_backend') THEN CREATE ROLE vt_bench_backend LOGIN; END IF; END $$;
GRANT vital_tenancy_context, authenticated TO vt_bench_backend;
CREATE TABLE public.narrow_q (id bigserial PRIMARY KEY, tenant_id uuid NOT NULL REFERENCES public.tenants (id), n integer);
-- PL/pgSQL is not inlined: one lookup query per inserted row.
CREATE FUNCTION public.tenant_by_query() RETURNS uuid LANGUAGE plpgsql STABLE
  AS $$ BEGIN RETURN (SELECT id FROM public.tenants WHERE id = '11111111-1111-1111-1111-111111111111'); END $$;
ALTER TABLE public.narrow_q ALTER COLUMN tenant_id SET DEFAULT public.tenant_by_query();
GRANT SELECT, INSERT ON public.narrow, public.narrow_q TO authenticated;
GRANT USAGE ON SEQUENCE public.narrow_q_id_seq TO authenticated;
GRANT USAGE ON SEQUENCE public.narrow_id_seq TO authenticated;
SQL
T="'11111111-1111-1111-1111-111111111111'"
declare -A Q=(
  [prompts_a_default]="INSERT INTO public.prompts (name, display_name, description, domain) SELECT 'bench-' || g, 'Bench ' || g, 'benchmark prompt', 'digital_health' FROM generate_series(1, ${ROWS}) g"
  [prompts_b_explicit]="INSERT INTO public.prompts (name, display_name, description, domain, tenant_id) SELECT 'bench-' || g, 'Bench ' || g, 'benchmark prompt', 'digital_health', ${T} FROM generate_series(1, ${ROWS}) g"
  [narrow_a_default]="INSERT INTO public.narrow (n) SELECT g FROM generate_series(1, ${ROWS}) g"
  [narrow_b_explicit]="INSERT INTO public.narrow (n, tenant_id) SELECT g, ${T} FROM generate_series(1, ${ROWS}) g"
  [narrow_c_query]="INSERT INTO public.narrow_q (n) SELECT g FROM generate_series(1, ${ROWS}) g"
)
run() {
  vt_psql "host=${VT_HOST} port=${VT_PORT} user=vt_bench_backend dbname=vt_bench_ctx" -tA \
    -c "BEGIN; SELECT vital_tenancy.set_tenant(${T}); SET LOCAL ROLE authenticated;" -c '\timing on' -c "$1" -c 'ROLLBACK' \
    | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' | sed -n 1p
}
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
rm -f "${VT_WORK}"/ctx-*.times
for _ in $(seq "$RUNS"); do
  for k in prompts_a_default prompts_b_explicit narrow_a_default narrow_b_explicit narrow_c_query; do
    echo "$(run "${Q[$k]}")" >> "${VT_WORK}/ctx-$k.times"
  done
done
echo
echo "| table | (a) DEFAULT current_tenant_id() | (b) explicit tenant_id | (a)/(b) |"
echo "|---|---:|---:|---:|"
for t in prompts narrow; do
  a=$(median < "${VT_WORK}/ctx-${t}_a_default.times"); b=$(median < "${VT_WORK}/ctx-${t}_b_explicit.times")
  awk -v t="$t" -v a="$a" -v b="$b" -v n="$ROWS" 'BEGIN { printf "| %s (%d rows) | %.1f ms | %.1f ms | %.2fx |\n", t, n, a, b, a / b }'
done
c=$(median < "${VT_WORK}/ctx-narrow_c_query.times"); b=$(median < "${VT_WORK}/ctx-narrow_b_explicit.times")
awk -v c="$c" -v b="$b" 'BEGIN { printf "\n(c) narrow with a DEFAULT that runs a query per row: %.1f ms (%.2fx the explicit value)\n", c, c / b }'
rm -f "${VT_WORK}"/ctx-*.times
