#!/usr/bin/env bash
# The test command: installs what the tests need when it is missing, starts a throwaway
# PostgreSQL cluster, then runs every test on SQLite and the end-to-end tests again on PostgreSQL.
# Usage: tests/run.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

# pg_bindir, pg_cluster_start and pg_cluster_stop.
. tests/pg_cluster.sh

# System packages the tests use: tmux drives the console's end-to-end test, sqlite3 edits a
# stopped gateway's database, postgresql is the second store backend. Installed only when
# missing, and only as root.
need_apt=()
command -v tmux >/dev/null 2>&1 || need_apt+=(tmux)
command -v sqlite3 >/dev/null 2>&1 || need_apt+=(sqlite3)
[ -n "$(pg_bindir)" ] || need_apt+=(postgresql)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "tests/run.sh: installing ${need_apt[*]}" >&2
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "tests/run.sh: not root; install ${need_apt[*]} yourself" >&2
    exit 1
  fi
fi
if [ -z "$(pg_bindir)" ]; then
  echo "tests/run.sh: no initdb under /usr/lib/postgresql/*/bin; install the postgresql package" >&2
  exit 1
fi

# A throwaway PostgreSQL cluster in a fresh directory, on a free loopback port, with its Unix
# socket in that directory; stopped and removed on exit, failure or Ctrl-C.
pg_dir="$(mktemp -d "${TMPDIR:-/tmp}/gateway-test-pg.XXXXXX")"
trap 'pg_cluster_stop "$pg_dir"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
pg_cluster_start "$pg_dir"
export GATEWAY_TEST_PG_URL="$PG_URL"

# Build the binaries the end-to-end tests start, then run the whole suite on SQLite (the store
# contract suite runs on both backends by itself).
cargo build --locked --bin gatewayd --bin gatewayctl
status=0
echo "tests/run.sh: pass 1 of 2: every test, end-to-end tests on SQLite" >&2
start=$SECONDS
cargo test --workspace --locked --no-fail-fast "$@" || status=$?
echo "tests/run.sh: pass 1 took $((SECONDS - start)) s" >&2

# The end-to-end tests again, each gateway on a fresh PostgreSQL database: every integration
# test binary of the workspace, which pass 1 built. The package selection stays pass 1's
# (`--workspace`), so cargo resolves the same features and nothing compiles again.
echo "tests/run.sh: pass 2 of 2: end-to-end tests on PostgreSQL" >&2
start=$SECONDS
build_log="$pg_dir/pass2-build.log"
# Without arguments every integration test; with them (`--test access`), what they select.
if [ $# -eq 0 ]; then set -- --test '*'; fi
if ! cargo test --workspace --locked --no-fail-fast --no-run "$@" >"$build_log" 2>&1; then
  cat "$build_log" >&2
  exit 1
fi
if grep -q '^ *Compiling ' "$build_log"; then
  # Costs time, not correctness: reported so that a change of flags between the passes is seen.
  echo "tests/run.sh: warning: pass 2 compiled again (its cargo flags should match pass 1's):" >&2
  grep '^ *Compiling ' "$build_log" >&2
fi
# The cluster tests run on PostgreSQL in pass 1 already; GATEWAY_TEST_SKIP_CLUSTER skips them here.
GATEWAY_TEST_STORE=postgres GATEWAY_TEST_SKIP_CLUSTER=1 cargo test --workspace --locked --no-fail-fast "$@" || status=$?
echo "tests/run.sh: pass 2 took $((SECONDS - start)) s" >&2
exit "$status"
