#!/usr/bin/env bash
# The quick-start "run" command: installs what is needed, starts the server on
# http://127.0.0.1:${KEN_PORT:-8000} (embedded directory store) at once, and builds the demo tasks
# in the background (fine-tune all-MiniLM-L6-v2 on two real tasks, extract magnitude subnetworks at
# k=100; cached in .cache/demo). The server watches .cache/demo/subnetworks and serves each task as
# soon as its file lands; /readyz lists the tasks still pending. Extra arguments go to `ken serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/setup.sh
source scripts/setup.sh
port="${KEN_PORT:-8000}"
url="http://127.0.0.1:$port"
demo=.cache/demo
mkdir -p "$demo/subnetworks"
# The server truncates every task alike: at the length the demo tasks were trained with.
max_length="$(python -m examples.build_demo --print-max-length)"
tasks="$(python -c 'from examples.build_demo import RECIPES; print(",".join(RECIPES))')"

echo "demo: serving on $url (API docs: $url/docs); building the tasks $tasks in the background"
echo "demo: watch them arrive with: curl -s $url/readyz   or   curl -s $url/v1/subnetworks"
python -m examples.build_demo --out "$demo" --serve-url "$url" &
builder=$!
trap 'kill "$builder" 2>/dev/null || true' EXIT
ken serve --port "$port" --store-dir "$demo/store" --preload "$demo/subnetworks" --watch 2 \
  --expect "$tasks" --max-length "$max_length" "$@"
