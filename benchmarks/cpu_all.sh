#!/usr/bin/env bash
# Every CPU benchmark of docs/benchmarks.md in one command
# (75 min on 2 Zen 5 cores, about 2 hours on Zen 4; --long: throughput.py --scale cpu-long too, another hour):
#
#   bash benchmarks/cpu_all.sh [--long]
#
#   1. batch_sweep.py: decode tokens/s vs concurrent requests (8 ... 512), both
#      models, 4 GiB of KV per engine, bf16, the paper regime's mean context
#   2. throughput.py --scale cpu-max: the paper regime batch maximised (128 ->
#      1888, 1888 -> 128, 4 GiB of KV per engine, each model handed as many
#      requests as its KV holds), bf16 and fp32
#   3. profile_decode.py: the block model's decode step at the batch and mean
#      context of step 2's bf16 decode-heavy run, with its op table
#   4. throughput.py --scale cpu: the small-memory case (512 MiB of KV per
#      engine) with the reference model, and the short-context table
#   5. serve_bench.py: `vllm bench serve` against `vllm serve`, block vs vanilla,
#      3 request rates
#   6. report.py: the Markdown tables
#
# PY is the Python command (word-split, so it may be a wrapper, e.g.
# PY="flock /tmp/heavy.lock .venv/bin/python" to queue behind other jobs).
# Writes benchmarks/results/{batch_sweep_bfloat16.{json,png},
# throughput_<scale>.json, throughput_<scale>_*.png, decode_profile_*.{json,ops.txt},
# serve_cpu.json, serve_cpu.png, report_<scale>.md}.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
CACHE=${CACHE:-/tmp/vllm_block_bench}
RESULTS=benchmarks/results
$PY benchmarks/batch_sweep.py --cache "$CACHE"
$PY benchmarks/throughput.py --scale cpu-max --cache "$CACHE"
$PY benchmarks/profile_decode.py --like "$RESULTS/throughput_cpu-max.json" --kv-gib 4 \
    --cache "$CACHE"
$PY benchmarks/report.py "$RESULTS/throughput_cpu-max.json" > "$RESULTS/report_cpu-max.md"
SCALES="cpu"
if [[ "${1:-}" == "--long" ]]; then SCALES="cpu cpu-long"; fi
for SCALE in $SCALES; do
    $PY benchmarks/throughput.py --scale "$SCALE" --cache "$CACHE"
    $PY benchmarks/report.py "$RESULTS/throughput_$SCALE.json" > "$RESULTS/report_$SCALE.md"
done
$PY benchmarks/serve_bench.py --scale cpu --cache "$CACHE"
