#!/usr/bin/env bash
# The benchmark suite (not part of tests/run.sh): P1 throughput with the echo agent and the
# baseline ratio, P2 gateway-added latency at 1k msg/s, P3 idle RSS and RSS per resident session
# (through the release gatewayd binary and the loadgen), P1PG and P2PG (P1 and P2 with the store on
# PostgreSQL: a throwaway cluster this script starts, a fresh database per gatewayd), then P4 identity + session routing with
# 1M known users, P5 10k concurrent workflow runs, P6 ListSessions pages out of 1M sessions and
# P8 validating (and running once) 10k-node workflows (the gatewayd crate's `cargo bench`
# targets), and SOAK, gatewayd's RSS over a long steady load. P1C and FAILOVER (only with --only) are
# multi-instance mode: P1's load with [cluster] enabled on one PostgreSQL database, one instance
# (P1C1) against three (P1C3, the loadgen spreading its chats over the three listeners as a load
# balancer does, so most replies are sent by another instance than the socket's and relayed), and
# FAILOVER, kill -9 of a random one of three idle instances, --failover-rounds times (default 5):
# the time until every partition it held has a new epoch held by a live instance, read from the
# leases table.
#
# Usage: tests/bench.sh [--full] [--runs N] [--only P1,P2,P1PG,P2PG,...,SOAK] [--soak-secs S]
#   quick (default): P1 1000 chats flat out for 10 s
#   --full:          P1 10k chats flat out for 30 s
#   P1PG is P1's size in either mode, P2PG P2's; each run of them follows the same run of P1 / P2,
#   so the ratio to SQLite compares figures of one run of the script.
#   The rest is the same in both: P2 100 chats, 1000 msg/s in total, 10 s; P3 100k resident
#   sessions (200 waves of 500 chats); P4 1M users; P5 10k runs; P6 1M sessions; P8 10k nodes.
#   SOAK (only with --only SOAK, and run once whatever --runs says): 200 WebChat chats flat out
#   with 2 in flight each, for --soak-secs seconds (default 600, at least 120), a new set of 200
#   chats every minute (one loadgen run per minute, each with its own chat prefix), no /metrics
#   scraper. gatewayd's idle_timeout is 2m, so the resident sessions stop growing after about 3
#   minutes. Its VmRSS (and its resident sessions, through `gatewayctl status`, which is not a
#   scrape) is sampled every 10 s; the slope is a least-squares fit over the second half, in MiB
#   per minute. BENCH_GATEWAYD=PATH runs another gatewayd binary (e.g. one built from older code);
#   BENCH_BIN_DIR=DIR takes gatewayd, gatewayctl and loadgen from DIR and builds nothing.
# Every figure is run N times (default 3), P1-P3 each on a fresh gatewayd with a fresh data dir,
# and the median printed. Everything listens on and talks to 127.0.0.1 only. Needs python3, and for
# P1PG/P2PG PostgreSQL's server binaries (/usr/lib/postgresql/*/bin; tests/run.sh installs them).
#
# Rate limits: WebChat's built-in outbound limit is 10 msg/s per chat, which would cap a flat-out
# chat, so the generated config raises it (`[rate_limits.webchat] per_chat_per_second = 100000`).
# `gateway.max_sessions = 200000` so no session is evicted during P3.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

MODE=quick
RUNS=3
ONLY=P1,P2,P1PG,P2PG,P3,P4,P5,P6,P8
SOAK_SECS=600
FAILOVER_ROUNDS=5
while [ $# -gt 0 ]; do
  case "$1" in
    --full) MODE=full ;;
    --runs) RUNS="$2"; shift ;;
    --only) ONLY="$2"; shift ;;
    --soak-secs) SOAK_SECS="$2"; shift ;;
    --failover-rounds) FAILOVER_ROUNDS="$2"; shift ;;
    *) echo "usage: tests/bench.sh [--full] [--runs N] [--only P1,P2,P1PG,P2PG,P3,P4,P5,P6,P8,P1C,FAILOVER,SOAK] [--soak-secs S] [--failover-rounds N]" >&2; exit 2 ;;
  esac
  shift
