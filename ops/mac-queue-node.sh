#!/usr/bin/env bash
# A queue node on an Apple Silicon Mac, natively (Docker on a Mac cannot reach the GPU), with the
# mlx engine, against the compose cluster's Redis.
#   ops/mac-queue-node.sh [REDIS_HOST] [PORT]
set -euo pipefail
cd "$(dirname "$0")/.."
redis_host=${1:-localhost}
port=${2:-3101}
if [[ "$(uname -s)-$(uname -m)" != "Darwin-arm64" ]]; then
  echo "this script is for Apple Silicon Macs" >&2
  exit 2
fi
[[ -x .venv/bin/sayit ]] || { python3 -m venv .venv && .venv/bin/pip install --quiet -e ".[mlx]"; }
.venv/bin/sayit convert-mlx  # once: data/mlx/base from the bundled model, re-used afterwards
# The compose Redis asks for REDIS_PASSWORD; a Redis on another machine needs TLS: set REDIS_URL=rediss://...
export REDIS_URL="${REDIS_URL:-redis://:${REDIS_PASSWORD:?set REDIS_PASSWORD or REDIS_URL}@${redis_host}:6379/0}"
export SAYIT_ENGINE=mlx WORKER_ID="${WORKER_ID:-mac-$(hostname -s)}"
export HF_HUB_OFFLINE=1 MAX_CONCURRENT_CHUNKS="${MAX_CONCURRENT_CHUNKS:-2}"
exec .venv/bin/sayit worker --port "$port"
