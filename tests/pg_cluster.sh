# A throwaway PostgreSQL cluster, sourced by tests/run.sh and tests/bench.sh (not run alone).
#
#   pg_bindir             prints the newest /usr/lib/postgresql/*/bin with an initdb, or nothing
#   pg_cluster_start DIR  initdb into DIR/data and start the server on a free port of 127.0.0.1,
#                         its Unix socket in DIR; waits (with a deadline) until it takes
#                         connections; sets PG_PORT and PG_URL (postgres://postgres@127.0.0.1:PORT/postgres)
#   pg_cluster_stop DIR   stops that server, if it was started, and removes DIR
#
# PostgreSQL refuses to run as root, so as root the cluster belongs to the `postgres` user
# (created when missing). Authentication is trust, on loopback only. fsync and
# synchronous_commit keep their durable defaults.

pg_bindir() {
  local dir best=""
  for dir in /usr/lib/postgresql/*/bin; do
    [ -x "$dir/initdb" ] && best="$dir"
  done
  printf '%s' "$best"
}

pg_as_owner() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

PG_STARTED=""
pg_cluster_start() {
  local dir=$1 bin port deadline
  bin="$(pg_bindir)"
  if [ -z "$bin" ]; then
    echo "pg_cluster: no initdb under /usr/lib/postgresql/*/bin; install the postgresql package" >&2
    return 1
  fi
  mkdir -p "$dir"
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --home-dir "$dir" --shell /usr/sbin/nologin postgres
    chown postgres: "$dir"
  fi
  chmod 700 "$dir"
  pg_as_owner "$bin/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --locale=C >"$dir/initdb.log" 2>&1 || {
    cat "$dir/initdb.log" >&2
    return 1
  }
  # A port nothing listens on (a refused connect), tried again if the server cannot bind it.
  for _ in 1 2 3 4 5; do
    port=$((20000 + RANDOM % 40000))
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then continue; fi
    if pg_as_owner "$bin/pg_ctl" start -D "$dir/data" -l "$dir/server.log" -w -t 60 \
      -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$dir -c max_connections=400" \
      >/dev/null; then
      PG_STARTED="$dir"
      break
    fi
  done
  if [ -z "$PG_STARTED" ]; then
    echo "pg_cluster: PostgreSQL did not start; its log:" >&2
    tail -n 40 "$dir/server.log" >&2 || true
    return 1
  fi
  # pg_ctl -w waited for the server; wait (with a deadline) until it takes TCP connections too.
  deadline=$((SECONDS + 60))
  until "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "pg_cluster: PostgreSQL on 127.0.0.1:$port did not accept connections within 60 s" >&2
      tail -n 40 "$dir/server.log" >&2 || true
      return 1
    fi
    sleep 0.2
  done
  PG_PORT=$port
  PG_URL="postgres://postgres@127.0.0.1:$port/postgres"
  echo "pg_cluster: PostgreSQL $("$bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port, in $dir" >&2
}

pg_cluster_stop() {
  local dir=$1 bin
  bin="$(pg_bindir)"
  if [ -n "$PG_STARTED" ] && [ -n "$bin" ]; then
    pg_as_owner "$bin/pg_ctl" stop -D "$dir/data" -m fast -w -t 30 >/dev/null 2>&1 ||
      pg_as_owner "$bin/pg_ctl" stop -D "$dir/data" -m immediate -w -t 30 >/dev/null 2>&1 || true
    PG_STARTED=""
  fi
  rm -rf "$dir"
}
