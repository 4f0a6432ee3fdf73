#!/usr/bin/env bash
# Benchmark: the application's own hot reads on the migrated real fixture, scaled up
# (every table's rows copied SCALE times in their real shape and tenant mix: columns,
# indexes, uuid keys), as PostgREST runs them for the VITAL API routes (the server-side
# role, the tenant in x-tenant-id, pre_request()), through PgBouncer in transaction
# mode, CLIENTS clients, extended protocol:
#
#   prompts    GET /api/prompts-crud?status=active: the newest 50 active prompts with
#              PostgREST's exact count (one statement, in PostgREST's own shape)
#   agents     GET /api/agents?status=active: active agents by tier and name, with count
#   knowledge  knowledge search by domain: the domain's active chunks, newest 20
#
# for Pharmaceuticals (the busiest tenant of the fixture) and Digital Health; then the
# same SQL with the hand-written tenant predicate as a role that bypasses RLS. Three
# rounds: before any advice (the migrated schema), the workload recorded in
# pg_stat_statements and `scripts/migrate --apply-advice` run (query_advice()'s ddl),
# after. Prints p50/p95 latency and requests/s per request and round, the advice rows,
# index coverage and the estimate of the policy's `tenant_id = ANY ($0)` per tenant.
#
#   bash benches/app_queries.sh [seconds] [scale] [clients]    (default 20 s, x20, 8)
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
SECONDS_EACH="${1:-20}"
SCALE="${2:-20}"
CLIENTS="${3:-8}"
DB=vt_bench_app
PORT="${VT_BENCH_PORT:-54332}"
PHARMA=f7aa6fd4-0af9-4706-8b31-034f1f7accda
DIGITAL=11111111-1111-1111-1111-111111111111
PLATFORM=00000000-0000-0000-0000-000000000001

vt_install_deps
vt_install_extension --release
name="$(vt_cluster_name bench-app)"
# pg_stat_statements is preloaded, as on Supabase; the cluster is restarted so that it is.
vt_cluster_stop "${name}"
VT_PG_OPTS="-c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=all -c fsync=off" \
  vt_cluster_start "${name}" "${PORT}"
dir="$(mktemp -d)"
chmod 755 "${dir}"
bouncer_pid=""
cleanup() {
  [ -n "${bouncer_pid}" ] && kill "${bouncer_pid}" 2>/dev/null
  vt_cluster_stop "${name}"
  rm -rf "${dir}"
}
trap cleanup EXIT

