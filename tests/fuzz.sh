#!/usr/bin/env bash
# The long generated-input run: every `prop_*` test (HTTP channel bodies, WebChat frames, Telegram and
# Discord payloads, config and workflow TOML, /command arguments) with many more cases than the normal
# suite runs.
# Usage: tests/fuzz.sh [CASES]   (default 20000 cases per property; tests/run.sh runs each with its small default)
set -euo pipefail
cd "$(dirname "$0")/.."
cases="${1:-20000}"
cargo build --locked --bin gatewayd --bin gatewayctl
echo "tests/fuzz.sh: PROPTEST_CASES=$cases" >&2
PROPTEST_CASES="$cases" cargo test --workspace --locked prop_ -- --nocapture
