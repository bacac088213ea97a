#!/usr/bin/env bash
# The vLLM comparison at the paper's sizes on one CUDA GPU (vLLM 0.32 CUDA build,
# this package installed: pip install -e '.[gpu]').
#
#   bash benchmarks/gpu_vllm.sh [extra throughput.py options]
#
# Pairs (the paper's Table 1): vanilla_70 / block_main_b4_85, vanilla_160 /
# block_main_b4_300, vanilla_410 / block_main_b4_1.2b; bf16; workloads 2048 -> 128
# and 128 -> 2048, 256 requests each handed to LLM.generate at once, 24 GiB KV
# budget per engine. Columns: block-fast (this plugin with --kv-sharing-fast-prefill,
# its throughput setting), vanilla as vLLM's native GPT-J at vLLM's defaults (CUDA graphs),
# and vanilla GPT-NeoX through vLLM's Transformers backend (first pair only, to
# stay within about 8 minutes on an H200). Writes
# benchmarks/results/throughput_paper.json and throughput_paper_bfloat16.png.
# Not yet run: no CUDA machine with vLLM was available when it was written.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
"$PY" -c "import vllm, torch; assert torch.cuda.is_available(), 'needs CUDA'; print('vllm', vllm.__version__, torch.cuda.get_device_name())"
exec timeout 900 "$PY" benchmarks/throughput.py --scale paper --neox-groups 0 \
    --cache "${CACHE:-/tmp/vllm_block_bench}" "$@"
