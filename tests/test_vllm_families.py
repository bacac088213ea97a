"""The released checkpoint families through vLLM, against the original
code's ground truth (tests/fixtures/, made by scripts/make_original_fixtures.py).

- `b1` (L = 1, R = 1, the `block_vanilla_ablation_b1_85` layout): its
  fixture, and an L = 1, R = 1 model with head size 32 against the reference
  model (with and without fast prefill).
- `nopad_b4` (the `block_main_b4_{300,800,1.2b}` layout): three engines.
  One with default scheduling plus prefix caching (pages of 64 tokens),
  chunked prefill (64-token budget) and the static decode step: every
  fixture case in one batch, the original forward()'s logits as prompt
  logprobs, prefix cache hits, short and long layouts of the same tokens in
  one batch. One with fast prefill, chunks ending at every in-block index
  and preemption. One with prefix caching under memory pressure: a short
  prompt recomputed after preemption never reuses the cached pages of a long
  prompt made of the same tokens.
- `uptrain_b4` (`projection_layer`) and `megabyte_b4` (`summation`, token
  decoder narrower than the block decoder): one engine as vLLM ships (every
  fixture case with prompt logprobs), one with fast prefill, odd chunks,
  preemption and prefix caching.

Greedy tokens exact, logprobs within 1e-3 (fp32).
"""
from __future__ import annotations

import math

import pytest
import torch

from engine import (check_against_cases, check_against_reference, engine,
                    greedy_params, metric, token_prompts)
from families import cases, converted, forward_fixture
from test_vllm_random_configs import check_random_config
from test_vllm_scheduling import random_prompts

pytestmark = pytest.mark.engine  # starts vLLM engines (make test-fast skips it)

VOCAB = 256  # every family fixture's
NOPAD = cases("nopad_b4")
NEW = len(NOPAD[0]["greedy"])


def test_b1_layout_matches_reference(tmp_path):
    check_random_config(tmp_path, 1, 1, 2, 2, 32)


def test_b1_layout_with_fast_prefill_matches_reference(tmp_path):
    check_random_config(tmp_path, 1, 1, 2, 2, 32, kv_sharing_fast_prefill=True)


def test_b1_fixture_matches_ground_truth(tmp_path_factory):
    """The fixture's block decoder has head size 16, which vLLM's CPU kernel
    does not take: it runs zero-padded to 32 (block_attention.py)."""
    b1 = cases("b1")
    with engine(converted(tmp_path_factory, "b1")) as llm:
        outputs = llm.generate(token_prompts(c["prompt"] for c in b1),
                               greedy_params(len(b1[0]["greedy"])))
    check_against_cases(outputs, b1, vocab_size=VOCAB)


# -- no-pad alignment ----------------------------------------------------------
@pytest.fixture(scope="module")
def nopad_dir(tmp_path_factory):
    return converted(tmp_path_factory, "nopad_b4")