done
if [ "$MODE" = full ]; then
  P1_CHATS=10000; P1_SECS=30
else
  P1_CHATS=1000; P1_SECS=10
fi
P3_BATCHES=200
want() { case ",$ONLY," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
for f in ${ONLY//,/ }; do
  case "$f" in
    P1|P2|P1PG|P2PG|P3|P4|P5|P6|P8|P1C|FAILOVER|SOAK) ;;
    *) echo "bench: unknown figure \`$f\` in --only (expected a comma-separated list of P1..P6, P8, P1PG, P2PG, P1C, FAILOVER, SOAK)" >&2; exit 2 ;;
  esac
done
case "$SOAK_SECS" in
  ''|*[!0-9]*) echo "bench: --soak-secs must be a whole number of seconds" >&2; exit 2 ;;
esac
if [ "$SOAK_SECS" -lt 120 ]; then echo "bench: --soak-secs must be at least 120" >&2; exit 2; fi
case "$FAILOVER_ROUNDS" in
  ''|*[!0-9]*|0) echo "bench: --failover-rounds must be a whole number above 0" >&2; exit 2 ;;
esac
# P3 creates its sessions in waves of 500 chats (one loadgen run each, sockets closed at its
# end): gatewayd's memory per open WebSocket is large (~200 KB) and stays in its heap after the
# socket closes, so 10k sockets at once would measure sockets, not sessions (see BENCHMARKS.md).
P3_BATCH=500
P2_CHATS=100; P2_RATE=1000; P2_SECS=10

run() { echo "+ $*" >&2; "$@"; }

BIN_DIR=${BENCH_BIN_DIR:-$ROOT/target/release}
if [ -z "${BENCH_BIN_DIR:-}" ]; then
  run cargo build --release -p gatewayd -p gatewayctl -p gateway-tests --bin gatewayd --bin gatewayctl --bin loadgen
fi
if want P4 || want P5 || want P6 || want P8; then
  # Built before anything is timed, so no bench waits for the compiler.
  run cargo bench -p gatewayd --no-run --bench routing --bench workflow_runs --bench list_sessions \
    --bench workflow_validate
fi
GATEWAYD=${BENCH_GATEWAYD:-$BIN_DIR/gatewayd}
GATEWAYCTL=$BIN_DIR/gatewayctl
LOADGEN=$BIN_DIR/loadgen

# 10k WebSockets need 10k descriptors in each process.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
echo "bench: mode=$MODE runs=$RUNS nofile=$(ulimit -n) load: $(uptime | sed 's/.*load average: //')"

