"""The static decode step (every shape a function of the batch size; what a
CUDA graph captures) gives the exact step's results through the real engine:
ground truth on the fixture, the exact step on random configurations at batch
sizes 1, 7, 64 and 256 (one-token prompts, every request closing a block in
the same step), and vLLM's scheduler features (chunked prefill, preemption,
prefix caching, fast prefill on and off). It has no host sync, compiles with
torch.compile(fullgraph=True), and the profile run executes the worst-case
plan. Tolerances: greedy tokens exact, logprobs within 1e-3."""
from __future__ import annotations

import contextlib

import pytest
import torch

import test_vllm_scheduling as scheduling
from engine import (LOGPROB_TOL, check_against_cases, check_against_reference, engine,
                    greedy_params, save_model, token_prompts)
from helpers import greedy_cases, random_model
from test_vllm_random_configs import CONFIGS, vllm_config
from test_vllm_scheduling import FAST_PREFILL, random_prompts
from test_vllm_scheduling import \
    test_chunked_prefill_at_odd_chunk_boundaries_matches_ground_truth as chunked_prefill
from test_vllm_scheduling import \
    test_preemption_under_kv_pressure_keeps_outputs_exact as preemption
from test_vllm_scheduling import \
    test_prefix_caching_hits_and_keeps_outputs_exact as prefix_caching
from test_vllm_sync_free import watch_forward, watch_report

pytestmark = pytest.mark.engine  # starts vLLM engines (make test-fast skips it)

# on CUDA (scripts/gpu_parity.sh) the static step runs as FULL_DECODE_ONLY CUDA
# graphs; on CPU eagerly
ON_CUDA = torch.cuda.is_available()
STATIC = {"additional_config": {"block_transformer_decode": "static"},
          "enforce_eager": not ON_CUDA}
CASES = greedy_cases()
NEW = len(CASES[0]["greedy"])
BATCHES = (1, 7, 64, 256)


def count_decode_steps(worker) -> None:
    model = worker.model_runner.model
    step, model.static_steps = model.decode_step, []

    def counted(ids, plan, *args):
        model.static_steps.append(plan.closes.shape[0])
        return step(ids, plan, *args)

    model.decode_step = counted


def decode_steps(worker) -> list[int]:
    return worker.model_runner.model.static_steps


@pytest.fixture
def rpc(monkeypatch):
    monkeypatch.setenv("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")


def test_fixture_cases_match_ground_truth_on_the_static_step(tiny_b4_dir, rpc):
    with engine(tiny_b4_dir, **STATIC) as llm:
        llm.collective_rpc(count_decode_steps)
        together = llm.generate(token_prompts([c["prompt"] for c in CASES]),
                                greedy_params(NEW))
        alone = [llm.generate(token_prompts([c["prompt"]]), greedy_params(NEW))[0]
                 for c in CASES[:3]]
        ((steps),) = llm.collective_rpc(decode_steps)
    check_against_cases(together, CASES)
    check_against_cases(alone, CASES[:3])
    assert len(steps) >= 2 * NEW and len(CASES) in steps and 1 in steps, steps


def same_outputs(static, exact, tol: float = LOGPROB_TOL) -> None:
    for a, b in zip(static, exact, strict=True):
        assert list(a.outputs[0].token_ids) == list(b.outputs[0].token_ids)
        for lps_a, lps_b in zip(a.outputs[0].logprobs, b.outputs[0].logprobs):
            for tok, lp in lps_b.items():
                assert abs(lps_a[tok].logprob - lp.logprob) <= tol


def batches(L: int, vocab: int) -> list[list[list[int]]]:
    """Prompts of every length modulo L (one-token ones included) at each batch
    size, and a batch whose requests all close a block at the same steps."""
    lengths = [1 + i % (2 * L + 1) for i in range(max(BATCHES))]
    lengths[::9] = [41] * len(lengths[::9])
    prompts = random_prompts(L, lengths, vocab=vocab)
    same_phase = random_prompts(L + 1, [3 * L] * 16, vocab=vocab)
    return [prompts[:b] for b in BATCHES] + [same_phase]


@pytest.mark.parametrize("L,R,block_layers,token_layers,head_dim", CONFIGS,
                         ids=[f"L{c[0]}-R{c[1]}" for c in CONFIGS])
def test_static_step_equals_the_exact_step_and_the_reference(
        tmp_path, rpc, L, R, block_layers, token_layers, head_dim):
    config = vllm_config(L * 10 + R, L, R, block_layers, token_layers, head_dim)
    model = random_model(config, seed=L)
    path = save_model(model, tmp_path / "model")
    work = batches(L, config.vocab_size)
    params = greedy_params(2 * L + 3, logprobs=3, prompt_logprobs=None)
    results = {}
    for mode, kwargs in (("static", STATIC), ("exact", {})):
        with engine(path, max_num_seqs=max(BATCHES), max_num_batched_tokens=4096,
                    kv_cache_memory_bytes=256 << 20,
                    **kwargs) as llm:
            llm.collective_rpc(count_decode_steps)
            results[mode] = [llm.generate(token_prompts(p), params) for p in work]
            ((steps),) = llm.collective_rpc(decode_steps)
        if mode == "static":  # every batch size ran the static step
            assert set(BATCHES) <= set(steps), sorted(set(steps))
        else:
            assert steps == []
    for static, exact in zip(results["static"], results["exact"]):
        same_outputs(static, exact)
    check_against_reference(model, work[1] + work[-1][:2], results["static"][1] +
                            results["static"][-1][:2])


