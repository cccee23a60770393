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
# The console's browser test uses Debian's chromium and its chromedriver (nothing is downloaded at run time);
# without them (not root, no apt) that test is skipped and says why.
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test: installing chromium and chromium-driver (Debian packages) for the browser test"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null \
      || echo "test: could not install chromium; the browser test will be skipped" >&2
  else
    echo "test: no /usr/bin/chromium or /usr/bin/chromedriver; the browser test will be skipped" >&2
  fi
fi
ruff check .
ruff format --check .
python -m pytest "$@"
