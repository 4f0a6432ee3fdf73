#!/usr/bin/env bash
# Benchmark: tenant backfill of 1,000,384 prompt-shaped rows three ways, each with a
# concurrent writer (pgbench, 2 clients updating random rows of the same table at
# ${WRITER_TPS:-500} transactions/s in all; its latency includes any wait for a lock):
#   (a) CALL vital_tenancy.backfill (batches of 5000, COMMIT per batch, journaled)
#   (b) one UPDATE ... SET tenant_id = classify_prompt_tenant(...) in one transaction
#   (c) a client-side row-by-row ETL (read, classify in the client, write back), timed
#       on its first 20,000 rows
# Reports rows/s and the longest wait of any concurrent writer transaction.
#
#   bash benches/backfill.sh            (BATCH=20000 for bigger batches, WRITER_TPS=500)
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

vt_install_deps
vt_install_extension --release
python3 -c "import psycopg" 2>/dev/null || pip install -q "psycopg[binary]"
vt_cluster_start bench "${VT_BENCH_PORT:-54331}"
if ! vt_psql -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'vt_bench'" | grep -q 1; then
  vt_fresh_fixture_db vt_bench
fi
DB=vt_bench
CONN="host=${VT_HOST} port=${VT_PORT} user=postgres dbname=${DB}"
vt_psql -d "$DB" <<'SQL'
DROP EXTENSION IF EXISTS vital_tenancy CASCADE; DROP SCHEMA IF EXISTS vital_tenancy CASCADE;
CREATE EXTENSION vital_tenancy;
SELECT count(*) FROM vital_tenancy.ensure_tenants('public.tenants', '{"type": "industry"}');
DROP TABLE IF EXISTS bf_a, bf_b, bf_c;
CREATE TABLE bf_a AS
  SELECT row_number() OVER ()::bigint AS id, p.name || '-' || g AS name, p.domain::text AS domain,
         p.created_by, NULL::uuid AS tenant_id, ''::text AS payload
    FROM public.prompts p CROSS JOIN generate_series(1, 928) g;
ALTER TABLE bf_a ADD PRIMARY KEY (id);
CREATE TABLE bf_b AS SELECT * FROM bf_a; ALTER TABLE bf_b ADD PRIMARY KEY (id);
CREATE TABLE bf_c AS SELECT * FROM bf_a; ALTER TABLE bf_c ADD PRIMARY KEY (id);
VACUUM ANALYZE bf_a; VACUUM ANALYZE bf_b; VACUUM ANALYZE bf_c;
SQL
ROWS=$(vt_psql -d "$DB" -tAc "SELECT count(*) FROM bf_a")
LOGDIR="${VT_WORK}/bench-logs"; rm -rf "$LOGDIR"; mkdir -p "$LOGDIR"

# writer TABLE TAG: pgbench updating random rows until killed; per-transaction log.
writer_start() {
  printf '\\set id random(1, %s)\nUPDATE %s SET payload = md5(:id::text) WHERE id = :id;\n' "$ROWS" "$1" > "$LOGDIR/writer-$2.sql"
  (cd "$LOGDIR" && "${VT_PG_BIN}/pgbench" -n -c 2 -R "${WRITER_TPS:-500}" -T 3600 -l --log-prefix="$2" -f "writer-$2.sql" \
     -h "$VT_HOST" -p "$VT_PORT" -U postgres "$DB" >/dev/null 2>&1) &
  WRITER=$!
  sleep 1
}
writer_stop() {
  sleep 2  # let writers that were blocked finish, so their wait is logged
  pkill -INT -P "$WRITER" pgbench 2>/dev/null || true; kill -INT "$WRITER" 2>/dev/null || true; wait "$WRITER" 2>/dev/null || true
  # pgbench log: client txno latency_us script epoch epoch_us -> max latency in ms, count
  cat "$LOGDIR/$1".[0-9]* 2>/dev/null | awk '{ v = $3 + 0; if (v > m) m = v; n++ } END { printf "%.0f %d", m / 1000, n }'
}
now_ms() { date +%s%3N; }

log "(a) CALL backfill"
writer_start bf_a wa
t0=$(now_ms)
vt_psql -d "$DB" -q -c "SET client_min_messages = warning" \
  -c "CALL vital_tenancy.backfill('bf_a', 'prompt', batch_size => 5000, run_name => 'bench', record_rules => false)"
ta=$(( $(now_ms) - t0 ))
read -r wa_max wa_n <<< "$(writer_stop wa)"

log "(b) one UPDATE in one transaction"
writer_start bf_b wb
t0=$(now_ms)
vt_psql -d "$DB" -q -c "UPDATE bf_b SET tenant_id = vital_tenancy.classify_prompt_tenant(name, domain, created_by, NULL)"
tb=$(( $(now_ms) - t0 ))
read -r wb_max wb_n <<< "$(writer_stop wb)"

log "(c) client-side row-by-row ETL (first 20,000 rows)"
writer_start bf_c wc
read -r cn cs crate <<< "$(python3 "$(dirname "${BASH_SOURCE[0]}")/etl_client.py" "$CONN" bf_c 20000)"
read -r wc_max wc_n <<< "$(writer_stop wc)"

check=$(vt_psql -d "$DB" -tAc "SELECT count(*) FROM bf_a a JOIN bf_b b USING (id) WHERE a.tenant_id IS DISTINCT FROM b.tenant_id OR a.tenant_id IS NULL")
[ "$check" = 0 ] || { echo "backfill and UPDATE disagree on $check rows" >&2; exit 1; }

ra=$(( ROWS * 1000 / ta )); rb=$(( ROWS * 1000 / tb ))
echo
echo "rows: ${ROWS}; concurrent writer: pgbench, 2 clients, ${WRITER_TPS:-500} random single-row UPDATEs/s on the same table"
echo
echo "| variant | rows | time | rows/s | longest writer wait | writer transactions |"
echo "|---|---:|---:|---:|---:|---:|"
echo "| (a) CALL backfill, batches of ${BATCH:-5000} | ${ROWS} | ${ta} ms | ${ra} | ${wa_max} ms | ${wa_n} |"
echo "| (b) one UPDATE, one transaction | ${ROWS} | ${tb} ms | ${rb} | ${wb_max} ms | ${wb_n} |"
echo "| (c) client-side row-by-row ETL | ${cn} | ${cs} s | ${crate} | ${wc_max} ms | ${wc_n} |"
echo
awk -v a="$ra" -v b="$rb" -v c="$crate" 'BEGIN { printf "backfill / single UPDATE = %.2fx; backfill / client ETL = %.1fx\n", a / b, a / c }'
