#!/usr/bin/env bash
# Serve a Block Transformer with vLLM's OpenAI-compatible server on loopback.
#   examples/serve.sh [MODEL_DIR] [extra vllm serve args...]
# PORT (default 8000) and VLLM_CPU_KVCACHE_SPACE (GiB, default 1) from the environment.
set -euo pipefail
MODEL=${1:-models/kjv-block-tiny}
shift || true
export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1}
exec vllm serve "$MODEL" --host 127.0.0.1 --port "${PORT:-8000}" --dtype float32 \
    --max-model-len 512 "$@"
