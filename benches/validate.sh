#!/usr/bin/env bash
# Benchmark: validate() over six tables of 1M rows each (tenant_id indexed, 100
# tenants) against one count(*) scan of each of the same tables; and, on the migrated
# real fixture, the plan's tenant-distribution query (LEFT JOINs of four tables with
# COUNT(DISTINCT), which multiplies rows) against tenant_distribution().
#
#   bash benches/validate.sh [runs]      (default 5; medians)
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
RUNS="${1:-5}"
vt_install_deps
vt_install_extension --release
vt_cluster_start "$(vt_cluster_name bench)" "${VT_BENCH_PORT:-54331}"
vt_psql -d postgres -c "DROP DATABASE IF EXISTS vt_bench_val WITH (FORCE)" -c "CREATE DATABASE vt_bench_val"
log "six tables x 1M rows"
vt_psql -d vt_bench_val <<'SQL'
CREATE EXTENSION vital_tenancy;
SELECT count(*) FROM vital_tenancy.ensure_tenants('public.tenants');
INSERT INTO public.tenants (id, name, slug)
SELECT ('22222222-0000-4000-8000-' || lpad(g::text, 12, '0'))::uuid, 'Tenant ' || g, 'tenant-' || g FROM generate_series(1, 97) g;
DO $$
DECLARE i int;
BEGIN
  FOR i IN 1..6 LOOP
    EXECUTE format('CREATE TABLE t%s (id bigint PRIMARY KEY, tenant_id uuid NOT NULL REFERENCES tenants (id), payload text)', i);
    EXECUTE format($f$INSERT INTO t%s SELECT g, (SELECT array_agg(id ORDER BY id) FROM tenants)[1 + g %% 100], md5(g::text)
                      FROM generate_series(1, 1000000) g$f$, i);
    EXECUTE format('CREATE INDEX ON t%s (tenant_id)', i);
  END LOOP;
END $$;
VACUUM ANALYZE t1; VACUUM ANALYZE t2; VACUUM ANALYZE t3; VACUUM ANALYZE t4; VACUUM ANALYZE t5; VACUUM ANALYZE t6;
SQL
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
timed() { # db sql -> ms
  vt_psql -d "$1" -tA -c "SET max_parallel_workers_per_gather = 0" -c '\timing on' -c "$2" | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' | tail -1
}
COUNTS="SELECT (SELECT count(*) FROM t1) + (SELECT count(*) FROM t2) + (SELECT count(*) FROM t3) + (SELECT count(*) FROM t4) + (SELECT count(*) FROM t5) + (SELECT count(*) FROM t6)"
VALIDATE="SELECT count(*) FROM vital_tenancy.validate()"
declare -a tc tv
for _ in $(seq "$RUNS"); do tc+=("$(timed vt_bench_val "$COUNTS")"); tv+=("$(timed vt_bench_val "$VALIDATE")"); done
mc=$(printf '%s\n' "${tc[@]}" | median); mv=$(printf '%s\n' "${tv[@]}" | median)
echo "count(*) x6: ${tc[*]} ms; validate(): ${tv[*]} ms" >&2

log "the plan's distribution query vs tenant_distribution(), on the migrated fixture"
vt_fresh_fixture_db vt_bench_fix
vt_psql -d vt_bench_fix -c "CREATE EXTENSION vital_tenancy" >/dev/null
bash "${VT_ROOT}/scripts/migrate" "host=${VT_HOST} port=${VT_PORT} user=postgres dbname=vt_bench_fix" --no-backup --report /dev/null >/dev/null 2>&1
PLAN_Q="SELECT t.name AS tenant, COUNT(DISTINCT a.id) AS agents, COUNT(DISTINCT p.id) AS prompts,
               COUNT(DISTINCT kb.id) AS knowledge_chunks, COUNT(DISTINCT tl.id) AS tools
          FROM tenants t LEFT JOIN agents a ON a.tenant_id = t.id LEFT JOIN prompts p ON p.tenant_id = t.id
          LEFT JOIN knowledge_base kb ON kb.tenant_id = t.id LEFT JOIN tools tl ON tl.tenant_id = t.id
         GROUP BY t.id, t.name ORDER BY t.created_at"
JOINED="SELECT count(*) FROM tenants t LEFT JOIN agents a ON a.tenant_id = t.id LEFT JOIN prompts p ON p.tenant_id = t.id
          LEFT JOIN knowledge_base kb ON kb.tenant_id = t.id LEFT JOIN tools tl ON tl.tenant_id = t.id"
OURS="SELECT * FROM vital_tenancy.tenant_distribution()"
declare -a tp to
for _ in $(seq "$RUNS"); do tp+=("$(timed vt_bench_fix "$PLAN_Q")"); to+=("$(timed vt_bench_fix "$OURS")"); done
mp=$(printf '%s\n' "${tp[@]}" | median); mo=$(printf '%s\n' "${to[@]}" | median)
joined=$(vt_psql -d vt_bench_fix -tAc "$JOINED")
same=$(vt_psql -d vt_bench_fix -tA -c "
  WITH plan AS ($PLAN_Q),
       ours AS (SELECT tn.name AS tenant,
                       coalesce(sum(row_count) FILTER (WHERE table_name = 'public.agents'), 0) AS agents,
                       coalesce(sum(row_count) FILTER (WHERE table_name = 'public.prompts'), 0) AS prompts,
                       coalesce(sum(row_count) FILTER (WHERE table_name = 'public.knowledge_base'), 0) AS knowledge_chunks,
                       coalesce(sum(row_count) FILTER (WHERE table_name = 'public.tools'), 0) AS tools
                  FROM tenants tn LEFT JOIN vital_tenancy.tenant_distribution() d ON d.tenant_id = tn.id GROUP BY tn.name)
  SELECT count(*) FROM plan FULL JOIN ours USING (tenant)
   WHERE (plan.agents, plan.prompts, plan.knowledge_chunks, plan.tools) IS DISTINCT FROM (ours.agents, ours.prompts, ours.knowledge_chunks, ours.tools)")

echo
echo "| measurement | median | ratio |"
echo "|---|---:|---:|"
awk -v c="$mc" -v v="$mv" 'BEGIN { printf "| count(*) over six 1M-row tables | %.0f ms | 1.00x |\n| validate() over the same tables | %.0f ms | %.2fx |\n", c, v, v / c }'
awk -v p="$mp" -v o="$mo" -v j="$joined" 'BEGIN { printf "| plan distribution query (fixture; the joins produce %s rows) | %.0f ms | %.0fx |\n| tenant_distribution() (fixture) | %.1f ms | 1.00x |\n", j, p, p / o, o }'
echo
echo "the plan's query and tenant_distribution() disagree on ${same} tenants (0 = same counts)"
