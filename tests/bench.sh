#!/usr/bin/env bash
# The benchmark suite (not part of tests/run.sh): P1 throughput with the echo agent and the
# baseline ratio, P2 gateway-added latency at 1k msg/s, P3 idle RSS and RSS per resident session
# (through the release gatewayd binary and the loadgen), then P4 identity + session routing with
# 1M known users, P5 10k concurrent workflow runs, P6 ListSessions pages out of 1M sessions and
# P8 validating (and running once) 10k-node workflows (the gatewayd crate's `cargo bench`
# targets).
#
# Usage: tests/bench.sh [--full] [--runs N] [--only P1,P2,...]
#   quick (default): P1 1000 chats flat out for 10 s
#   --full:          P1 10k chats flat out for 30 s
#   The rest is the same in both: P2 100 chats, 1000 msg/s in total, 10 s; P3 100k resident
#   sessions (200 waves of 500 chats); P4 1M users; P5 10k runs; P6 1M sessions; P8 10k nodes.
# Every figure is run N times (default 3), P1-P3 each on a fresh gatewayd with a fresh data dir,
# and the median printed. Everything listens on and talks to 127.0.0.1 only. Needs python3.
#
# Rate limits: WebChat's built-in outbound limit is 10 msg/s per chat, which would cap a flat-out
# chat, so the generated config raises it (`[rate_limits.webchat] per_chat_per_second = 100000`).
# `gateway.max_sessions = 200000` so no session is evicted during P3.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

MODE=quick
RUNS=3
ONLY=P1,P2,P3,P4,P5,P6,P8
while [ $# -gt 0 ]; do
  case "$1" in
    --full) MODE=full ;;
    --runs) RUNS="$2"; shift ;;
    --only) ONLY="$2"; shift ;;
    *) echo "usage: tests/bench.sh [--full] [--runs N] [--only P1,P2,P3,P4,P5,P6,P8]" >&2; exit 2 ;;
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
    P1|P2|P3|P4|P5|P6|P8) ;;
    *) echo "bench: unknown figure \`$f\` in --only (expected a comma-separated list of P1..P6, P8)" >&2; exit 2 ;;
  esac
done
# P3 creates its sessions in waves of 500 chats (one loadgen run each, sockets closed at its
# end): gatewayd's memory per open WebSocket is large (~200 KB) and stays in its heap after the
# socket closes, so 10k sockets at once would measure sockets, not sessions (see BENCHMARKS.md).
P3_BATCH=500
P2_CHATS=100; P2_RATE=1000; P2_SECS=10

run() { echo "+ $*" >&2; "$@"; }

run cargo build --release -p gatewayd -p gateway-tests --bin gatewayd --bin loadgen
if want P4 || want P5 || want P6 || want P8; then
  # Built before anything is timed, so no bench waits for the compiler.
  run cargo bench -p gatewayd --no-run --bench routing --bench workflow_runs --bench list_sessions \
    --bench workflow_validate
fi
GATEWAYD=$ROOT/target/release/gatewayd
LOADGEN=$ROOT/target/release/loadgen

# 10k WebSockets need 10k descriptors in each process.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
echo "bench: mode=$MODE runs=$RUNS nofile=$(ulimit -n) load: $(uptime | sed 's/.*load average: //')"

WORK=$(mktemp -d /tmp/gateway-bench.XXXXXX)
GW_PID=""
BL_PID=""
cleanup() {
  local rc=$?
  if [ -n "$GW_PID" ]; then kill "$GW_PID" 2>/dev/null; wait "$GW_PID" 2>/dev/null || true; fi
  if [ -n "$BL_PID" ]; then kill "$BL_PID" 2>/dev/null; wait "$BL_PID" 2>/dev/null || true; fi
  if [ "$rc" = 0 ]; then
    rm -rf "$WORK"
  else
    echo "bench: failed ($rc); kept $WORK (each gatewayd's stdout/stderr are in gw-*/)" >&2
    for f in "$WORK"/gw-*/stderr; do [ -s "$f" ] && { echo "--- $f (tail)" >&2; tail -n 5 "$f" >&2; }; done
  fi
  exit "$rc"
}
trap cleanup EXIT

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

# Starts a fresh gatewayd (echo agent, WebChat) in $WORK/gw-$1; sets GW_PID and GW_ADDR.
start_gateway() {
  local dir=$WORK/gw-$1
  mkdir -p "$dir"
  cat >"$dir/gatewayd.toml" <<EOF
[gateway]
data_dir = "$dir/data"
max_sessions = 200000

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

if want P1 || want P2; then
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
  if want P1; then
    # P1: flat out, baseline then gateway in the same loadgen invocation.
    start_gateway "p1-$r"
    out=$(run "$LOADGEN" --target webchat --addr "$GW_ADDR" --compare --baseline-addr "$BL_ADDR" \
      --chats "$P1_CHATS" --rate 0 --duration "$P1_SECS" --json)
    echo "$out" | grep -v '^{' >&2 || true
    echo "{\"bench\":\"P1\",\"run\":$r,\"result\":$(echo "$out" | tail -n1)}" >>"$RESULTS"
    stop_gateway
  fi

  if want P2; then
    # P2: fixed 1k msg/s, baseline then gateway at the same rate.
    start_gateway "p2-$r"
    out=$(run "$LOADGEN" --target webchat --addr "$GW_ADDR" --compare --baseline-addr "$BL_ADDR" \
      --chats "$P2_CHATS" --rate "$P2_RATE" --duration "$P2_SECS" --json)
    echo "$out" | grep -v '^{' >&2 || true
    echo "{\"bench\":\"P2\",\"run\":$r,\"result\":$(echo "$out" | tail -n1)}" >>"$RESULTS"
    stop_gateway
  fi

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

  # P4-P6 are in-process benches at their full size in both modes.
  if want P4; then cargo_bench routing P4 "$r" USERS=1000000; fi
  if want P5; then cargo_bench workflow_runs P5 "$r" RUNS=10000; fi
  if want P6; then cargo_bench list_sessions P6 "$r" SESSIONS=1000000; fi
  if want P8; then cargo_bench workflow_validate P8 "$r" NODES=10000 RUN_NODES=10000; fi
done

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
table("P1", [("gateway msg/s", g("throughput")), ("baseline msg/s", b("throughput")),
             ("ratio", lambda r: r["ratio"]), ("gateway p50 ms", lambda r: r["gateway"]["latency_ms"]["p50"]),
             ("gateway p99 ms", lambda r: r["gateway"]["latency_ms"]["p99"]),
             ("sent", g("sent")), ("received", g("received")), ("errors", g("errors"))])
table("P2", [("gateway p50 ms", lambda r: r["gateway"]["latency_ms"]["p50"]),
             ("gateway p99 ms", lambda r: r["gateway"]["latency_ms"]["p99"]),
             ("baseline p99 ms", lambda r: r["baseline"]["latency_ms"]["p99"]),
             ("added p50 ms", lambda r: r["added_latency_ms"]["p50"]),
             ("added p99 ms", lambda r: r["added_latency_ms"]["p99"]),
             ("added p99.9 ms", lambda r: r["added_latency_ms"]["p99_9"]),
             ("gateway msg/s", g("throughput"))])
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
PY
