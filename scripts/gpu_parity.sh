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
# Also covers tensor parallelism when more than one GPU is visible.
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
       tests/test_vllm_config_errors.py)
# tensor parallelism (TP=2 parity, TP/DP serving) when two or more GPUs are visible
if [ "$(nvidia-smi -L | wc -l)" -ge 2 ]; then TESTS+=(tests/test_vllm_parallel.py); fi
.venv-gpu/bin/python -m pytest -q -ra "${TESTS[@]}" "$@"