log "loading the fixture, migrating it (000-008), scaling it x${SCALE}"
vt_fresh_fixture_db "${DB}"
vt_psql -d "${DB}" -qc "CREATE EXTENSION vital_tenancy"
conn="host=${VT_HOST} port=${VT_PORT} user=postgres dbname=${DB}"
bash "${VT_ROOT}/scripts/migrate" "${conn}" --no-backup --report "${dir}/report.md" >/dev/null
vt_psql -d "${DB}" -q -v scale="${SCALE}" <<'SQL'
-- Copies of every row of the application's hot tables, every column copied, in the
-- real tenant mix (a copy keeps its row's tenant), names kept unique.
CREATE FUNCTION pg_temp.copy(t regclass, changes text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  EXECUTE format('CREATE TEMP TABLE src AS SELECT * FROM %s', t);
  EXECUTE format(
    'INSERT INTO %1$s SELECT (pg_catalog.jsonb_populate_record(NULL::%1$s, pg_catalog.to_jsonb(s) || %2$s)).*
       FROM src s, generate_series(1, %3$s - 1) g', t, changes, current_setting('vt.scale'));
  DROP TABLE src;
END $$;
SELECT set_config('vt.scale', :'scale', false);
SELECT pg_temp.copy('public.prompts', $$pg_catalog.jsonb_build_object('id', gen_random_uuid(), 'name', s.name || ' #' || g,
         'created_at', s.created_at - g * interval '1 day')$$);
SELECT pg_temp.copy('public.agents', $$pg_catalog.jsonb_build_object('id', gen_random_uuid(), 'name', s.name || '-' || g,
         'created_at', s.created_at - g * interval '1 day')$$);
SELECT pg_temp.copy('public.knowledge_base', $$pg_catalog.jsonb_build_object('id', gen_random_uuid(),
         'pinecone_id', s.pinecone_id || '-' || g, 'chunk_index', s.chunk_index + 1000 * g,
         'created_at', s.created_at - g * interval '1 day')$$);
VACUUM ANALYZE public.prompts, public.agents, public.knowledge_base;
DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'vt_bench_authenticator') THEN
    CREATE ROLE vt_bench_authenticator LOGIN NOINHERIT; END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'vt_bench_dba') THEN
    CREATE ROLE vt_bench_dba LOGIN BYPASSRLS; END IF;
END $$;
GRANT vital_tenancy_service, vital_tenancy_context TO vt_bench_authenticator;
GRANT SELECT ON public.prompts, public.agents, public.knowledge_base TO vt_bench_dba;
CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
CREATE EXTENSION IF NOT EXISTS hypopg;
SQL
vt_psql -d "${DB}" -tA <<SQL | sed 's/^/  /'
SELECT t, count(*) AS rows, count(*) FILTER (WHERE tenant_id = '${PHARMA}') AS pharma,
       count(*) FILTER (WHERE tenant_id = '${DIGITAL}') AS digital, count(*) FILTER (WHERE tenant_id = '${PLATFORM}') AS platform
  FROM (SELECT 'prompts' AS t, tenant_id FROM public.prompts UNION ALL SELECT 'agents', tenant_id FROM public.agents
        UNION ALL SELECT 'knowledge_base', tenant_id FROM public.knowledge_base) x GROUP BY t ORDER BY t;
SQL

# PgBouncer in transaction mode in front of the cluster (as in front of PostgREST).
bport="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
printf '"vt_bench_authenticator" ""\n"vt_bench_dba" ""\n"postgres" ""\n' > "${dir}/users.txt"
cat > "${dir}/pgbouncer.ini" <<EOF
[databases]
${DB} = host=${VT_HOST} port=${VT_PORT} dbname=${DB} pool_size=${CLIENTS}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = ${bport}
unix_socket_dir =
auth_type = trust
auth_file = ${dir}/users.txt
pool_mode = transaction
max_client_conn = 200
default_pool_size = ${CLIENTS}
server_reset_query =
ignore_startup_parameters = extra_float_digits
logfile = ${dir}/pgbouncer.log
pidfile = ${dir}/pgbouncer.pid
EOF
chown -R postgres:postgres "${dir}"
runuser -u postgres -- pgbouncer "${dir}/pgbouncer.ini" >/dev/null 2>&1 &
bouncer_pid=$!
for _ in $(seq 50); do "${VT_PG_BIN}/pg_isready" -q -h 127.0.0.1 -p "${bport}" && break; sleep 0.1; done

# The requests' SQL, PostgREST's shape; WHERE is "" or the hand-written tenant predicate.
prompts_sql() { # extra-predicate
  cat <<EOF
WITH pgrst_source AS (SELECT "public"."prompts"."id", "public"."prompts"."name", "public"."prompts"."display_name", "public"."prompts"."description", "public"."prompts"."domain", "public"."prompts"."complexity_level", "public"."prompts"."status", "public"."prompts"."created_at" FROM "public"."prompts" WHERE "public"."prompts"."status" = 'active'$1 ORDER BY "public"."prompts"."created_at" DESC LIMIT 50 OFFSET 0), pgrst_source_count AS (SELECT 1 FROM "public"."prompts" WHERE "public"."prompts"."status" = 'active'$1) SELECT (SELECT pg_catalog.count(*) FROM pgrst_source_count) AS total_result_set, pg_catalog.count(_postgrest_t) AS page_total, coalesce(json_agg(_postgrest_t), '[]') AS body, nullif(current_setting('response.headers', true), '') AS response_headers, nullif(current_setting('response.status', true), '') AS response_status FROM (SELECT * FROM pgrst_source) _postgrest_t
EOF
}
agents_sql() {
  cat <<EOF
WITH pgrst_source AS (SELECT "public"."agents"."id", "public"."agents"."name", "public"."agents"."display_name", "public"."agents"."tier", "public"."agents"."status", "public"."agents"."business_function" FROM "public"."agents" WHERE "public"."agents"."status" = 'active'$1 ORDER BY "public"."agents"."tier" ASC, "public"."agents"."name" ASC LIMIT 100 OFFSET 0), pgrst_source_count AS (SELECT 1 FROM "public"."agents" WHERE "public"."agents"."status" = 'active'$1) SELECT (SELECT pg_catalog.count(*) FROM pgrst_source_count) AS total_result_set, pg_catalog.count(_postgrest_t) AS page_total, coalesce(json_agg(_postgrest_t), '[]') AS body FROM (SELECT * FROM pgrst_source) _postgrest_t
EOF
}
knowledge_sql() {
  cat <<EOF
SELECT "public"."knowledge_base"."id", "public"."knowledge_base"."source_id", "public"."knowledge_base"."chunk_index", "public"."knowledge_base"."content" FROM "public"."knowledge_base" WHERE "public"."knowledge_base"."domain" = 'regulatory_affairs' AND "public"."knowledge_base"."is_active" = true$1 ORDER BY "public"."knowledge_base"."created_at" DESC LIMIT 20
EOF
}
# One pgbench script per request and tenant: as PostgREST's transaction for a
# server-side request, or (hand) as the DBA role with the predicate written out.
script() { # file tenant policy|hand request
  local f="${dir}/$1" t="$2" how="$3" req="$4"
  {
    echo "BEGIN;"
    if [ "${how}" = policy ]; then
      echo "SELECT set_config('role', 'vital_tenancy_service', true), set_config('request.jwt.claims', '{\"role\": \"vital_tenancy_service\"}', true), set_config('request.headers', '{\"x-tenant-id\": \"${t}\"}', true);"
      echo "SELECT vital_tenancy.pre_request();"
      "${req}_sql" ""
    else
      # PostgREST sends its settings whatever the database does with them.
      echo "SELECT set_config('request.jwt.claims', '{\"role\": \"vt_bench_dba\"}', true), set_config('request.headers', '{\"x-tenant-id\": \"${t}\"}', true);"
      "${req}_sql" " AND tenant_id = ANY (ARRAY['${t}', '${PLATFORM}']::uuid[])"
    fi
    echo ";"
    echo "COMMIT;"
  } | tr -s '\n' | sed -e ':a;N;$!ba;s/\n;/;/g' > "${f}"
  chown postgres "${f}"
}

# pgbench one script through the pool: prints "p50 p95 tps" (ms, per transaction).
bench() { # file user
  local f="$1" user="$2" out
  rm -f "${dir}"/log.*
  out="$(cd "${dir}" && runuser -u postgres -- "${VT_PG_BIN}/pgbench" -n -h 127.0.0.1 -p "${bport}" -U "${user}" -M extended \
    -c "${CLIENTS}" -j "${CLIENTS}" -T "${SECONDS_EACH}" -l --log-prefix="${dir}/log" -f "${f}" "${DB}" 2>&1)"
  local tps
  tps="$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' <<<"${out}")"
  [ -n "${tps}" ] || { echo "pgbench failed: ${out}" >&2; exit 1; }
  cat "${dir}"/log.* | awk '{print $3}' | sort -n \
    | awk -v tps="${tps}" '{v[NR]=$1} END {printf "%.1f %.1f %.1f", v[int(NR*0.5)+1]/1000, v[int(NR*0.95)+1]/1000, tps}'
}

declare -A LABEL=([prompts]="GET /api/prompts-crud (newest 50 active, exact count)" [agents]="GET /api/agents (active, exact count)" [knowledge]="knowledge search by domain (newest 20)")
declare -A TENANT=([Pharmaceuticals]="${PHARMA}" [Digital\ Health]="${DIGITAL}")
round() { # title
  echo
  echo "### $1 (${CLIENTS} clients through PgBouncer, ${SECONDS_EACH} s each)"
  echo
  echo "| request | tenant | p50 ms policies / hand | p95 ms policies / hand | requests/s policies / hand | p50 ratio |"
  echo "|---|---|---:|---:|---:|---:|"
  local r t
  for r in prompts agents knowledge; do
    for t in Pharmaceuticals "Digital Health"; do
      script "${r}-p.sql" "${TENANT[$t]}" policy "${r}"
      script "${r}-h.sql" "${TENANT[$t]}" hand "${r}"
      read -r p50 p95 tps <<<"$(bench "${dir}/${r}-p.sql" vt_bench_authenticator)"
      read -r h50 h95 htps <<<"$(bench "${dir}/${r}-h.sql" vt_bench_dba)"
      echo "| ${LABEL[$r]} | ${t} | ${p50} / ${h50} | ${p95} / ${h95} | ${tps} / ${htps} | $(awk -v a="${p50}" -v b="${h50}" 'BEGIN {printf "%.2f×", a / b}') |"
    done
  done
}

coverage() {
  vt_psql -d "${DB}" -tA -c "SELECT 'index coverage (application reads of tenant tables served by an index): ' || COALESCE(vital_tenancy.query_coverage()::text || '%', 'n/a')"
}

# The policy's estimate: rows the planner expects for a tenant's visible prompts (the
# generic plan, as a pooled request gets it) against the rows there are.
estimates() { # tenant names (keys of TENANT)
  echo
  echo "| tenant | prompts visible | planner's estimate (generic plan) | ratio |"
  echo "|---|---:|---:|---:|"
  local t actual est
  for t in "$@"; do
    cat > "${dir}/estimate.sql" <<SQL
BEGIN;
SELECT set_config('role', 'vital_tenancy_service', true), set_config('request.jwt.claims', '{"role": "vital_tenancy_service"}', true), set_config('request.headers', '{"x-tenant-id": "${TENANT[$t]}"}', true) \\g /dev/null
SELECT vital_tenancy.pre_request() \\g /dev/null
SET LOCAL plan_cache_mode = force_generic_plan;
PREPARE est AS SELECT 1 FROM public.prompts;
SELECT count(*) FROM public.prompts;
EXPLAIN EXECUTE est;
ROLLBACK;
SQL
    read -r actual est < <(vt_psql -d "${DB}" -U vt_bench_authenticator -tA -f "${dir}/estimate.sql" | tr '\n' ' '; echo)
    est="$(grep -o 'rows=[0-9]*' <<<"${est}" | head -1 | cut -d= -f2)"
    echo "| ${t} | ${actual} | ${est} | $(awk -v a="${actual}" -v b="${est}" 'BEGIN {printf "%.2f×", b / a}') |"
  done
}

round "Before advice: the migrated schema"
estimates Pharmaceuticals "Digital Health"
# The recorded workload: what the requests above left in pg_stat_statements.
vt_psql -d "${DB}" -tA -c "SELECT 'statements recorded: ' || count(*) FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
coverage
echo
echo "query_advice():"
echo
vt_psql -d "${DB}" -c "SELECT kind, table_name, index_definition, round(cost_before) AS cost_before, round(cost_after) AS cost_after, jsonb_array_length(statements) AS statements, why FROM vital_tenancy.query_advice()"
log "scripts/migrate --apply-advice"
bash "${VT_ROOT}/scripts/migrate" "${conn}" --apply-advice >&2
round "After applying query_advice()"
coverage

# The policy's estimate across tenant sizes: 97 more tenants, and copies of the prompts
# spread over them with SaaS skew (the k-th tenant about 1/k of the largest's rows).
log "97 more tenants with skewed prompt counts, for the estimate across tenant sizes"
vt_psql -d "${DB}" -q <<SQL
INSERT INTO public.tenants (id, name, slug, type)
SELECT ('22222222-0000-4000-8000-' || lpad(g::text, 12, '0'))::uuid, 'Tenant ' || g, 'tenant-' || g, 'client'
  FROM generate_series(1, 97) g ON CONFLICT DO NOTHING;
CREATE TEMP TABLE src AS SELECT * FROM public.prompts WHERE tenant_id = '${PLATFORM}';
INSERT INTO public.prompts
SELECT (pg_catalog.jsonb_populate_record(NULL::public.prompts, pg_catalog.to_jsonb(s) || pg_catalog.jsonb_build_object(
          'id', gen_random_uuid(), 'name', s.name || ' t' || k,
          'tenant_id', ('22222222-0000-4000-8000-' || lpad(k::text, 12, '0'))::uuid))).*
  FROM generate_series(1, 97) k, LATERAL (SELECT * FROM src LIMIT (20000 / k)) s;
ANALYZE public.prompts;
SQL
TENANT[largest]=22222222-0000-4000-8000-000000000001
TENANT[10th]=22222222-0000-4000-8000-000000000010
TENANT[97th]=22222222-0000-4000-8000-000000000097
estimates largest 10th 97th Pharmaceuticals
