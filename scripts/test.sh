#!/usr/bin/env bash
# The project's test command (README, CI): sets everything up on a fresh machine, then lints and tests.
# The tests use the Redis on 127.0.0.1:6379 when one answers and start their own redis-server otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/setup.sh
source scripts/setup.sh
if ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test: installing redis-server (Debian package)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  else
    echo "test: redis-server is not installed; install it (e.g. apt-get install redis-server)" >&2
    exit 2
  fi
fi
ruff check .
ruff format --check .
python -m pytest "$@"
