#!/usr/bin/env bash
# The vLLM parity tests on a CUDA machine: one command, a few minutes.
#
#   bash scripts/gpu_parity.sh
#
# Needs Python 3.10+, a CUDA GPU and network access to PyPI (for vLLM 0.32's
# CUDA build, the `gpu` extra). Creates .venv-gpu beside the repository, then
# runs the same vLLM tests as CI (ground truth of the original code, chunked
# prefill, preemption, prefix caching, random configurations, bf16) with the
# platform's CUDA attention backend wrapped for block-level paging.
# Also covers tensor parallelism when more than one GPU is visible, the static
# decode step under FULL_DECODE_ONLY CUDA graphs against the exact step at batch
# 1, 7, 64 and 256 (tests/test_vllm_static_decode.py), and the decode step time
# eager vs graphs (benchmarks/profile_decode.py, results in benchmarks/results/).
# Not yet run: no CUDA machine with vLLM was available when it was written.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv-gpu/bin/python ]; then
  "$PY" -m venv .venv-gpu
  .venv-gpu/bin/pip install 'torch==2.13.0'
  .venv-gpu/bin/pip install -e '.[gpu,dev]'
fi
nvidia-smi --query-gpu=name,memory.total --format=csv
TESTS=(tests/test_reference_parity.py tests/test_vllm_fixture.py tests/test_vllm_scheduling.py
       tests/test_vllm_random_configs.py tests/test_vllm_fast_prefill.py tests/test_vllm_bfloat16.py
       tests/test_vllm_config_errors.py tests/test_vllm_static_decode.py tests/test_decode_plan.py)
# tensor parallelism (TP=2 parity, TP/DP serving) when two or more GPUs are visible
if [ "$(nvidia-smi -L | wc -l)" -ge 2 ]; then TESTS+=(tests/test_vllm_parallel.py); fi
.venv-gpu/bin/python -m pytest -q -ra "${TESTS[@]}" "$@"
# decode step time at batch 64: exact step eager, static step eager, static step
# replayed as a CUDA graph (vLLM's default for this model on CUDA)
for mode in "--decode exact" "--decode static" "--decode auto --compiled"; do
  .venv-gpu/bin/python benchmarks/profile_decode.py --batch 64 $mode \
    --tag "_gpu_${mode//[- ]/}"
done
