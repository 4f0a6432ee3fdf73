#!/usr/bin/env bash
# Benchmark: a tenant's requests on the 3-node Citus test cluster (scripts/citus-cluster)
# holding the real fixture migrated by 000-008 (32 shards), as an ordinary LOGIN
# application role, each transaction BEGIN; SET LOCAL vital.tenant_id; the statements;
# COMMIT. Needs citus.so installed for PostgreSQL 15 (built by hand; see docs/citus.md);
# exits 3 without it. Two tables:
#
#   routing  the fixture as migrated: per request shape, Task Count and pgbench latency
#            and throughput with routing from the context (vital_tenancy.citus_routing,
#            the default) and without it, simple and prepared protocol, 1 and 8 clients.
#   scale    the real shape scaled up: 100 tenants with SaaS skew (the largest about 60%
#            of the rows), prompts x50; the application's mix (/api/prompts-crud GET: the
#            page and its exact count; a point read; an INSERT) for the largest tenant and
#            a small one: Task Count and p50/p95 latency through the policies (routed)
#            against the same SQL with the hand-written tenant predicate (routing off).
#
#   bash benches/citus_routing.sh [routing|scale|both] [seconds]     (default both, 10 s)
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
WHAT="${1:-both}"
SECONDS_EACH="${2:-10}"
DB=vt_bench_route
PHARMA=f7aa6fd4-0af9-4706-8b31-034f1f7accda
PLATFORM=00000000-0000-0000-0000-000000000001
SMALL=11111111-1111-1111-1111-111111111111

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
app="${conn/user=postgres/user=vt_bench_app}"
dir="$(mktemp -d)"
trap 'rm -rf "${dir}"' EXIT

# One pgbench script per request: BEGIN, the tenant, the statements, COMMIT.
script() { # file tenant statements...
  local f="${dir}/$1" t="$2"; shift 2
  { echo "BEGIN;"; echo "SET LOCAL vital.tenant_id = '${t}';"; printf '%s;\n' "$@"; echo "COMMIT;"; } > "${f}"
  chmod a+r "${dir}" "${f}"
}

# The Task Count of each statement's EXPLAIN (joined by +), for a tenant and a routing.
tasks() { # routing tenant statements...
  local routing="$1" t="$2"; shift 2
  local s out=()
  for s in "$@"; do
    out+=("$(PGOPTIONS="-c vital_tenancy.citus_routing=${routing}" vt_psql "${app}" -tA <<EOF | sed -n 's/^ *Task Count: //p' | head -1
BEGIN;
SET LOCAL vital.tenant_id = '${t}';
EXPLAIN ${s};
ROLLBACK;
EOF
)")
  done
  (IFS=+; echo "${out[*]}")
}

# pgbench one script: prints "latency_avg tps p50 p95" (ms, per transaction).
bench() { # routing mode clients file
  local routing="$1" mode="$2" c="$3" f="$4" out
  rm -f "${dir}"/log.*
  out="$(cd "${dir}" && PGOPTIONS="-c vital_tenancy.citus_routing=${routing}" \
    "${VT_PG_BIN}/pgbench" -n -h 127.0.0.1 -p 54350 -U vt_bench_app -M "${mode}" -c "${c}" -j "${c}" \
    -T "${SECONDS_EACH}" -l --log-prefix="${dir}/log" -f "${f}" "${DB}" 2>&1)"
  local lat tps
  lat="$(sed -n 's/^latency average = \([0-9.]*\) ms/\1/p' <<<"${out}")"
  tps="$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' <<<"${out}")"
  [ -n "${tps}" ] || { echo "pgbench failed: ${out}" >&2; exit 1; }
  local pct
  pct="$(cat "${dir}"/log.* | awk '{print $3}' | sort -n | awk '{v[NR]=$1} END {printf "%.1f %.1f", v[int(NR*0.5)+1]/1000, v[int(NR*0.95)+1]/1000}')"
  echo "${lat} ${tps} ${pct}"
}

if [ "${WHAT}" = routing ] || [ "${WHAT}" = both ]; then
  id="$(vt_psql "${conn}" -tAc "SELECT id FROM public.prompts WHERE tenant_id = '${PHARMA}' ORDER BY id LIMIT 1")"
  declare -A SQL=(
    [point]="SELECT * FROM public.prompts WHERE id = '${id}'"
    [count]="SELECT count(*) FROM public.prompts"
    [active50]="SELECT id, name FROM public.prompts WHERE status = 'active' ORDER BY created_at DESC LIMIT 50"
    [update]="UPDATE public.prompts SET updated_at = updated_at WHERE id = '${id}'"
  )
  echo
  echo "| request (Pharmaceuticals) | routing | Task Count | protocol | clients | latency avg ms | tps |"
  echo "|---|---|---:|---|---:|---:|---:|"
  for k in point count active50 update; do
    script "${k}.sql" "${PHARMA}" "${SQL[$k]}"
    for routing in on off; do
      t="$(tasks "${routing}" "${PHARMA}" "${SQL[$k]}")"
      for mode in simple prepared; do
        for c in 1 8; do
          read -r lat tps _ _ <<<"$(bench "${routing}" "${mode}" "${c}" "${dir}/${k}.sql")"
          echo "| ${k} | ${routing} | ${t} | ${mode} | ${c} | ${lat} | ${tps} |"
        done
      done
    done
  done
