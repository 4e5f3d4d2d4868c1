#!/usr/bin/env bash
# The test command: installs what the tests need when it is missing, then runs every test.
# Usage: tests/run.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages the tests use: tmux drives the console's end-to-end test. Installed only when
# missing, and only as root.
need_apt=()
command -v tmux >/dev/null 2>&1 || need_apt+=(tmux)
command -v sqlite3 >/dev/null 2>&1 || need_apt+=(sqlite3)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "tests/run.sh: installing ${need_apt[*]}" >&2
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "tests/run.sh: not root; install ${need_apt[*]} yourself" >&2
    exit 1
  fi
fi

# Build the binaries the end-to-end tests start, then run the whole suite.
cargo build --locked --bin gatewayd --bin gatewayctl
cargo test --workspace --locked "$@"
