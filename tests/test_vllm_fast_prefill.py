"""Fast prefill (`kv_sharing_fast_prefill=True`, `--kv-sharing-fast-prefill`):
the token decoder runs only each request's open block instead of every prompt
token. Generated tokens and their logprobs stay exact under chunked prefill,
preemption and prefix caching; prompt logprobs, which would read the skipped
rows, are refused with a clear error on both the offline and the HTTP path."""
from __future__ import annotations

import pytest

from engine import (check_against_cases, check_against_reference, engine, greedy_params,
                    metric, token_prompts)
from helpers import greedy_cases
from test_vllm_scheduling import random_prompts

CASES = [{**c, "prompt_logprobs": None} for c in greedy_cases()]  # not available here
NEW = len(CASES[0]["greedy"])
FAST = dict(kv_sharing_fast_prefill=True)


@pytest.fixture(scope="module")
def llm(tiny_b4_dir):
    # 7-token budget shared by 3 requests: chunks end at every in-block index
    with engine(tiny_b4_dir, max_num_batched_tokens=7, max_num_seqs=3,
                long_prefill_token_threshold=5, enable_prefix_caching=False, **FAST) as llm:
        yield llm


def test_fast_prefill_with_odd_chunk_boundaries_matches_ground_truth(llm):
    outputs = llm.generate(token_prompts(c["prompt"] for c in CASES),
                           greedy_params(NEW, prompt_logprobs=None))
    check_against_cases(outputs, CASES)


def test_fast_prefill_refuses_prompt_logprobs_with_a_clear_error(llm):
    from vllm.exceptions import VLLMValidationError

    with pytest.raises(VLLMValidationError, match="prompt_logprobs.*--kv-sharing-fast-prefill"):
        llm.generate(token_prompts([CASES[0]["prompt"]]), greedy_params(NEW))
    (out,) = llm.generate(token_prompts([CASES[3]["prompt"]]),
                          greedy_params(NEW, prompt_logprobs=None))
    check_against_cases([out], [CASES[3]])  # the engine is still serving


def test_fast_prefill_under_preemption_matches_reference(tiny_b4_dir, tiny_b4_model):
    # 12 pages of 64 tokens hold two of these requests at most: preemption
    prompts = random_prompts(1, [150, 170, 190, 130, 160, 120])
    with engine(tiny_b4_dir, block_size=64, num_gpu_blocks_override=12, max_num_seqs=8,
                enable_prefix_caching=False, **FAST) as llm:
        outputs = llm.generate(token_prompts(prompts), greedy_params(200, prompt_logprobs=None))
        assert metric(llm, "vllm:num_preemptions") > 0, "no preemption happened"
    check_against_reference(tiny_b4_model, prompts, outputs)


def test_fast_prefill_with_prefix_cache_hits_matches_reference(tiny_b4_dir, tiny_b4_model):
    shared = random_prompts(2, [300])[0]
    prompts = [shared + s for s in random_prompts(3, [1, 2, 3, 4, 5, 13])]
    with engine(tiny_b4_dir, enable_prefix_caching=True, block_size=128,
                max_num_batched_tokens=64, **FAST) as llm:
        llm.generate(token_prompts(prompts[:1]), greedy_params(20, prompt_logprobs=None))
        outputs = llm.generate(token_prompts(prompts), greedy_params(20, prompt_logprobs=None))
        assert metric(llm, "vllm:prefix_cache_hits") >= 256 * len(prompts)
    check_against_reference(tiny_b4_model, prompts, outputs)


def test_vllm_serve_with_fast_prefill_answers_and_refuses_echo_logprobs(tiny_b4_tok_dir, tmp_path):
    from openai import BadRequestError, OpenAI

    from vllm_block.serving import vllm_serve

    with vllm_serve(tiny_b4_tok_dir, "--served-model-name", "tiny", "--dtype", "float32",
                    "--max-model-len", "512", "--kv-sharing-fast-prefill",
                    log=tmp_path / "server.log") as server:
        client = OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        case = CASES[5]

        def complete(**kwargs):
            return client.completions.create(
                model="tiny", prompt=case["prompt"], max_tokens=NEW, temperature=0.0,
                extra_body={"ignore_eos": True, "return_token_ids": True}, **kwargs)

        with pytest.raises(BadRequestError, match="kv-sharing-fast-prefill"):
            complete(echo=True, logprobs=1)
        assert complete().choices[0].token_ids == case["greedy"]
