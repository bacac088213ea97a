"""vLLM's scheduler features on the Block Transformer, each with exact results:
chunked prefill at arbitrary chunk boundaries, preemption (recompute) under
KV pressure, and prefix caching with reported cache hits. Each runs with every
prompt row computed and with fast prefill (`kv_sharing_fast_prefill`), which
skips prompt rows and so gives no prompt logprobs."""
from __future__ import annotations

import random

import pytest

from engine import (check_against_cases, check_against_reference, engine, greedy_params,
                    metric, token_prompts)
from helpers import greedy_cases

pytestmark = pytest.mark.engine  # starts vLLM engines (make test-fast skips it)

CASES = greedy_cases()
NEW = len(CASES[0]["greedy"])
FAST_PREFILL = pytest.mark.parametrize("fast", [False, True], ids=["all-rows", "fast-prefill"])


def cases_for(fast: bool) -> list[dict]:
    """The ground-truth cases, without prompt logprobs under fast prefill."""
    return [{**c, "prompt_logprobs": None} for c in CASES] if fast else CASES


def case_params(fast: bool):
    return greedy_params(NEW, prompt_logprobs=None if fast else 1)


def random_prompts(seed: int, lengths: list[int], vocab: int = 512) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(vocab) for _ in range(n)] for n in lengths]


@FAST_PREFILL
def test_chunked_prefill_at_odd_chunk_boundaries_matches_ground_truth(tiny_b4_dir, fast):
    # 7-token budget shared by 3 requests: chunks end at every in-block index
    with engine(tiny_b4_dir, max_num_batched_tokens=7, max_num_seqs=3,
                long_prefill_token_threshold=5, enable_prefix_caching=False,
                kv_sharing_fast_prefill=fast) as llm:
        outputs = llm.generate(token_prompts(c["prompt"] for c in CASES), case_params(fast))
        check_against_cases(outputs, cases_for(fast))
        # an out-of-vocabulary id without a tokenizer (no vLLM validation)
        # must not take the engine down
        llm.generate(token_prompts([[1, 10**6, 2]]),
                     greedy_params(2, logprobs=None, prompt_logprobs=None))
        (out,) = llm.generate(token_prompts([CASES[3]["prompt"]]), case_params(fast))
        check_against_cases([out], cases_for(fast)[3:4])


@FAST_PREFILL
def test_preemption_under_kv_pressure_keeps_outputs_exact(tiny_b4_dir, tiny_b4_model, fast):
    # pages of 64 tokens (16 block entries); 12 pages hold two requests of
    # 150 + 200 tokens at most, so running requests must be preempted
    long_prompts = random_prompts(1, [150, 170, 190, 130, 160, 120])
    with engine(tiny_b4_dir, block_size=64, num_gpu_blocks_override=12, max_num_seqs=8,
                enable_prefix_caching=False, kv_sharing_fast_prefill=fast) as llm:
        params = [case_params(fast)] * len(CASES) + [greedy_params(200, prompt_logprobs=None)] \
            * len(long_prompts)
        outputs = llm.generate(token_prompts([c["prompt"] for c in CASES] + long_prompts),
                               params)
        assert metric(llm, "vllm:num_preemptions") > 0, "no preemption happened"
    check_against_cases(outputs[:len(CASES)], cases_for(fast))
    check_against_reference(tiny_b4_model, long_prompts, outputs[len(CASES):])


@FAST_PREFILL
def test_prefix_caching_hits_and_keeps_outputs_exact(tiny_b4_dir, tiny_b4_model, fast):
    shared = random_prompts(2, [300])[0]
    suffixes = random_prompts(3, [1, 2, 3, 4, 5, 13])
    prompts = [shared + s for s in suffixes]
    with engine(tiny_b4_dir, enable_prefix_caching=True, block_size=128,
                max_num_batched_tokens=64, kv_sharing_fast_prefill=fast) as llm:
        first = llm.generate(token_prompts(prompts[:1]), greedy_params(20, prompt_logprobs=None))
        rest = llm.generate(token_prompts(prompts), greedy_params(20, prompt_logprobs=None))
        hits = metric(llm, "vllm:prefix_cache_hits")
    assert first[0].num_cached_tokens == 0
    # pages of 128 tokens: the shared 300 tokens give two cached pages each
    assert all(o.num_cached_tokens >= 256 for o in rest), [o.num_cached_tokens for o in rest]
    assert hits >= 256 * len(prompts)
    check_against_reference(tiny_b4_model, prompts, rest)
    assert list(first[0].outputs[0].token_ids) == list(rest[0].outputs[0].token_ids)


@pytest.mark.parametrize("chunk", [16])
def test_long_prompts_near_max_model_len_with_chunked_prefill(tiny_b4_dir, tiny_b4_model, chunk):
    prompts = random_prompts(4, [497, 250, 33])
    with engine(tiny_b4_dir, max_num_batched_tokens=chunk, max_num_seqs=4,
                enable_prefix_caching=False) as llm:
        outputs = llm.generate(token_prompts(prompts), greedy_params(15, prompt_logprobs=1))
    check_against_reference(tiny_b4_model, prompts, outputs)
