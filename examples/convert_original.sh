#!/usr/bin/env bash
# Convert a checkpoint of the original research code into a model directory
# that vLLM serves, then check it loads with the reference model.
#   examples/convert_original.sh [SRC] [OUT]
# SRC defaults to the tiny fixture; for a published model pass the checkpoint
# directory and add --config conf/trainer/<name>.yaml --tokenizer DIR (see README).
set -euo pipefail
SRC=${1:-../shared/fixtures/original_tiny_b4}
OUT=${2:-out/converted}
rm -rf "$OUT"
vllm-block convert "$SRC" "$OUT"
vllm-block reference-generate "$OUT" --prompt-ids 1,2,3 --max-new-tokens 8
