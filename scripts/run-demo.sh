#!/usr/bin/env bash
# The quick-start "run" command: installs what is needed, builds the demo subnetworks once
# (fine-tune all-MiniLM-L6-v2 on two real tasks, extract KEN subnetworks; cached in .cache/demo),
# then serves them from the embedded (directory) store on http://127.0.0.1:${KEN_PORT:-8000}.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/setup.sh
source scripts/setup.sh
python -m examples.build_demo --out .cache/demo
port="${KEN_PORT:-8000}"
echo
echo "Serving on http://127.0.0.1:$port (API docs: http://127.0.0.1:$port/docs). Try:"
for file in .cache/demo/subnetworks/*.safetensors; do
  task="$(basename "$file" .safetensors)"
  echo "  curl -s http://127.0.0.1:$port/v1/predict -H 'content-type: application/json' \\"
  echo "       -d '{\"task\": \"$task\", \"inputs\": [\"Shares in the bank rose after record profits\"], \"top_k\": 2}'"
done
echo
exec ken serve --port "$port" --store-dir .cache/demo/store --preload .cache/demo/subnetworks "$@"