fi

if [ "${WHAT}" = scale ] || [ "${WHAT}" = both ]; then
  log "scaling: 100 tenants, prompts x50 (Pharmaceuticals about 60%)"
  vt_psql "${conn}" -q <<SQL
-- 97 more tenants: 100 in all.
INSERT INTO public.tenants (id, name, slug, type)
SELECT ('22222222-0000-4000-8000-' || lpad(g::text, 12, '0'))::uuid, 'Tenant ' || g, 'tenant-' || g, 'client'
  FROM generate_series(1, 97) g
ON CONFLICT DO NOTHING;
SELECT array_agg(id ORDER BY id)::text AS others FROM public.tenants
 WHERE id NOT IN ('${PHARMA}', '${PLATFORM}') \gset
-- 49 copies of every prompt, in the real shape (every column copied), spread with SaaS
-- skew: 60% Pharmaceuticals, 8% Platform, the rest over the other 98 tenants.
-- (Computed on the coordinator from a local copy: Citus pushes no such SELECT down.)
CREATE TEMP TABLE vt_src AS SELECT * FROM public.prompts;
INSERT INTO public.prompts
SELECT (pg_catalog.jsonb_populate_record(NULL::public.prompts, pg_catalog.to_jsonb(p) || pg_catalog.jsonb_build_object(
          'id', gen_random_uuid(),
          'name', p.name || ' #' || g,
          'tenant_id', CASE WHEN abs(hashtext(p.id::text || g)) % 100 < 60 THEN '${PHARMA}'::uuid
                            WHEN abs(hashtext(p.id::text || g)) % 100 < 68 THEN '${PLATFORM}'::uuid
                            ELSE (:'others'::uuid[])[1 + abs(hashtext(p.id::text || g)) % 98] END,
          'created_at', p.created_at - g * interval '1 day'))).*
  FROM vt_src p, generate_series(1, 49) g;
ANALYZE public.prompts;
SQL
  vt_psql "${conn}" -tAc "SELECT count(*), round(100.0 * count(*) FILTER (WHERE tenant_id = '${PHARMA}') / count(*)), count(DISTINCT tenant_id) FROM public.prompts" \
    | awk -F'|' '{print "prompts: " $1 " rows, Pharmaceuticals " $2 "%, " $3 " tenants"}'
  filter="status = 'active' AND (name ILIKE '%a%' OR display_name ILIKE '%a%')"
  page="SELECT id, tenant_id, name FROM public.prompts WHERE ${filter} ORDER BY created_at DESC LIMIT 25 OFFSET 0"
  count="SELECT count(*) FROM public.prompts WHERE ${filter}"
  insert="INSERT INTO public.prompts (name, display_name, description) VALUES ('bench ' || gen_random_uuid(), 'Bench', 'a prompt written by the benchmark')"
  echo
  echo "| tenant | request | path | Task Count | p50 ms | p95 ms | tps (1 client) |"
  echo "|---|---|---|---:|---:|---:|---:|"
  for t in "${PHARMA}" "${SMALL}"; do
    name=Pharmaceuticals; [ "${t}" = "${SMALL}" ] && name="Digital Health (small)"
    id="$(vt_psql "${conn}" -tAc "SELECT id FROM public.prompts WHERE tenant_id = '${t}' ORDER BY id LIMIT 1")"
    hand="tenant_id = ANY (ARRAY['${t}', '${PLATFORM}']::uuid[])"
    point="SELECT * FROM public.prompts WHERE id = '${id}'"
    for path in policies hand-written; do
      if [ "${path}" = policies ]; then
        routing=on; p=("${page}" "${count}"); q="${point}"
      else
        routing=off; p=("${page/WHERE /WHERE ${hand} AND }" "${count/WHERE /WHERE ${hand} AND }"); q="${point} AND ${hand}"
      fi
      script get.sql "${t}" "${p[@]}"
      script point.sql "${t}" "${q}"
      script insert.sql "${t}" "${insert}"
      for r in get point insert; do
        case "${r}" in
          get) label="GET /api/prompts-crud"; tc="$(tasks "${routing}" "${t}" "${p[0]}" "${p[1]}")" ;;
          point) label="point read"; tc="$(tasks "${routing}" "${t}" "${q}")" ;;
          insert) label="INSERT"; tc="$(tasks "${routing}" "${t}" "${insert}")" ;;
        esac
        read -r _ tps p50 p95 <<<"$(bench "${routing}" simple 1 "${dir}/${r}.sql")"
        echo "| ${name} | ${label} | ${path} | ${tc} | ${p50} | ${p95} | ${tps} |"
      done
    done
  done
fi
