#!/usr/bin/env bash
# Benchmark: classify_prompt_tenant in Rust versus the same rules in PL/pgSQL and in
# an inline SQL CASE, and the floor count(length(name)), on ~1M synthetic prompt rows
# shaped like the real fixture (the 1078 fixture prompts repeated 928 times with
# distinct names). Parallel query off, so each figure is one backend's work.
#
#   bash benches/classify.sh [runs]      (default 5 runs; prints medians and ratios)
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
RUNS="${1:-5}"

vt_install_deps
vt_install_extension --release
vt_cluster_start "$(vt_cluster_name bench)" "${VT_BENCH_PORT:-54331}"
if ! vt_psql -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'vt_bench'" | grep -q 1; then
  log "loading the fixture and building 1M prompt rows"
  vt_fresh_fixture_db vt_bench
fi
vt_psql -d vt_bench <<'SQL'
DROP EXTENSION IF EXISTS vital_tenancy; DROP SCHEMA IF EXISTS vital_tenancy;
CREATE EXTENSION vital_tenancy;
CREATE TABLE IF NOT EXISTS bench_prompts AS
  SELECT p.name || '-' || g AS name, p.domain::text AS domain, p.created_by
    FROM public.prompts p CROSS JOIN generate_series(1, 928) g;
VACUUM ANALYZE bench_prompts;

-- (b) the default prompt rules with the same normalisation, in PL/pgSQL
CREATE OR REPLACE FUNCTION bench_plpgsql_classify(name text, domain text, created_by uuid, is_system boolean)
RETURNS uuid LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE d text := regexp_replace(lower(btrim(domain)), '[[:space:]-]+', '_', 'g');
BEGIN
  IF strpos(lower(name), 'prism') > 0 OR d IN ('regulatory_affairs', 'clinical_research', 'pharmacovigilance') THEN
    RETURN 'f7aa6fd4-0af9-4706-8b31-034f1f7accda';
  END IF;
  IF d IN ('digital_health', 'digital_medicine') THEN
    RETURN '11111111-1111-1111-1111-111111111111';
  END IF;
  IF created_by IS NULL OR is_system THEN
    RETURN '00000000-0000-0000-0000-000000000001';
  END IF;
  RETURN '11111111-1111-1111-1111-111111111111';
END $$;
SQL

declare -A QUERIES=(
  [a_rust]="SELECT count(vital_tenancy.classify_prompt_tenant(name, domain, created_by, NULL)) FROM bench_prompts"
  [b_plpgsql]="SELECT count(bench_plpgsql_classify(name, domain, created_by, NULL)) FROM bench_prompts"
  [c_sql_case]="SELECT count(CASE
      WHEN strpos(lower(name), 'prism') > 0
        OR regexp_replace(lower(btrim(domain)), '[[:space:]-]+', '_', 'g') IN ('regulatory_affairs', 'clinical_research', 'pharmacovigilance')
        THEN 'f7aa6fd4-0af9-4706-8b31-034f1f7accda'::uuid
      WHEN regexp_replace(lower(btrim(domain)), '[[:space:]-]+', '_', 'g') IN ('digital_health', 'digital_medicine')
        THEN '11111111-1111-1111-1111-111111111111'::uuid
      WHEN created_by IS NULL THEN '00000000-0000-0000-0000-000000000001'::uuid
      ELSE '11111111-1111-1111-1111-111111111111'::uuid END) FROM bench_prompts"
  [d_floor]="SELECT count(length(name)) FROM bench_prompts"
)

# The three classifiers must agree before their speed means anything.
vt_psql -d vt_bench -tAc "SELECT count(*) FROM bench_prompts
  WHERE vital_tenancy.classify_prompt_tenant(name, domain, created_by, NULL)
        IS DISTINCT FROM bench_plpgsql_classify(name, domain, created_by, NULL)" | {
  read -r n; [ "$n" = 0 ] || { echo "Rust and PL/pgSQL disagree on $n rows" >&2; exit 1; }; }

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
declare -A MED
rows=$(vt_psql -d vt_bench -tAc "SELECT count(*) FROM bench_prompts")
for key in a_rust b_plpgsql c_sql_case d_floor; do
  times=()
  for _ in $(seq "$RUNS"); do
    t=$(vt_psql -d vt_bench -tA -c "SET max_parallel_workers_per_gather = 0" -c '\timing on' -c "${QUERIES[$key]}" \
        | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p')
    times+=("$t")
  done
  MED[$key]=$(printf '%s\n' "${times[@]}" | median)
  echo "$key: runs ${times[*]} ms; median ${MED[$key]} ms" >&2
done

echo
echo "rows: ${rows}, runs: ${RUNS}, PostgreSQL $(vt_psql -d vt_bench -tAc 'SHOW server_version')"
echo
echo "| variant | median (ms) | time relative to Rust |"
echo "|---|---:|---:|"
for key in a_rust b_plpgsql c_sql_case d_floor; do
  awk -v k="$key" -v t="${MED[$key]}" -v r="${MED[a_rust]}" 'BEGIN { printf "| %s | %.0f | %.2fx |\n", k, t, t / r }'
done
