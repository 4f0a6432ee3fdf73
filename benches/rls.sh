#!/usr/bin/env bash
# Benchmark: a tenant's read under enable_tenant_rls versus the same read with RLS
# off and an explicit `tenant_id = ANY (ARRAY[tenant, platform])` predicate, versus a
# policy that calls a per-row function, versus the Citus policy shape on this single node
# (citus_safe_policies: permissive only, boundary inline). 1M rows, 100 tenants, a small
# Platform share.
#
#   bash benches/rls.sh [runs]      (default 7; prints medians and ratios)
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
RUNS="${1:-7}"

vt_install_deps
vt_install_extension --release
vt_cluster_start "$(vt_cluster_name bench)" "${VT_BENCH_PORT:-54331}"
vt_psql -d postgres -c "DROP DATABASE IF EXISTS vt_bench_rls WITH (FORCE)" -c "CREATE DATABASE vt_bench_rls"
log "building 1M rows over 100 tenants"
vt_psql -d vt_bench_rls <<'SQL'
CREATE EXTENSION vital_tenancy;
SELECT count(*) FROM vital_tenancy.ensure_tenants('public.tenants');
-- 97 more tenants: 100 in all.
INSERT INTO public.tenants (id, name, slug)
SELECT ('22222222-0000-4000-8000-' || lpad(g::text, 12, '0'))::uuid, 'Tenant ' || g, 'tenant-' || g
  FROM generate_series(1, 97) g;
-- 1M rows: 2% Platform, the rest spread evenly over the 99 other tenants.
CREATE TABLE items (id bigserial PRIMARY KEY, tenant_id uuid NOT NULL REFERENCES tenants (id), payload text);
WITH t AS (SELECT array_agg(id ORDER BY id) AS ids FROM tenants WHERE id <> vital_tenancy.platform_tenant_id())
INSERT INTO items (tenant_id, payload)
SELECT CASE WHEN g % 50 = 0 THEN vital_tenancy.platform_tenant_id() ELSE t.ids[1 + g % 99] END,
       md5(g::text)
  FROM t, generate_series(1, 1000000) g;
CREATE INDEX items_tenant_idx ON items (tenant_id);
-- Same data, same index, no RLS: the explicit-predicate baseline.
CREATE TABLE items_plain AS SELECT * FROM items;
CREATE INDEX items_plain_tenant_idx ON items_plain (tenant_id);
-- Same data with a per-row-function policy: the shape to avoid.
CREATE TABLE items_fn AS SELECT * FROM items;
CREATE INDEX items_fn_tenant_idx ON items_fn (tenant_id);
-- PL/pgSQL, so it is not inlined: called once per row, as such policies are.
CREATE FUNCTION can_read(t uuid) RETURNS boolean LANGUAGE plpgsql STABLE
  AS $$ BEGIN RETURN t = ANY (vital_tenancy.visible_tenant_ids()); END $$;
ALTER TABLE items_fn ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY per_row ON items_fn USING (can_read(tenant_id));
SELECT count(*) FROM vital_tenancy.enable_tenant_rls('items');
-- Same data in the Citus shape (permissive policies only, the boundary inline, no
-- sub-select), on this single node: still index-friendly?
CREATE TABLE items_citus AS SELECT * FROM items;
CREATE INDEX items_citus_tenant_idx ON items_citus (tenant_id);
SELECT count(*) FROM vital_tenancy.enable_tenant_rls('items_citus');
SELECT count(*) FROM vital_tenancy.citus_safe_policies('items_citus');
VACUUM ANALYZE items_citus;
VACUUM ANALYZE items; VACUUM ANALYZE items_plain; VACUUM ANALYZE items_fn;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'vt_bench_app') THEN CREATE ROLE vt_bench_app; END IF; END $$;
GRANT SELECT ON items, items_plain, items_fn, items_citus TO vt_bench_app;
GRANT EXECUTE ON FUNCTION can_read(uuid) TO vt_bench_app;
SQL

TENANT="'11111111-1111-1111-1111-111111111111'"
PREFIX="SET max_parallel_workers_per_gather = 0; BEGIN; SELECT vital_tenancy.set_tenant(${TENANT}); SET LOCAL ROLE vt_bench_app;"
declare -A QUERIES=(
  [a_rls]="SELECT count(*), sum(length(payload)) FROM items"
  [b_explicit]="SELECT count(*), sum(length(payload)) FROM items_plain WHERE tenant_id = ANY (ARRAY[${TENANT}::uuid, vital_tenancy.platform_tenant_id()])"
  [c_per_row_fn]="SELECT count(*), sum(length(payload)) FROM items_fn"
  [d_citus_shape]="SELECT count(*), sum(length(payload)) FROM items_citus"
)
# All three must return the same rows.
result() { vt_psql -d vt_bench_rls -tA -c "${PREFIX}" -c "$1" -c 'COMMIT' | grep '|'; }
results=$(for k in a_rls b_explicit c_per_row_fn d_citus_shape; do result "${QUERIES[$k]}"; done | sort -u | wc -l)
[ "$results" = 1 ] || { echo "the four reads disagree" >&2; exit 1; }

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
declare -A MED
for key in a_rls b_explicit c_per_row_fn d_citus_shape; do
  times=()
  for _ in $(seq "$RUNS"); do
    t=$(vt_psql -d vt_bench_rls -tA -c "${PREFIX}" -c '\timing on' -c "${QUERIES[$key]}" -c 'COMMIT' \
        | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' | sed -n 1p)
    times+=("$t")
  done
  MED[$key]=$(printf '%s\n' "${times[@]}" | median)
  echo "$key: runs ${times[*]} ms; median ${MED[$key]} ms" >&2
done
rows=$(result "${QUERIES[a_rls]}")
echo
echo "rows the tenant reads (count|bytes): ${rows} of 1,000,000; runs: ${RUNS}"
for key in a_rls d_citus_shape; do
  echo "  ${key}:"
  vt_psql -d vt_bench_rls -tA -c "${PREFIX}" -c "EXPLAIN (COSTS OFF) ${QUERIES[$key]}" -c 'COMMIT' | grep -E "Index|Bitmap|Seq|Filter" | sed 's/^/    /'
done
echo
echo "| variant | median (ms) | relative to explicit predicate |"
echo "|---|---:|---:|"
for key in a_rls b_explicit c_per_row_fn d_citus_shape; do
  awk -v k="$key" -v t="${MED[$key]}" -v r="${MED[b_explicit]}" 'BEGIN { printf "| %s | %.1f | %.2fx |\n", k, t, t / r }'
done