@pytest.fixture
def static_engines(monkeypatch, rpc):
    """Every engine the reused scheduler tests start runs with the static step
    and counts its static decode steps; yields the counts, one list per engine."""
    counts = []

    @contextlib.contextmanager
    def counting_engine(model, **kwargs):
        with engine(model, **{**STATIC, **kwargs}) as llm:
            llm.collective_rpc(count_decode_steps)
            yield llm
            ((steps),) = llm.collective_rpc(decode_steps)
            counts.append(steps)

    monkeypatch.setattr(scheduling, "engine", counting_engine)
    return counts


def ran_the_static_step(counts: list[list[int]]) -> None:
    assert counts, "the scheduler test started no engine"
    assert all(len(steps) > 0 for steps in counts), \
        f"an engine never ran the static decode step: {[len(s) for s in counts]}"


@FAST_PREFILL
def test_chunked_prefill_with_the_static_step(tiny_b4_dir, static_engines, fast):
    chunked_prefill(tiny_b4_dir, fast)
    ran_the_static_step(static_engines)


@FAST_PREFILL
def test_preemption_with_the_static_step(tiny_b4_dir, tiny_b4_model, static_engines, fast):
    preemption(tiny_b4_dir, tiny_b4_model, fast)
    ran_the_static_step(static_engines)


@FAST_PREFILL
def test_prefix_caching_align_mode_with_the_static_step(tiny_b4_dir, tiny_b4_model,
                                                        static_engines, fast):
    prefix_caching(tiny_b4_dir, tiny_b4_model, fast)
    ran_the_static_step(static_engines)


def test_static_step_has_no_host_sync(tiny_b4_dir, rpc):
    prompts = random_prompts(31, [1, 1, 2, 3, 5, 37, 130])
    with engine(tiny_b4_dir, max_num_batched_tokens=16, max_num_seqs=8,
                enable_prefix_caching=False, **STATIC) as llm:
        llm.collective_rpc(count_decode_steps)
        llm.collective_rpc(watch_forward)
        outputs = llm.generate(token_prompts([c["prompt"] for c in CASES] + prompts),
                               greedy_params(NEW))
        ((seen, calls),) = llm.collective_rpc(watch_report)
        ((steps),) = llm.collective_rpc(decode_steps)
    check_against_cases(outputs[:len(CASES)], CASES)
    assert len(steps) > 10, steps
    assert seen == [], f"host syncs inside forward: {seen}"


def compiled_graphs(worker) -> int:
    import torch._dynamo.utils

    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


@pytest.mark.skipif(ON_CUDA, reason="CUDA captures the static step as a graph instead")
def test_static_step_compiles_with_fullgraph_and_matches_ground_truth(tiny_b4_dir, rpc):
    """Without --enforce-eager the static step runs under torch.compile(
    fullgraph=True): a graph break or a data-dependent guard would raise or
    recompile. Once batch 1 and one larger batch have run, requests of other
    batch sizes compile nothing more."""
    prompts = token_prompts([c["prompt"] for c in CASES])
    with engine(tiny_b4_dir, max_num_seqs=16, max_num_batched_tokens=64,
                **{**STATIC, "enforce_eager": False}) as llm:
        llm.collective_rpc(count_decode_steps)
        outputs = llm.generate(prompts, greedy_params(NEW))  # batch 9
        outputs += llm.generate(prompts[:1], greedy_params(NEW))  # batch 1
        (before,) = llm.collective_rpc(compiled_graphs)
        outputs += llm.generate(prompts[2:7], greedy_params(NEW))  # batch 5
        (after,) = llm.collective_rpc(compiled_graphs)
        ((steps),) = llm.collective_rpc(decode_steps)
    check_against_cases(outputs, CASES + CASES[:1] + CASES[2:7])
    assert before >= 2 and after == before, (before, after)
    assert {1, 5, 9} <= set(steps), steps


def run_profile(worker) -> tuple[int, int]:
    """vLLM's memory-profiling run, as the GPU worker starts it."""
    model = worker.model_runner.model
    model.profiled = None
    worker.model_runner.profile_run()
    return model.profiled


@FAST_PREFILL
def test_profile_run_executes_the_worst_case_plan(tiny_b4_dir, tiny_b4_model, rpc, fast):
    from vllm_block.step_plan import worst_case_plan

    c = tiny_b4_model.config
    tokens, seqs = 512, 32
    with engine(tiny_b4_dir, max_num_batched_tokens=tokens, max_num_seqs=seqs,
                kv_sharing_fast_prefill=fast) as llm:
        (profiled,) = llm.collective_rpc(run_profile)
        (out,) = llm.generate(token_prompts([CASES[0]["prompt"]]),
                              greedy_params(NEW, prompt_logprobs=None))
    plan = worst_case_plan(tokens, seqs, c.block_length, c.prefix_length, fast)
    assert tuple(profiled) == (len(plan.row_pos), plan.num_blocks)
    # 32 prompts of 16 tokens from position 0: positions 0, 4, 8, 12 close blocks
    assert plan.num_blocks == 4 * seqs
    assert list(out.outputs[0].token_ids) == CASES[0]["greedy"]  # the engine is unharmed
