#!/usr/bin/env bash
# The long failover run: the failover test of tests/tests/failover.rs with more kill rounds
# (three gatewayd instances and one PostgreSQL, kill -9 of a random instance each round, then a
# SIGSTOP round longer than a lease), on a throwaway PostgreSQL cluster this script starts.
#
# Usage: tests/failover.sh [--rounds N] [--minutes M] [--sessions S] [--rate R]
#   --rounds N    kill -9 rounds (default 20)
#   --minutes M   keep starting kill rounds until M minutes have passed (default 0: rounds only)
#   --sessions S  sessions of the load (default 30)
#   --rate R      messages per second of the load, half HTTP, half Telegram (default 20)
# Prints the test's `failover summary:` line last (kill rounds, re-ownership p50 and max in ms,
# messages acknowledged, lost, duplicate turns and sends, wasted model calls, fenced commits).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=20
MINUTES=0
SESSIONS=30
RATE=20
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS="$2"; shift ;;
    --minutes) MINUTES="$2"; shift ;;
    --sessions) SESSIONS="$2"; shift ;;
    --rate) RATE="$2"; shift ;;
    *) echo "usage: tests/failover.sh [--rounds N] [--minutes M] [--sessions S] [--rate R]" >&2; exit 2 ;;
  esac
  shift
done
for v in "$ROUNDS" "$MINUTES" "$SESSIONS" "$RATE"; do
  case "$v" in
    ''|*[!0-9]*) echo "failover: every option takes a whole number" >&2; exit 2 ;;
  esac
done

. tests/pg_cluster.sh
if [ -z "$(pg_bindir)" ]; then
  echo "failover: no initdb under /usr/lib/postgresql/*/bin; install the postgresql package" >&2
  exit 1
fi
pg_dir="$(mktemp -d "${TMPDIR:-/tmp}/gateway-failover-pg.XXXXXX")"
log="$(mktemp "${TMPDIR:-/tmp}/gateway-failover.XXXXXX.log")"
trap 'pg_cluster_stop "$pg_dir"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
pg_cluster_start "$pg_dir"
export GATEWAY_TEST_PG_URL="$PG_URL"

cargo build --locked --bin gatewayd --bin gatewayctl
echo "failover: $ROUNDS rounds, at least $MINUTES min, $SESSIONS sessions at $RATE msg/s; log in $log" >&2
status=0
GATEWAY_FAILOVER_ROUNDS="$ROUNDS" GATEWAY_FAILOVER_MINUTES="$MINUTES" \
  GATEWAY_FAILOVER_SESSIONS="$SESSIONS" GATEWAY_FAILOVER_RATE="$RATE" \
  cargo test --locked -p gateway-tests --test failover -- --nocapture >"$log" 2>&1 || status=$?
grep -E '^round [0-9]+:|^pause round:' "$log" >&2 || true
if [ "$status" != 0 ]; then
  echo "failover: FAILED (exit $status); the test's panic:" >&2
  grep -A 12 'panicked at' "$log" | head -n 40 >&2 || tail -n 40 "$log" >&2
  exit "$status"
fi
grep -m1 '^failover summary:' "$log"
