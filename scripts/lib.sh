# Shared by scripts/demo, scripts/test and bench/: install, build, run a private PostgreSQL.
# Source it; it sets `set -euo pipefail`.
set -euo pipefail

SPW_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# SPILLWAY_PG_BIN: PostgreSQL's programs from elsewhere (bench/device carries its own).
SPW_PG_BIN=${SPILLWAY_PG_BIN:-/usr/lib/postgresql/15/bin}

spw_log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
spw_die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Debian packages the build, the tests, the demo and the benchmarks need.
SPW_PACKAGES=(
  build-essential cmake ninja-build ccache pkg-config git curl ca-certificates
  libboost1.81-dev libpqxx-dev prometheus-cpp-dev libtomlplusplus-dev libspdlog-dev libfmt-dev libssl-dev
  libgtest-dev libgmock-dev libbenchmark-dev libhpdf-dev poppler-utils
  postgresql-15 postgresql-client-15 postgresql-15-auto-failover pg-auto-failover-cli
  openssl openssh-client procps prometheus prometheus-alertmanager
)

# Installs whatever of PACKAGES... is missing; runs apt-get update once first.
spw_install() {
  local missing=()
  local p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" -eq 0 ] || spw_die "missing packages (${missing[*]}); run as root, or install them with apt-get"
  spw_log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # Packages such as postgresql, nginx and prometheus would start system services; ours run their
  # own instances (PostgreSQL on a private socket directory), so service starts are declined.
  local policy=/usr/sbin/policy-rc.d added=
  if [ ! -e $policy ]; then printf '#!/bin/sh\nexit 101\n' >$policy && chmod +x $policy && added=1; fi
  local rc=0
  apt-get install -y -qq --no-install-recommends -o Dpkg::Options::=--force-confdef \
    -o Dpkg::Options::=--force-confold "${missing[@]}" >/dev/null || rc=$?
  [ -n "$added" ] && rm -f $policy
  [ $rc -eq 0 ] || spw_die "apt-get install failed"
}

spw_install_deps() { spw_install "${SPW_PACKAGES[@]}"; }