WORK=$(mktemp -d /tmp/gateway-bench.XXXXXX)
# The PostgreSQL cluster's own directory (its owner must reach it; $WORK is root's alone).
PG_DIR=""
. tests/pg_cluster.sh
GW_PID=""
BL_PID=""
SAMPLER_PID=""
CL_PIDS=()
cleanup() {
  local rc=$?
  for p in "${CL_PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  if [ -n "$SAMPLER_PID" ]; then kill "$SAMPLER_PID" 2>/dev/null; wait "$SAMPLER_PID" 2>/dev/null || true; fi
  if [ -n "$GW_PID" ]; then kill "$GW_PID" 2>/dev/null; wait "$GW_PID" 2>/dev/null || true; fi
  if [ -n "$BL_PID" ]; then kill "$BL_PID" 2>/dev/null; wait "$BL_PID" 2>/dev/null || true; fi
  if [ -n "$PG_DIR" ]; then pg_cluster_stop "$PG_DIR"; fi
  if [ "$rc" = 0 ]; then
    rm -rf "$WORK"
  else
    echo "bench: failed ($rc); kept $WORK (each gatewayd's stdout/stderr are in gw-*/)" >&2
    for f in "$WORK"/gw-*/stderr; do [ -s "$f" ] && { echo "--- $f (tail)" >&2; tail -n 5 "$f" >&2; }; done
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Waits (bounded: 30 s) until FILE has a line matching PATTERN, then prints that line.
wait_line() {
  local file=$1 pattern=$2 pid=$3
  for _ in $(seq 300); do
    if grep -m1 -- "$pattern" "$file" 2>/dev/null; then return 0; fi
    kill -0 "$pid" 2>/dev/null || { echo "bench: process $pid exited; $file:" >&2; cat "$file" >&2; return 1; }
    sleep 0.1
  done
  echo "bench: no \`$pattern\` in $file within 30 s" >&2
  return 1
}

# Starts a fresh gatewayd (echo agent, WebChat) in $WORK/gw-$1; sets GW_PID, GW_ADDR and
# ADMIN_ADDR. GW_IDLE is its gateway.idle_timeout (default: the built-in 30m). GW_STORE=postgres
# puts its store on a fresh database of the cluster (default: SQLite in its data dir).
GW_IDLE=30m
GW_STORE=sqlite
start_gateway() {
  local dir=$WORK/gw-$1 db
  mkdir -p "$dir"
  : >"$dir/store.toml"
  if [ "$GW_STORE" = postgres ]; then
    db="bench_${1//-/_}"
    "$(pg_bindir)/psql" -q -X -v ON_ERROR_STOP=1 "$PG_URL" -c "CREATE DATABASE $db" >&2
    export BENCH_DATABASE_URL="${PG_URL%/postgres}/$db"
    printf '[store]\nbackend = "postgres"\nurl_env = "BENCH_DATABASE_URL"\n' >"$dir/store.toml"
  fi
  cat - "$dir/store.toml" >"$dir/gatewayd.toml" <<EOF
[gateway]
data_dir = "$dir/data"
max_sessions = 200000
idle_timeout = "$GW_IDLE"

[http]
listen = "127.0.0.1:0"

[admin]
listen = "127.0.0.1:0"

[log]
level = "warn"

[agent]
provider = "echo"

[channels.webchat]
enabled = true

[rate_limits.webchat]
per_chat_per_second = 100000
per_chat_burst = 100000
EOF
  echo "+ $GATEWAYD --config $dir/gatewayd.toml &" >&2
  "$GATEWAYD" --config "$dir/gatewayd.toml" >"$dir/stdout" 2>"$dir/stderr" &
  GW_PID=$!
  wait_line "$dir/stdout" "gatewayd ready" "$GW_PID" >/dev/null
  GW_ADDR=$(grep -m1 '^http listening on ' "$dir/stdout" | awk '{print $4}')
  ADMIN_ADDR=$(grep -m1 '^admin listening on ' "$dir/stdout" | awk '{print $4}')
}

stop_gateway() {
  echo "+ kill -TERM $GW_PID" >&2
  kill -TERM "$GW_PID"
  wait "$GW_PID" || true
  GW_PID=""
}

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

RESULTS=$WORK/results.jsonl
: >"$RESULTS"

if want P1PG || want P2PG || want P1C || want FAILOVER; then
  PG_DIR=$(mktemp -d /tmp/gateway-bench-pg.XXXXXX)
  pg_cluster_start "$PG_DIR"
fi

# Multi-instance mode: N gatewayd (echo agent, WebChat) on one fresh database with [cluster]
# enabled, each on its own fixed loopback port (what the others relay to); sets CL_PIDS, CL_ADDRS
# (comma-separated listeners) and CL_DIRS. Instance i is "bench-$i" and starts from
# $WORK/cl-TAG-$i/gatewayd.toml, so `cluster_spawn i` can start it again.
CL_ADDRS=""
CL_DIRS=()
CL_URL=""
psql_q() { "$(pg_bindir)/psql" -qAtX -v ON_ERROR_STOP=1 "$@"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
cluster_spawn() {
  local i=$1 dir=${CL_DIRS[$1]}
  echo "+ $GATEWAYD --config $dir/gatewayd.toml &   (bench-$i)" >&2
  BENCH_DATABASE_URL="$CL_URL" BENCH_CLUSTER_SECRET="bench-cluster-secret-$$" \
    "$GATEWAYD" --config "$dir/gatewayd.toml" >>"$dir/stdout" 2>>"$dir/stderr" &
  CL_PIDS[$i]=$!
  wait_line "$dir/stdout" "gatewayd ready" "${CL_PIDS[$i]}" >/dev/null
}
start_cluster() {
  local tag=$1 n=$2 i port dir db
  db="bench_${tag//-/_}"
  psql_q "$PG_URL" -c "CREATE DATABASE $db" >&2
  CL_URL="${PG_URL%/postgres}/$db"
  CL_PIDS=(); CL_DIRS=(); CL_ADDRS=""
  for i in $(seq 0 $((n - 1))); do
    port=$(free_port)
    dir=$WORK/cl-$tag-$i
    mkdir -p "$dir"
    CL_DIRS[$i]=$dir
    cat >"$dir/gatewayd.toml" <<CONF
[gateway]
data_dir = "$dir/data"
max_sessions = 200000

[http]
listen = "127.0.0.1:$port"

[admin]
listen = "127.0.0.1:0"

[log]
level = "warn"

[agent]
provider = "echo"

[channels.webchat]
enabled = true

[rate_limits.webchat]
per_chat_per_second = 100000
per_chat_burst = 100000

[store]
backend = "postgres"
url_env = "BENCH_DATABASE_URL"

[cluster]
enabled = true
instance_id = "bench-$i"
advertise_url = "http://127.0.0.1:$port"
secret_env = "BENCH_CLUSTER_SECRET"
CONF
    cluster_spawn "$i"
    CL_ADDRS="${CL_ADDRS:+$CL_ADDRS,}127.0.0.1:$port"
  done
}
stop_cluster() {
  local p
  for p in "${CL_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${CL_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  CL_PIDS=()
}
# Waits (bounded: 60 s) until every partition lease is held, unexpired, by the n live instances,
# spread evenly (counts differ by at most one).
wait_balanced() {
  local n=$1
  for _ in $(seq 600); do
    if [ "$(psql_q "$CL_URL" -c "SELECT count(*) = (SELECT count(*) FROM leases WHERE name LIKE 'part:%')
          AND count(*) > 0 AND max(c) - min(c) <= 1 AND count(DISTINCT owner) = $n
        FROM (SELECT owner, count(*) OVER (PARTITION BY owner) AS c FROM leases
              WHERE name LIKE 'part:%' AND owner IS NOT NULL AND expires_at > gw_now_ms()) t" 2>/dev/null)" = t ]; then
      return 0
    fi
    sleep 0.1
  done
  echo "bench: the partitions were not spread over $n instances within 60 s" >&2
  return 1
}

if want P1 || want P2 || want P1PG || want P2PG; then
  # The baseline echo server: its own process, like gatewayd.
  echo "+ $LOADGEN --serve-baseline --addr 127.0.0.1:0 &" >&2
  "$LOADGEN" --serve-baseline --addr 127.0.0.1:0 >"$WORK/baseline.out" 2>&1 &
  BL_PID=$!
  BL_ADDR=$(wait_line "$WORK/baseline.out" "baseline listening on" "$BL_PID" | awk '{print $4}')
fi

# Runs one of the gatewayd crate's benches; its last `{"bench":...}` line is the result.
cargo_bench() {
  local name=$1 tag=$2 r=$3 log
  shift 3
  log=$WORK/$tag-$r.log
  echo "+ $* cargo bench -p gatewayd --bench $name" >&2
  env "$@" cargo bench -p gatewayd --bench "$name" >"$log" 2>&1 \
    || { echo "bench: $name failed:" >&2; tail -n 20 "$log" >&2; exit 1; }
  grep -E '^(locate|route)/|^(first|random|last|channel=)|^workflow_(runs|validate):|^RSS ' "$log" >&2 || true
  echo "{\"bench\":\"$tag\",\"run\":$r,\"result\":$(grep '^{"bench"' "$log" | tail -n1)}" >>"$RESULTS"
}

for r in $(seq "$RUNS"); do
  # P1 (and P1PG, the same on PostgreSQL): flat out, baseline then gateway in the same loadgen
  # invocation.
  for fig in P1 P1PG; do
    want "$fig" || continue
    if [ "$fig" = P1PG ]; then GW_STORE=postgres; else GW_STORE=sqlite; fi
    start_gateway "${fig,,}-$r"
    out=$(run "$LOADGEN" --target webchat --addr "$GW_ADDR" --compare --baseline-addr "$BL_ADDR" \
      --chats "$P1_CHATS" --rate 0 --duration "$P1_SECS" --json)
    echo "$out" | grep -v '^{' >&2 || true
    echo "{\"bench\":\"$fig\",\"run\":$r,\"result\":$(echo "$out" | tail -n1)}" >>"$RESULTS"
    stop_gateway
  done
  GW_STORE=sqlite

  # P2 (and P2PG): fixed 1k msg/s, baseline then gateway at the same rate.
  for fig in P2 P2PG; do
    want "$fig" || continue
    if [ "$fig" = P2PG ]; then GW_STORE=postgres; else GW_STORE=sqlite; fi
    start_gateway "${fig,,}-$r"
    out=$(run "$LOADGEN" --target webchat --addr "$GW_ADDR" --compare --baseline-addr "$BL_ADDR" \
      --chats "$P2_CHATS" --rate "$P2_RATE" --duration "$P2_SECS" --json)
    echo "$out" | grep -v '^{' >&2 || true
    echo "{\"bench\":\"$fig\",\"run\":$r,\"result\":$(echo "$out" | tail -n1)}" >>"$RESULTS"
    stop_gateway
  done
  GW_STORE=sqlite

  if want P3; then
    # P3: idle RSS right after ready, then one message in each of N new chats (N resident
    # sessions), RSS once every reply is in (the loadgen's sockets are closed by then).
    start_gateway "p3-$r"
    idle=$(rss_kb "$GW_PID")
    for b in $(seq "$P3_BATCHES"); do
      # Only the first and last waves' command lines and results are printed.
      if [ "$b" = 1 ] || [ "$b" = "$P3_BATCHES" ]; then
        echo "+ $LOADGEN --target webchat --addr $GW_ADDR --chat-prefix p3-$r-$b --chats $P3_BATCH --rate 0 --messages $P3_BATCH --drain-timeout 60 --json   (wave $b of $P3_BATCHES)" >&2
      fi
      out=$("$LOADGEN" --target webchat --addr "$GW_ADDR" --chat-prefix "p3-$r-$b" \
        --chats "$P3_BATCH" --rate 0 --messages "$P3_BATCH" --drain-timeout 60 --json)
      if [ "$b" = 1 ] || [ "$b" = "$P3_BATCHES" ]; then echo "$out" | grep -v '^{' >&2 || true; fi
      echo "$out" | tail -n1 | python3 -c 'import json,sys; d=json.load(sys.stdin); sys.exit(0 if d["received"]==d["sent"] and d["errors"]==0 else 1)' \
        || { echo "bench: P3 batch $b lost messages" >&2; exit 1; }
    done
    after=$(rss_kb "$GW_PID")
    sessions=$((P3_BATCHES * P3_BATCH))
    echo "P3 run $r: idle VmRSS ${idle} kB; after $sessions sessions ${after} kB" >&2
    echo "{\"bench\":\"P3\",\"run\":$r,\"result\":{\"idle_kb\":$idle,\"after_kb\":$after,\"sessions\":$sessions}}" >>"$RESULTS"
    stop_gateway
  fi

  # P1C: P1's load in multi-instance mode, one instance, then three behind the loadgen's
  # spreading of chats (as a load balancer spreads clients).
  if want P1C; then
    for n in 1 3; do
      start_cluster "p1c$n-$r" "$n"
      wait_balanced "$n"
      out=$(run "$LOADGEN" --target webchat --addr "$CL_ADDRS" \
        --chats "$P1_CHATS" --rate 0 --duration "$P1_SECS" --json)
      echo "$out" | grep -v '^{' >&2 || true
      echo "{\"bench\":\"P1C$n\",\"run\":$r,\"result\":$(echo "$out" | tail -n1)}" >>"$RESULTS"
      stop_cluster
    done
  fi

  # P4-P6 are in-process benches at their full size in both modes.
  if want P4; then cargo_bench routing P4 "$r" USERS=1000000; fi
  if want P5; then cargo_bench workflow_runs P5 "$r" RUNS=10000; fi
  if want P6; then cargo_bench list_sessions P6 "$r" SESSIONS=1000000; fi
  if want P8; then cargo_bench workflow_validate P8 "$r" NODES=10000 RUN_NODES=10000; fi
done

if want FAILOVER; then
  # FAILOVER: three idle instances; kill -9 a random one, time until each partition it held has
  # a higher epoch under a live holder (polled every 50 ms on the server's clock), restart it.
  start_cluster failover 3
  for round in $(seq "$FAILOVER_ROUNDS"); do
    wait_balanced 3
    victim=$((RANDOM % 3))
    held=$(psql_q "$CL_URL" -c "SELECT string_agg(name || '=' || epoch, ',') FROM leases
      WHERE owner = 'bench-$victim' AND expires_at > gw_now_ms() AND name LIKE 'part:%'")
    cond=$(echo "$held" | tr ',' '\n' | awk -F= '{printf "%s(name = '"'"'%s'"'"' AND epoch > %s)", (NR>1?" OR ":""), $1, $2}')
    count=$(echo "$held" | tr ',' '\n' | grep -c .)
    echo "+ kill -9 ${CL_PIDS[$victim]}   (bench-$victim, $count partitions)" >&2
    t0=$(date +%s%N)
    kill -9 "${CL_PIDS[$victim]}"
    wait "${CL_PIDS[$victim]}" 2>/dev/null || true
    ms=""
    for _ in $(seq 600); do
      if [ "$(psql_q "$CL_URL" -c "SELECT count(*) FROM leases WHERE ($cond) AND owner IS NOT NULL
            AND owner <> 'bench-$victim' AND expires_at > gw_now_ms()")" = "$count" ]; then
        ms=$(( ($(date +%s%N) - t0) / 1000000 ))
        break
      fi
      sleep 0.05
    done
    [ -n "$ms" ] || { echo "bench: round $round: bench-$victim's partitions not owned again within 30 s" >&2; exit 1; }
    echo "FAILOVER round $round: bench-$victim's $count partitions owned again after $ms ms" >&2
    echo "{\"bench\":\"FAILOVER\",\"run\":$round,\"result\":{\"ms\":$ms,\"partitions\":$count}}" >>"$RESULTS"
    cluster_spawn "$victim"
  done
  stop_cluster
fi

if want SOAK; then
  # SOAK: one gatewayd, a new set of 200 chats every minute, RSS sampled every 10 s.
  GW_IDLE=2m start_gateway soak
  GW_IDLE=30m
  SAMPLES=$WORK/soak-samples.tsv
  : >"$SAMPLES"
  soak_start=$(date +%s)
  (
    i=0
    while kill -0 "$GW_PID" 2>/dev/null; do
      # Samples at fixed offsets from the start (0, 10, 20, ... s), not 10 s after the last one.
      now=$(date +%s)
      target=$((soak_start + 10 * i))
      [ "$now" -lt "$target" ] && sleep $((target - now))
      rss=$(rss_kb "$GW_PID" 2>/dev/null) || break
      resident=$("$GATEWAYCTL" --addr "http://$ADMIN_ADDR" status --output json 2>/dev/null \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["sessions_resident"])' 2>/dev/null || echo -1)
      printf '%s\t%s\t%s\n' "$(($(date +%s) - soak_start))" "$rss" "$resident" >>"$SAMPLES"
      i=$((i + 1))
    done
  ) &
  SAMPLER_PID=$!
  soak_received=0
  soak_errors=0
  minute=0
  echo "SOAK: ${SOAK_SECS} s, 200 chats x 2 in flight, new chats every minute, no scraper ($GATEWAYD)" >&2
  while [ $(( $(date +%s) - soak_start )) -lt "$SOAK_SECS" ]; do
    left=$(( SOAK_SECS - ($(date +%s) - soak_start) ))
    secs=$(( left < 60 ? left : 60 ))
    [ "$secs" -lt 5 ] && break
    if [ "$minute" = 0 ]; then
      echo "+ $LOADGEN --target webchat --addr $GW_ADDR --chat-prefix soak-$minute --chats 200 --rate 0 --inflight 2 --duration $secs --json   (once a minute, a new prefix each time)" >&2
    fi
    out=$("$LOADGEN" --target webchat --addr "$GW_ADDR" --chat-prefix "soak-$minute" \
      --chats 200 --rate 0 --inflight 2 --duration "$secs" --json)
    line=$(echo "$out" | tail -n1)
    soak_received=$((soak_received + $(echo "$line" | python3 -c 'import json,sys; print(json.load(sys.stdin)["received"])')))
    soak_errors=$((soak_errors + $(echo "$line" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["errors"] + d["unanswered"])')))
    echo "SOAK minute $minute: $(echo "$out" | grep -v '^{' | grep -m1 -i 'throughput' || echo "$line")" >&2
    minute=$((minute + 1))
  done
  load_end=$(( $(date +%s) - soak_start ))
  # One more sample after the load (shown, not fitted), then the sampler stops.
  sleep 10
  kill "$SAMPLER_PID" 2>/dev/null; wait "$SAMPLER_PID" 2>/dev/null || true
  SAMPLER_PID=""
  python3 - "$SAMPLES" "$soak_received" "$soak_errors" "$SOAK_SECS" "$load_end" >>"$RESULTS" <<'PY'
import json, sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().splitlines() if l.strip()]
samples = [[int(t), int(kb), int(s)] for t, kb, s in rows]
# The fit: the samples of the second half of the load, up to its end.
half = [r for r in samples if int(sys.argv[4]) / 2 <= r[0] <= int(sys.argv[5])]
n = len(half)
xs = [r[0] / 60 for r in half]
ys = [r[1] / 1024 for r in half]
mx, my = sum(xs) / n, sum(ys) / n
slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
print(json.dumps({"bench": "SOAK", "run": 1, "result": {
    "secs": int(sys.argv[4]), "load_end_s": int(sys.argv[5]), "received": int(sys.argv[2]), "errors": int(sys.argv[3]),
    "samples": samples, "slope_mib_per_min": slope,
    "first_mib": samples[0][1] / 1024, "half_mib": half[0][1] / 1024,
    "last_mib": samples[-1][1] / 1024, "max_mib": max(r[1] for r in samples) / 1024}}))
PY
  stop_gateway
fi

echo "bench: load after: $(uptime | sed 's/.*load average: //')"
python3 - "$RESULTS" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def med(xs): return statistics.median(xs)
def table(name, cols):
    rs = [r for r in rows if r["bench"] == name]
    if not rs:
        return
    print(f"\n{name}")
    print("| run | " + " | ".join(c for c, _ in cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    vals = []
    for r in rs:
        v = [f(r["result"]) for _, f in cols]
        vals.append(v)
        print(f"| {r['run']} | " + " | ".join(f"{x:,.3f}".rstrip("0").rstrip(".") for x in v) + " |")
    if vals:
        m = [med([v[i] for v in vals]) for i in range(len(cols))]
        print("| **median** | " + " | ".join(f"**{x:,.3f}**".replace(".000**", "**") for x in m) + " |")
g = lambda k: (lambda r: r["gateway"][k])
b = lambda k: (lambda r: r["baseline"][k])
P1_COLS = [("gateway msg/s", g("throughput")), ("baseline msg/s", b("throughput")),
           ("ratio", lambda r: r["ratio"]), ("gateway p50 ms", lambda r: r["gateway"]["latency_ms"]["p50"]),
           ("gateway p99 ms", lambda r: r["gateway"]["latency_ms"]["p99"]),
           ("sent", g("sent")), ("received", g("received")), ("errors", g("errors"))]
P2_COLS = [("gateway p50 ms", lambda r: r["gateway"]["latency_ms"]["p50"]),
           ("gateway p99 ms", lambda r: r["gateway"]["latency_ms"]["p99"]),
           ("baseline p99 ms", lambda r: r["baseline"]["latency_ms"]["p99"]),
           ("added p50 ms", lambda r: r["added_latency_ms"]["p50"]),
           ("added p99 ms", lambda r: r["added_latency_ms"]["p99"]),
           ("added p99.9 ms", lambda r: r["added_latency_ms"]["p99_9"]),
           ("gateway msg/s", g("throughput"))]
table("P1", P1_COLS)
table("P1PG", P1_COLS)
ONE_COLS = [("msg/s", lambda r: r["throughput"]), ("p50 ms", lambda r: r["latency_ms"]["p50"]),
            ("p99 ms", lambda r: r["latency_ms"]["p99"]), ("sent", lambda r: r["sent"]),
            ("received", lambda r: r["received"]), ("errors", lambda r: r["errors"])]
table("P1C1", ONE_COLS)
table("P1C3", ONE_COLS)
table("FAILOVER", [("kill -9 to re-owned ms", lambda r: r["ms"]), ("partitions", lambda r: r["partitions"])])
table("P2", P2_COLS)
table("P2PG", P2_COLS)
def versus(pg, lite, what, f):
    a = [f(r["result"]) for r in rows if r["bench"] == pg]
    s = [f(r["result"]) for r in rows if r["bench"] == lite]
    if a and s and med(s):
        return f"{pg} / {lite} {what}: {med(a):,.3f} / {med(s):,.3f} = {med(a) / med(s):.3f} (medians of this run)"
    return None
lines = [l for l in [
    versus("P1PG", "P1", "gateway msg/s", g("throughput")),
    versus("P1C3", "P1C1", "msg/s", lambda r: r["throughput"]),
    versus("P2PG", "P2", "added p50 ms", lambda r: r["added_latency_ms"]["p50"]),
    versus("P2PG", "P2", "added p99 ms", lambda r: r["added_latency_ms"]["p99"]),
] if l]
if lines:
    print("\nRatios (PostgreSQL against SQLite, three instances against one)")
    print("\n".join(lines))
table("P3", [("idle MiB", lambda r: r["idle_kb"] / 1024), ("after MiB", lambda r: r["after_kb"] / 1024),
             ("sessions", lambda r: r["sessions"]),
             ("KiB/session", lambda r: (r["after_kb"] - r["idle_kb"]) / r["sessions"])])
table("P4", [("locate warm p99 us", lambda r: r["warm_p99_us"]),
             ("route resident p99 us", lambda r: r["route_p99_us"]),
             ("locate cold p99 us", lambda r: r["cold_p99_us"]),
             ("cache bytes/user", lambda r: r["cache_bytes_per_user"])])
table("P5", [("total s", lambda r: r["total_s"]), ("runs/s", lambda r: r["runs"] / r["total_s"]),
             ("per node us", lambda r: r["per_node_us"]), ("failed", lambda r: r["failed"])])
case = lambda name, k: (lambda r: next(c[k] for c in r["cases"] if c["case"] == name))
table("P6", [(f"{n} {k.split('_')[0]} us", case(n, k))
             for n in ["first", "random", "last", "channel=telegram random", "channel=http random"]
             for k in ["median_us", "p99_us"]])
table("P8", [("chain validate ms", lambda r: r["chain_validate_ms"]),
             ("chain parse ms", lambda r: r["chain_parse_ms"]),
             ("dag validate ms", lambda r: r["dag_validate_ms"]),
             ("dag parse ms", lambda r: r["dag_parse_ms"]),
             ("run chain us/node", lambda r: r["run_chain_per_node_us"]),
             ("run fan us/node", lambda r: r["run_fan_per_node_us"])])
for r in rows:
    if r["bench"] != "SOAK":
        continue
    d = r["result"]
    print(f"\nSOAK ({d['secs']} s, {d['received']:,} replies, {d['errors']} errors/unanswered)")
    print("| t s | VmRSS MiB | resident sessions |")
    print("|---|---|---|")
    for t, kb, s in d["samples"]:
        print(f"| {t} | {kb / 1024:.1f} | {s} |")
    print(f"RSS: {d['first_mib']:.1f} MiB at start, {d['half_mib']:.1f} at half time, "
          f"{d['last_mib']:.1f} at the end, {d['max_mib']:.1f} at most; "
          f"slope over the second half: {d['slope_mib_per_min']:+.3f} MiB/min")
    print("SOAK_JSON " + json.dumps(d))
PY
