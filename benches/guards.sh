#!/usr/bin/env bash
# The reference guard's cost per written row, on the migrated real fixture: 20,000
# knowledge_base chunks inserted as a Digital Health request (set_tenant, then SET LOCAL
# ROLE authenticated) with the guard, and with it disabled; and, with VERSION=0.2.0,
# the same on a database migrated on 0.2.0 (its PL/pgSQL SECURITY DEFINER guard).
# Needs the test cluster of scripts/test (PGHOST/PGPORT) and the extension installed
# (a release build: cargo pgrx install --release). Run by hand:
#   PGHOST=/tmp/vital_tenancy/test/sock PGPORT=54330 bash benches/guards.sh
#   PGHOST=/tmp/vital_tenancy/test/sock PGPORT=54330 VERSION=0.2.0 bash benches/guards.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
VT_HOST="${PGHOST:?set PGHOST}"; VT_PORT="${PGPORT:?set PGPORT}"; export PGUSER=postgres
VERSION="${VERSION:-}"
ROWS="${ROWS:-20000}"
DB="vt_bench_guards${VERSION//./_}"
EXTDIR="$(${VT_PG_CONFIG} --sharedir)/extension"
vt_fresh_fixture_db "${DB}" >/dev/null
if [ -n "${VERSION}" ]; then
  cp "${VT_ROOT}/sql/released/vital_tenancy--${VERSION}.sql" "${EXTDIR}/"
  vt_psql -d "${DB}" -c "CREATE EXTENSION vital_tenancy VERSION '${VERSION}'" >/dev/null
  MIGRATIONS="${VT_ROOT}/sql/released/${VERSION}/migrations"
else
  vt_psql -d "${DB}" -c "CREATE EXTENSION vital_tenancy" >/dev/null
  MIGRATIONS="${VT_ROOT}/sql/migrations"
fi
PG_BIN="${VT_PG_BIN}" bash "${VT_ROOT}/scripts/migrate" "host=${PGHOST} port=${PGPORT} user=postgres dbname=${DB}" \
  --no-backup --report /dev/null --migrations "${MIGRATIONS}" >/dev/null
SRC=$(vt_psql -d "${DB}" -At -c "SELECT id FROM public.knowledge_sources WHERE tenant_id = '11111111-1111-1111-1111-111111111111' LIMIT 1")
run() { # label disable-sql
  vt_psql -d "${DB}" <<SQL 2>&1 | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' | tail -1 | sed "s/^/$1 ms: /"
BEGIN;
$2
SELECT vital_tenancy.set_tenant('11111111-1111-1111-1111-111111111111') \\gset
SET LOCAL ROLE authenticated;
\\timing on
INSERT INTO public.knowledge_base (source_id, chunk_index, content, content_hash, domain)
SELECT '${SRC}', g, 'x', md5(g::text), 'digital_health' FROM generate_series(1, ${ROWS}) g;
\\timing off
ROLLBACK;
SQL
}
echo "${VERSION:-current}: ${ROWS} guarded inserts"
for i in 1 2 3; do
  run "guard on " ""
  run "guard off" "ALTER TABLE public.knowledge_base DISABLE TRIGGER vt_tenant_ref_knowledge_base_source_id_fkey;"
done
vt_psql -d postgres -c "DROP DATABASE ${DB} WITH (FORCE)" >/dev/null