@pytest.fixture(scope="module")
def nopad_model(nopad_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(nopad_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def nopad_llm(nopad_dir):
    with engine(nopad_dir, enable_prefix_caching=True, block_size=64,
                max_num_batched_tokens=64,
                additional_config={"block_transformer_decode": "static"}) as llm:
        yield llm


def test_nopad_cases_in_one_batch_match_ground_truth(nopad_llm):
    """Prompts of every length 1..3L (short ones left-padded to one block)
    and longer, chunked by the 64-token budget; prompt logprobs of the first
    block's tokens (no prediction) are uniform."""
    outputs = nopad_llm.generate(token_prompts(c["prompt"] for c in NOPAD), greedy_params(NEW))
    check_against_cases(outputs, NOPAD, vocab_size=VOCAB)


def test_nopad_prompt_logprobs_are_the_original_forward_logits(nopad_llm):
    """Blocks start at the prompt's first token: prompt token bL+i (b >= 1)
    is scored by the original forward()'s logits[b-1, i]."""
    input_ids, logits = forward_fixture("nopad_b4")
    L = 4
    outputs = nopad_llm.generate(token_prompts(input_ids.tolist()),
                                 greedy_params(1, logprobs=None, prompt_logprobs=1))
    expected = logits.log_softmax(-1)
    worst = 0.0
    for ids, want, out in zip(input_ids.tolist(), expected, outputs, strict=True):
        plp = out.prompt_logprobs
        assert len(plp) == len(ids) and plp[0] is None
        for t in range(1, len(ids)):
            target = want[t // L - 1, t % L, ids[t]].item() if t >= L else -math.log(VOCAB)
            worst = max(worst, abs(plp[t][ids[t]].logprob - target))
    assert worst <= 1e-3, worst


def test_nopad_prefix_caching_hits_and_keeps_outputs_exact(nopad_llm, nopad_model):
    shared = random_prompts(2, [150], vocab=VOCAB)[0]
    prompts = [shared + s for s in random_prompts(3, [1, 2, 3, 5], vocab=VOCAB)]
    params = greedy_params(20, prompt_logprobs=None)
    nopad_llm.generate(token_prompts(prompts[:1]), params)
    rest = nopad_llm.generate(token_prompts(prompts), params)
    # pages of 64 tokens: the shared 150 tokens give two cached pages each
    assert all(o.num_cached_tokens >= 128 for o in rest), [o.num_cached_tokens for o in rest]
    check_against_reference(nopad_model, prompts, rest)


def test_nopad_short_and_long_layouts_of_the_same_tokens_in_one_batch(nopad_llm, nopad_model):
    """A 1-token prompt keeps its 3 virtual pads for its whole life; a long
    prompt made of the same tokens has none. Both in one batch, each exact in
    its own layout (that their cached pages are kept apart:
    tests/test_alignment.py)."""
    short = [37]
    (first,) = nopad_llm.generate(token_prompts([short]),
                                  greedy_params(140, logprobs=None, prompt_logprobs=None))
    long_prompt = (short + list(first.outputs[0].token_ids))[:131]
    outputs = nopad_llm.generate(token_prompts([long_prompt, short]),
                                 greedy_params(12, prompt_logprobs=None))
    check_against_reference(nopad_model, [long_prompt, short], outputs)
    assert list(outputs[1].outputs[0].token_ids) == list(first.outputs[0].token_ids)[:12]


def test_nopad_short_prompt_recomputed_after_preemption_keeps_its_own_layout(nopad_dir,
                                                                              nopad_model):
    """A 1-token prompt keeps 3 virtual pads for its whole life. Here it grows
    past a page, is preempted and recomputed; rescheduled, vLLM looks its full
    pages up in the prefix cache, which already holds a long prompt of the
    same tokens (no pads: another layout). The pad count in the short
    request's cache salt (alignment.salt_request) keeps those pages apart:
    with the salt removed this test fails (the recompute reuses the long
    prompt's first page; checked by hand when the test was written)."""
    short, new = [37], 200
    long_prompt = nopad_model.generate(torch.tensor([short]), max_new_tokens=130)[0].tolist()
    other = random_prompts(4, [150], vocab=VOCAB)[0]
    prompts = [long_prompt, other, short]  # the last admitted is the first preempted
    # 15 pages of 64 tokens (one state page per request): the short request
    # is preempted at about 108 tokens, then at about 123
    with engine(nopad_dir, enable_prefix_caching=True, block_size=64,
                num_gpu_blocks_override=15) as llm:
        llm.generate(token_prompts([long_prompt]), greedy_params(1, None, None))  # caches 2 pages
        outputs = llm.generate(token_prompts(prompts), greedy_params(new, prompt_logprobs=None))
        assert metric(llm, "vllm:num_preemptions") > 0, "no preemption happened"
    assert outputs[0].num_cached_tokens >= 128, outputs[0].num_cached_tokens
    check_against_reference(nopad_model, prompts, outputs)


def test_nopad_fast_prefill_odd_chunks_and_preemption_match_ground_truth(nopad_dir,
                                                                          nopad_model):
    # 7-token budget over 3 requests: chunks end at every in-block index;
    # 12 pages of 64 tokens hold fewer than three of the long requests
    long_prompts = random_prompts(1, [150, 170, 190, 130], vocab=VOCAB)
    with engine(nopad_dir, max_num_batched_tokens=7, max_num_seqs=3,
                long_prefill_token_threshold=5, block_size=64, num_gpu_blocks_override=12,
                enable_prefix_caching=False, kv_sharing_fast_prefill=True) as llm:
        params = [greedy_params(NEW, prompt_logprobs=None)] * len(NOPAD) \
            + [greedy_params(200, prompt_logprobs=None)] * len(long_prompts)
        outputs = llm.generate(token_prompts([c["prompt"] for c in NOPAD] + long_prompts),
                               params)
        assert metric(llm, "vllm:num_preemptions") > 0, "no preemption happened"
    check_against_cases(outputs[:len(NOPAD)], [{**c, "prompt_logprobs": None} for c in NOPAD])
    check_against_reference(nopad_model, long_prompts, outputs[len(NOPAD):])


# -- the other families: one engine as vLLM ships, one under pressure ------------
SERVED = ["uptrain_b4", "megabyte_b4"]


@pytest.fixture(scope="module", params=SERVED)
def family(request, tmp_path_factory):
    """(name, converted dir, reference model) of a family fixture."""
    from transformers import AutoModelForCausalLM

    path = converted(tmp_path_factory, request.param)
    return request.param, path, AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32).eval()


def test_family_cases_match_ground_truth(family):
    """Prompts of every length 1..3L and longer, in one batch, with prompt logprobs."""
    name, path, _ = family
    expected = cases(name)
    with engine(path) as llm:
        outputs = llm.generate(token_prompts(c["prompt"] for c in expected),
                               greedy_params(len(expected[0]["greedy"])))
    check_against_cases(outputs, expected, vocab_size=VOCAB)


def test_family_fast_prefill_odd_chunks_preemption_and_prefix_caching(family):
    """Fast prefill; a 7-token budget over 3 requests (chunks end at every
    in-block index); 12 pages of 64 tokens (preemption); prefix caching."""
    name, path, model = family
    expected = [{**c, "prompt_logprobs": None} for c in cases(name)]
    long_prompts = random_prompts(1, [150, 170, 190, 130], vocab=VOCAB)
    shared = random_prompts(2, [150], vocab=VOCAB)[0]
    cached = [shared + s for s in random_prompts(3, [1, 2, 3, 5], vocab=VOCAB)]
    with engine(path, max_num_batched_tokens=7, max_num_seqs=3, long_prefill_token_threshold=5,
                block_size=64, num_gpu_blocks_override=12, enable_prefix_caching=True,
                kv_sharing_fast_prefill=True) as llm:
        params = [greedy_params(len(expected[0]["greedy"]), prompt_logprobs=None)] \
            * len(expected) + [greedy_params(200, prompt_logprobs=None)] * len(long_prompts)
        outputs = llm.generate(token_prompts([c["prompt"] for c in expected] + long_prompts),
                               params)
        assert metric(llm, "vllm:num_preemptions") > 0, "no preemption happened"
        llm.generate(token_prompts(cached[:1]), greedy_params(8, prompt_logprobs=None))
        hits = llm.generate(token_prompts(cached), greedy_params(8, prompt_logprobs=None))
    check_against_cases(outputs[:len(expected)], expected)
    check_against_reference(model, long_prompts, outputs[len(expected):])
    assert all(o.num_cached_tokens >= 128 for o in hits), [o.num_cached_tokens for o in hits]
    check_against_reference(model, cached, hits)
