"""The benchmark code path on tiny models, so it cannot rot: the cost model's
parameter counts against real modules, `benchmarks/throughput.py --scale tiny`
(every table: block engines, GPT-J at vLLM's defaults and eager, the
block model's reference, batch maximised), `benchmarks/batch_sweep.py` and `benchmarks/gpu_reference.py --scale tiny` on CPU."""
from __future__ import annotations

import json
import math
import os
import statistics
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


def check_summary(result: dict) -> None:
    """What every benchmark JSON states follows from its own runs and the cost
    model: each run's rate is its tokens over its time, each median the median
    of its runs, each ratio the quotient of two medians, each roofline fraction
    measured / limit below 1, and the bound the side of the machine's balance
    point (peak FLOP/s / bandwidth) the arithmetic intensity falls on."""
    runs, peaks = result["runs"], result["peaks"]
    for r in runs:
        assert r["generated"] == r["requests"] * r["new"], r
        assert r["tokens_per_s"] == pytest.approx(r["generated"] / r["seconds"]), r
    median = {}
    for m in result["medians"]:
        key = (m["table"], m["dtype"], m["workload"], m["model"], m["column"])
        rates = [r["tokens_per_s"] for r in runs if (r.get("table", m["table"]), r["dtype"],
                 r["workload"], r["model"], r["column"]) == key]
        assert m["median_tokens_per_s"] == pytest.approx(statistics.median(rates)), key
        assert m["params"] == MODELS[m["model"]].params()
        assert 0 < m["max_running"] <= m["requests"]
        median[key] = m["median_tokens_per_s"]
        if "kv_capacity_tokens" in m:
            # vLLM's null page aside, a vanilla request takes its KV pages, a
            # block request its pages of block entries and one state page
            pages = m["kv_capacity_tokens"] // m["block_size"]
            per_request = math.ceil((m["prompt"] + m["new"]) / m["block_size"]) \
                + (MODELS[m["model"]].kind == "block")
            assert (m["kv_pages"], m["fits_requests"]) == (pages, (pages - 1) // per_request)
        roof = m["roofline"]
        assert m["fraction_of_limit"] == pytest.approx(m["median_tokens_per_s"]
                                                       / roof["limit_tokens_per_s"])
        assert 0 < m["fraction_of_limit"] < 1, (key, m["fraction_of_limit"])
        balance = peaks[f"matmul_flops_{m['dtype']}"] / peaks["copy_bandwidth_bytes_per_s"]
        intensity = roof["arithmetic_intensity_flop_per_byte"]
        assert roof["decode_bound"] == ("compute" if intensity >= balance else "memory")
    assert len(result["roofline"]) == len(result["medians"])
    for r in result["ratios"]:
        block = median[(r["table"], r["dtype"], r["workload"], r["block"],
                        r["block_column"])]
        vanilla = median[(r["table"], r["dtype"], r["workload"],
                          r["vanilla"], r["vanilla_column"])]
        assert (r["block_tokens_per_s"], r["vanilla_tokens_per_s"]) == (
            round(block, 2), round(vanilla, 2))
        assert r["ratio"] == pytest.approx(block / vanilla, abs=1e-3)
    for r in result["plugin_vs_reference"]:
        assert r["ratio"] == pytest.approx(r["plugin_tokens_per_s"] / r["reference_tokens_per_s"],
                                           rel=1e-2)


def test_gpu_reference_script_on_cpu(tmp_path):
    import gpu_reference

    torch.set_num_threads(1)
    result = gpu_reference.main(["--scale", "tiny", "--device", "cpu", "--out", str(tmp_path)])
    assert {r["workload"] for r in result["ratios"]} == {"prefill-heavy", "decode-heavy"}
    assert all((r["block"], r["vanilla"]) == ("tiny_block", "tiny_vanilla")
               for r in result["ratios"])
    # the reference has no engine: every request runs at once
    assert all(r["max_running"] == r["requests"] for r in result["runs"])
    check_summary(result)
    assert json.loads((tmp_path / "reference_tiny.json").read_text())["ratios"] \
        == result["ratios"]
    assert all((tmp_path / p).exists() for p in result["plots"])


@pytest.mark.engine
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
    maxed = "paper regime, batch maximised"
    assert cols == {(paper, "tiny_block", "block-fast"), (paper, "tiny_block", "hf"),
                    (paper, "tiny_vanilla", "vanilla-gptj"),
                    (short, "tiny_block", "block"), (short, "tiny_vanilla", "vanilla-gptj-eager"),
                    (maxed, "tiny_block", "block-fast"), (maxed, "tiny_vanilla", "vanilla-gptj")}
    check_summary(result)
    assert {(r["table"], r["workload"]) for r in result["ratios"]} == {
        (t, w) for t in (paper, short, maxed) for w in ("prefill-heavy", "decode-heavy")}
    # batch maximised: each model is handed what its KV holds for the whole
    # sequence (up to max_num_seqs 16; the block model more than vanilla), and
    # runs them all at once
    for m in result["medians"]:
        if m["table"] == maxed:
            assert m["requests"] == min(m["fits_requests"], 16) == m["max_running"], m
    held = {m["model"]: m["requests"] for m in result["medians"] if m["table"] == maxed}
    assert held["tiny_block"] > held["tiny_vanilla"] > 0
    engines = {(e["table"], e["column"]): e for e in result["memory"]["tiny_block"]["vllm"]
               + result["memory"]["tiny_vanilla"]["vllm"]}
    # vLLM's defaults compile GPT-J; the block model gets what the plugin's
    # config hook sets (nothing forced by the benchmark), recorded per engine
    assert engines[(paper, "vanilla-gptj")]["setting"] != "eager"
    assert engines[(short, "vanilla-gptj-eager")]["setting"] == "eager"
    assert engines[(paper, "block-fast")]["setting"]
    # vanilla's KV capacity is the budget over its K/V bytes per token, in whole
    # pages; the block model stores one entry per block of L tokens, so the
    # same budget holds at most L tokens per entry's bytes (its token-decoder
    # states take their share) and more tokens than vanilla's
    block_spec, vanilla_spec = MODELS["tiny_block"], MODELS["tiny_vanilla"]
    for (table, column), e in engines.items():
        if e["model"] == "tiny_vanilla":
            page_bytes = vanilla_spec.kv_bytes_per_token(4) * e["block_size"]
            assert e["kv_capacity_tokens"] == e["kv_budget_bytes"] // page_bytes \
                * e["block_size"], e
        else:
            entries = e["kv_budget_bytes"] // block_spec.block_kv_bytes_per_entry(4)
            assert 0 < e["kv_capacity_tokens"] <= entries * block_spec.block_length, e
    assert engines[(paper, "block-fast")]["kv_capacity_tokens"] \
        > engines[(paper, "vanilla-gptj")]["kv_capacity_tokens"] > 0
    # ... and in the paper regime runs more requests at once than vanilla can
    decode = {m["column"]: m for m in result["medians"]
              if (m["table"], m["workload"]) == (paper, "decode-heavy")}
    assert decode["vanilla-gptj"]["max_running"] <= decode["vanilla-gptj"]["fits_requests"] \
        < decode["vanilla-gptj"]["requests"]
    assert decode["block-fast"]["max_running"] == decode["block-fast"]["requests"]
    # the reference at the same batch as the plugin (decode: its first 16 of 32
    # tokens, the time cap), reported as plugin / reference
    ref = {r["workload"]: r for r in result["plugin_vs_reference"] if r["table"] == paper}
    assert all(r["reference_batch"] == r["plugin_max_running"] and r["ratio"] > 0
               for r in ref.values()) and len(ref) == 2
    assert (ref["decode-heavy"]["reference_new"], ref["decode-heavy"]["plugin_new"]) == (16, 32)
    assert all((tmp_path / p).exists() for p in result["plots"])


@pytest.mark.engine
def test_batch_sweep_tiny(tmp_path):
    """Tokens/s against concurrent requests under one KV budget that holds 4
    of vanilla's requests and all 8 of the block model's: vanilla's
    concurrency stops at its KV, the block model's does not; each point is
    set against its roofline limit."""
    env = {**os.environ, "VLLM_LOGGING_LEVEL": "WARNING"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "batch_sweep.py"),
         "--models", "tiny_vanilla,tiny_block", "--batches", "2,8", "--context", "32",
         "--steps", "2", "--kv-gib", str(4 * 128 * 1024 / 2**30), "--dtype", "float32",
         "--out", str(tmp_path), "--cache", str(tmp_path / "models")],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "batch_sweep_float32.json").read_text())
    points = {m["model"]: {p["batch"]: p for p in m["points"]} for m in result["models"]}
    assert points["tiny_vanilla"][2]["running"] == points["tiny_block"][2]["running"] == 2
    assert points["tiny_vanilla"][8]["max_running"] <= 4
    assert points["tiny_block"][8]["running"] == 8
    for pts in points.values():
        for p in pts.values():
            assert p["tokens_per_s"] > 0 and p["fraction_of_limit"] == pytest.approx(
                p["tokens_per_s"] / p["limit_tokens_per_s"], abs=1e-3)
    assert result["block_over_vanilla"]["8"] == pytest.approx(
        points["tiny_block"][8]["tokens_per_s"] / points["tiny_vanilla"][8]["tokens_per_s"],
        abs=1e-3)
    assert (tmp_path / result["plot"]).exists()
