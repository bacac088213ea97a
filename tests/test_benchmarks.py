"""The benchmark code path on tiny models, so it cannot rot: the cost model's
parameter counts against real modules, `benchmarks/throughput.py --scale tiny`
(both tables: two block engines, GPT-J at vLLM's defaults and eager, the
block model's reference) and `benchmarks/gpu_reference.py --scale tiny` on CPU."""
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
    """Both tables, four engines, every column but NeoX: the paper regime (GPT-J
    at vLLM's defaults, the block model with fast prefill, its reference at the
    same batch; more requests than vanilla's KV budget holds) and the short one
    (GPT-J with enforce_eager, the block model's default engine)."""
    env = {**os.environ, "VLLM_LOGGING_LEVEL": "WARNING"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "throughput.py"), "--scale", "tiny",
         "--no-neox", "--out", str(tmp_path), "--cache", str(tmp_path / "models")],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "throughput_tiny.json").read_text())
    cols = {(m["table"], m["model"], m["column"]) for m in result["medians"]}
    paper, short = "paper regime", "short context"
    assert cols == {(paper, "tiny_block", "block-fast"), (paper, "tiny_block", "hf"),
                    (paper, "tiny_vanilla", "vanilla-gptj"),
                    (short, "tiny_block", "block"), (short, "tiny_vanilla", "vanilla-gptj-eager")}
    assert all(m["median_tokens_per_s"] > 0 for m in result["medians"])
    assert {(r["table"], r["workload"]) for r in result["ratios"]} == {
        (t, w) for t in (paper, short) for w in ("prefill-heavy", "decode-heavy")}
    engines = {(e["table"], e["column"]): e for e in result["memory"]["tiny_block"]["vllm"]
               + result["memory"]["tiny_vanilla"]["vllm"]}
    # vLLM's defaults compile GPT-J; the block model gets what the plugin's
    # config hook sets (nothing forced by the benchmark), recorded per engine
    assert engines[(paper, "vanilla-gptj")]["setting"] != "eager"
    assert engines[(short, "vanilla-gptj-eager")]["setting"] == "eager"
    assert engines[(paper, "block-fast")]["setting"]
    # same KV budget: the block model holds more tokens (one entry per block) ...
    assert engines[(paper, "block-fast")]["kv_capacity_tokens"] \
        > engines[(paper, "vanilla-gptj")]["kv_capacity_tokens"] > 0
    # ... and in the paper regime runs more requests at once than vanilla can
    decode = {m["column"]: m for m in result["medians"]
              if (m["table"], m["workload"]) == (paper, "decode-heavy")}
    assert decode["vanilla-gptj"]["max_running"] < decode["vanilla-gptj"]["requests"]
    assert decode["block-fast"]["max_running"] == decode["block-fast"]["requests"]
    # the reference at the same batch as the plugin (decode: its first 16 of 32
    # tokens, the time cap), reported as plugin / reference
    ref = {r["workload"]: r for r in result["plugin_vs_reference"] if r["table"] == paper}
    assert all(r["reference_batch"] == r["plugin_max_running"] and r["ratio"] > 0
               for r in ref.values()) and len(ref) == 2
    assert (ref["decode-heavy"]["reference_new"], ref["decode-heavy"]["plugin_new"]) == (16, 32)
    assert all(0 < r["fraction_of_limit"] for r in result["roofline"])
    assert all((tmp_path / p).exists() for p in result["plots"])
