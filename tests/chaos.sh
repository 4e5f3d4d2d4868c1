#!/usr/bin/env bash
# The long crash-safety run: many chats post while gatewayd is SIGKILLed and restarted at random
# moments; afterwards nothing may be lost and every message must have had exactly one agent turn.
# Usage: tests/chaos.sh [MESSAGES] [KILLS] [CHATS]   (defaults 20000 20 100)
# CHAOS_SEED=<n> replays the kill points of an earlier run (the test prints its seed).
# Uses the same (debug) profile as tests/run.sh, so nothing is compiled twice.
set -euo pipefail
cd "$(dirname "$0")/.."

messages="${1:-20000}"
kills="${2:-20}"
chats="${3:-100}"
for arg in "$messages" "$kills" "$chats"; do
  if ! [[ "$arg" =~ ^[0-9]+$ ]]; then
    echo "usage: tests/chaos.sh [MESSAGES] [KILLS] [CHATS]  (whole numbers; got '$arg')" >&2
    exit 2
  fi
done

cargo build --locked --bin gatewayd
CHAOS_MESSAGES="$messages" CHAOS_KILLS="$kills" CHAOS_CHATS="$chats" \
  cargo test --locked -p gateway-tests --test chaos -- --nocapture
