#!/usr/bin/env bash
# The test command: installs what the tests need when it is missing, starts a throwaway
# PostgreSQL cluster, then runs every test on SQLite and the end-to-end tests again on PostgreSQL.
# Usage: tests/run.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

# The newest PostgreSQL server binaries installed, if any.
pg_bindir() {
  local dir best=""
  for dir in /usr/lib/postgresql/*/bin; do
    [ -x "$dir/initdb" ] && best="$dir"
  done
  printf '%s' "$best"
}

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
pg_bin="$(pg_bindir)"
if [ -z "$pg_bin" ]; then
  echo "tests/run.sh: no initdb under /usr/lib/postgresql/*/bin; install the postgresql package" >&2
  exit 1
fi

# A throwaway PostgreSQL cluster in a fresh directory, on a free loopback port, with its Unix
# socket in that directory; stopped and removed on exit, failure or Ctrl-C. PostgreSQL refuses
# to run as root, so as root the cluster belongs to the `postgres` user. fsync and
# synchronous_commit keep their durable defaults: the tests measure the real commit path.
pg_dir="$(mktemp -d "${TMPDIR:-/tmp}/gateway-test-pg.XXXXXX")"
as_pg() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}
pg_started=""
cleanup() {
  if [ -n "$pg_started" ]; then
    as_pg "$pg_bin/pg_ctl" stop -D "$pg_dir/data" -m fast -w -t 30 >/dev/null 2>&1 ||
      as_pg "$pg_bin/pg_ctl" stop -D "$pg_dir/data" -m immediate -w -t 30 >/dev/null 2>&1 || true
  fi
  rm -rf "$pg_dir"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
if [ "$(id -u)" = 0 ]; then
  id postgres >/dev/null 2>&1 || useradd --system --home-dir "$pg_dir" --shell /usr/sbin/nologin postgres
  chown postgres: "$pg_dir"
fi
chmod 700 "$pg_dir"
as_pg "$pg_bin/initdb" -D "$pg_dir/data" -U postgres -A trust -E UTF8 --locale=C >"$pg_dir/initdb.log" 2>&1 || {
  cat "$pg_dir/initdb.log" >&2
  exit 1
}

# A port nothing listens on (a refused connect), tried again if the server cannot bind it after all.
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for _ in 1 2 3 4 5; do
  pg_port=$((20000 + RANDOM % 40000))
  port_free "$pg_port" || continue
  if as_pg "$pg_bin/pg_ctl" start -D "$pg_dir/data" -l "$pg_dir/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -c port=$pg_port -c unix_socket_directories=$pg_dir -c max_connections=400" \
    >/dev/null; then
    pg_started=1
    break
  fi
done
if [ -z "$pg_started" ]; then
  echo "tests/run.sh: PostgreSQL did not start; its log:" >&2
  tail -n 40 "$pg_dir/server.log" >&2 || true
  exit 1
fi
# pg_ctl -w waited for the server; wait (with a deadline) until it takes TCP connections too.
deadline=$((SECONDS + 60))
until "$pg_bin/pg_isready" -q -h 127.0.0.1 -p "$pg_port" -U postgres; do
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "tests/run.sh: PostgreSQL on 127.0.0.1:$pg_port did not accept connections within 60 s" >&2
    tail -n 40 "$pg_dir/server.log" >&2 || true
    exit 1
  fi
  sleep 0.2
done
export GATEWAY_TEST_PG_URL="postgres://postgres@127.0.0.1:$pg_port/postgres"
echo "tests/run.sh: PostgreSQL $("$pg_bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$pg_port (GATEWAY_TEST_PG_URL)" >&2

# Build the binaries the end-to-end tests start, then run the whole suite on SQLite (the store
# contract suite runs on both backends by itself).
cargo build --locked --bin gatewayd --bin gatewayctl
status=0
echo "tests/run.sh: pass 1 of 2: every test, end-to-end tests on SQLite" >&2
start=$SECONDS
cargo test --workspace --locked "$@" || status=$?
echo "tests/run.sh: pass 1 took $((SECONDS - start)) s" >&2

# The end-to-end tests again, each gateway on a fresh PostgreSQL database. Only the tests
# crate's test binaries, which pass 1 built: nothing may compile again.
echo "tests/run.sh: pass 2 of 2: end-to-end tests on PostgreSQL" >&2
start=$SECONDS
build_log="$pg_dir/pass2-build.log"
if ! cargo test -p gateway-tests --tests --locked --no-run "$@" >"$build_log" 2>&1; then
  cat "$build_log" >&2
  exit 1
fi
if grep -q '^ *Compiling ' "$build_log"; then
  echo "tests/run.sh: pass 2 compiled again (its cargo flags must match pass 1's):" >&2
  grep '^ *Compiling ' "$build_log" >&2
  status=1
fi
GATEWAY_TEST_STORE=postgres cargo test -p gateway-tests --tests --locked "$@" || status=$?
echo "tests/run.sh: pass 2 took $((SECONDS - start)) s" >&2
exit "$status"
