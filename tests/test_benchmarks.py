"""The benchmark code path on tiny models, so it cannot rot: the cost model's
parameter counts against real modules, `benchmarks/throughput.py --scale tiny`
(one block engine, one vanilla GPT-J engine, both HF references) and
`benchmarks/gpu_reference.py --scale tiny` on CPU."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from models import MODELS  # noqa: E402


@pytest.mark.parametrize("name", ["vanilla_31", "block_main_b4_5", "tiny_vanilla",
                                  "tiny_block"])
def test_parameter_counts_match_real_modules(name):
    """The cost model (roofline, plots) counts the parameters of the real models:
    the paper's 31M and 33M."""
    spec = MODELS[name]
    with torch.device("meta"):
        if spec.kind == "block":
            from vllm_block import BlockTransformerConfig, BlockTransformerForCausalLM

            model = BlockTransformerForCausalLM(BlockTransformerConfig(**spec.block_config()))
        else:
            from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

            model = GPTNeoXForCausalLM(GPTNeoXConfig(**spec.hf_config()))
    assert sum(p.numel() for p in model.parameters()) == spec.params()


def test_gpu_reference_script_on_cpu(tmp_path):
    import gpu_reference

    torch.set_num_threads(1)
    result = gpu_reference.main(["--scale", "tiny", "--device", "cpu", "--out", str(tmp_path)])
    assert {r["workload"] for r in result["ratios"]} == {"prefill-heavy", "decode-heavy"}
    assert all(r["ratio"] > 0 for r in result["ratios"])
    assert (tmp_path / "reference_tiny.json").exists()
    assert all((tmp_path / p).exists() for p in result["plots"])


def test_throughput_script_tiny(tmp_path):
    """Two block engines (default and fast prefill) and one vanilla (GPT-J)
    engine, 1 request per workload."""
    env = {**os.environ, "VLLM_LOGGING_LEVEL": "WARNING"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "throughput.py"), "--scale", "tiny",
         "--no-neox", "--out", str(tmp_path), "--cache", str(tmp_path / "models")],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "throughput_tiny.json").read_text())
    cols = {(m["model"], m["column"]) for m in result["medians"]}
    assert cols == {("tiny_block", "block"), ("tiny_block", "block-fast"), ("tiny_block", "hf"),
                    ("tiny_vanilla", "vanilla-gptj"), ("tiny_vanilla", "hf")}
    assert all(m["median_tokens_per_s"] > 0 for m in result["medians"])
    for col in ("block", "block-fast"):
        vllm_ratios = [r for r in result["ratios"] if r["block_column"] == col]
        assert len(vllm_ratios) == 2  # both workloads
    capacity = {e["model"]: e["kv_capacity_tokens"] for e in result["memory"]["tiny_block"]["vllm"]
                + result["memory"]["tiny_vanilla"]["vllm"]}
    # same KV budget: the block model holds more tokens (one entry per block)
    assert capacity["tiny_block"] > capacity["tiny_vanilla"] > 0
    assert all(0 < r["fraction_of_limit"] for r in result["roofline"])
    assert all((tmp_path / p).exists() for p in result["plots"])
