#!/usr/bin/env bash
# Every CPU benchmark of docs/benchmarks.md in one command
# (about 25 min on 2 cores; --long: throughput.py --scale cpu-long, about an hour):
#
#   bash benchmarks/cpu_all.sh [--long]
#
#   1. throughput.py: the paper regime (128 -> 1888, 1888 -> 128, batch
#      maximised under 512 MiB of KV per engine, bf16 and fp32, the block
#      model's reference at the same batch) and the short-context table
#   2. profile_decode.py: the block model's decode step at the batch and mean
#      context of the paper-regime decode-heavy run of step 1
#   3. serve_bench.py: `vllm bench serve` against `vllm serve`, block vs vanilla,
#      3 request rates
#   4. report.py: the Markdown tables
#
# Writes benchmarks/results/{throughput_<scale>.json, throughput_<scale>_*.png,
# decode_profile_*.json, serve_cpu.json, serve_cpu.png, report_<scale>.md}.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
CACHE=${CACHE:-/tmp/vllm_block_bench}
SCALE=cpu
if [[ "${1:-}" == "--long" ]]; then SCALE=cpu-long; fi
RESULTS=benchmarks/results
"$PY" benchmarks/throughput.py --scale "$SCALE" --cache "$CACHE"
"$PY" benchmarks/profile_decode.py --like "$RESULTS/throughput_$SCALE.json" --cache "$CACHE"
"$PY" benchmarks/serve_bench.py --scale cpu --cache "$CACHE"
"$PY" benchmarks/report.py "$RESULTS/throughput_$SCALE.json" > "$RESULTS/report_$SCALE.md"