# The benchmarks take their programs from SPILLWAY_PREBUILT (a folder of them, as bench/device
# carries to a machine with no compiler or packages) when it is set, and build them otherwise.
spw_bench_bin() {
  if [ -n "${SPILLWAY_PREBUILT:-}" ]; then
    SPW_BENCH_BIN=$SPILLWAY_PREBUILT
    return 0
  fi
  spw_install_deps
  if [ $# -gt 0 ]; then spw_install "$@"; fi
  spw_log "building an optimised build in build-bench/"
  cmake -S "$SPW_ROOT" -B "$SPW_ROOT/build-bench" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSPILLWAY_TESTS=OFF >/dev/null
  ninja -C "$SPW_ROOT/build-bench" spillway-apiserver spillway-agent spillway-fleet-sim spillway-ingest-bench spillway-billing-bench \
    spillway-fold-bench >/dev/null
  SPW_BENCH_BIN=$SPW_ROOT/build-bench/bin
}

# Configures and builds into build/ (executables in build/bin/). Extra args go to cmake.
spw_build() {
  local jobs
  jobs=$(nproc)
  local args=(-G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo)
  [ "${CI:-}" = true ] && args+=(-DSPILLWAY_WERROR=ON)
  spw_log "building (cmake + ninja, $jobs jobs)"
  # Clones in other folders share ccache's hits.
  export CCACHE_BASEDIR="$SPW_ROOT"
  cmake -S "$SPW_ROOT" -B "$SPW_ROOT/build" "${args[@]}" "$@" >/dev/null
  # SPW_BUILD_TARGETS limits the build (the demo needs its daemons, the simulator and the CLI).
  # shellcheck disable=SC2086
  ninja -C "$SPW_ROOT/build" -j "$jobs" ${SPW_BUILD_TARGETS:-}
}

# PostgreSQL refuses to run as root: the cluster runs as `postgres` when we are root.
spw_as_pg() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# spw_pg_start DATADIR SOCKETDIR PORT: initdb when new, then start; listens on the socket only.
spw_pg_start() {
  local data=$1 sock=$2 port=$3
  mkdir -p "$data" "$sock"
  if [ "$(id -u)" -eq 0 ]; then chown postgres:postgres "$data" "$sock"; chmod 700 "$data"; fi
  spw_as_pg test -x "$data" || spw_die "the postgres user cannot reach $data (a parent directory is private)"
  if [ ! -f "$data/PG_VERSION" ]; then
    spw_as_pg "$SPW_PG_BIN/initdb" -D "$data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
  fi
  # A cluster killed without a shutdown leaves its pid file; pg_ctl copes when the pid is gone.
  if spw_as_pg "$SPW_PG_BIN/pg_ctl" -D "$data" status >/dev/null 2>&1; then
    spw_as_pg "$SPW_PG_BIN/pg_ctl" -D "$data" -m fast -w stop >/dev/null || true
  fi
  spw_as_pg "$SPW_PG_BIN/pg_ctl" -D "$data" -w -t 60 -l "$data/server.log" \
    -o "-c listen_addresses='' -c unix_socket_directories='$sock' -p $port -c max_connections=300 -c fsync=${SPW_PG_FSYNC:-on}" \
    start >/dev/null || { tail -20 "$data/server.log" >&2; spw_die "PostgreSQL did not start"; }
}

# spw_report_skips LOG: from ctest's LastTest.log, prints how many tests skipped and why; returns
# non-zero when one skipped for anything but a missing GPU (its skip message says "no GPU").
spw_report_skips() {
  local log=$1
  [ -f "$log" ] || { spw_log "no test log at $log"; return 1; }
  local skips
  skips=$(awk '
    /^[0-9]+\/[0-9]+ Test: / { name = $0; sub(/^[0-9]+\/[0-9]+ Test: /, "", name); skipped = 0; why = ""; next }
    why == "?" { why = $0 }
    /: Skipped$/ { why = "?" }
    /\[  SKIPPED \]/ { skipped = 1 }
    / end time: / { if (skipped) printf "%s\t%s\n", name, why; skipped = 0 }
  ' "$log")
  local total=0 gpu=0 other=0 line
  while IFS= read -r line; do
    [ -n "$line" ] || continue
    total=$((total + 1))
    if printf '%s' "$line" | grep -q 'no GPU'; then
      gpu=$((gpu + 1))
    else
      other=$((other + 1))
      printf 'skipped, and not for want of a GPU: %s\n' "$line" >&2
    fi
  done <<<"$skips"
  spw_log "skipped tests: $total ($gpu need a GPU this machine does not have)"
  [ "$other" -eq 0 ]
}

# spw_secrets_key FILE: a key file for secrets.key_file (one random key, mode 0600) unless FILE has
# one; exports SPILLWAY_SECRETS_KEY_FILE=FILE.
spw_secrets_key() {
  local file=$1
  if [ ! -s "$file" ]; then
    (umask 077 && printf 'k%s %s\n' "$(date -u +%Y%m%d)" "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" >"$file")
  fi
  export SPILLWAY_SECRETS_KEY_FILE=$file
}

spw_pg_stop() {
  local data=$1
  [ -f "$data/postmaster.pid" ] || return 0
  spw_as_pg "$SPW_PG_BIN/pg_ctl" -D "$data" -m fast -w stop >/dev/null 2>&1 || true
}

# Lints apiserver/openapi.yaml with Redocly CLI (npm @redocly/cli 2.77.0, installed once under
# build/tools), the recommended rules as redocly.yaml sets them; an error fails the run.
# The web console's browser tests (tests/browser): Debian's Chromium, driven by playwright-core with
# axe-core, both from npm at the versions tests/browser/package-lock.json pins (no browser download).
spw_browser_deps() {
  command -v npm >/dev/null || spw_install nodejs npm
  node -e 'process.exit(+process.versions.node.split(".")[0] >= 20 ? 0 : 1)' ||
    spw_die "the console's browser tests need Node.js 20 or newer (found $(node --version))"
  spw_install chromium
  local dir="$SPW_ROOT/tests/browser"
  if [ ! -f "$dir/node_modules/.package-lock.json" ] || [ "$dir/package-lock.json" -nt "$dir/node_modules/.package-lock.json" ]; then
    spw_log "installing the browser tests' packages (npm ci in tests/browser)"
    (cd "$dir" && npm ci --no-audit --no-fund --silent >/dev/null) || spw_die "npm ci in tests/browser failed"
  fi
}

spw_lint_openapi() {
  command -v npm >/dev/null || spw_install nodejs npm
  local tools="$SPW_ROOT/build/tools"
  if [ ! -x "$tools/node_modules/.bin/redocly" ]; then
    spw_log "installing Redocly CLI 2.77.0 (npm) to lint the OpenAPI document"
    mkdir -p "$tools"
    npm install --prefix "$tools" --no-audit --no-fund --silent @redocly/cli@2.77.0 >/dev/null
  fi
  spw_log "linting apiserver/openapi.yaml (Redocly CLI, recommended rules)"
  local out rc=0
  out=$(REDOCLY_TELEMETRY=off REDOCLY_SUPPRESS_UPDATE_NOTICE=true "$tools/node_modules/.bin/redocly" lint \
    "$SPW_ROOT/apiserver/openapi.yaml" --config "$SPW_ROOT/redocly.yaml" --format=stylish 2>&1) || rc=$?
  printf '%s\n' "$out" | grep -v '[║╔╚]' | grep -v '^\s*$' >&2 || true
  [ "$rc" -eq 0 ] || spw_die "apiserver/openapi.yaml does not pass the lint (above)"
}
