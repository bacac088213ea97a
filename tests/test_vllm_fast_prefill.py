"""Fast prefill (`kv_sharing_fast_prefill=True`, `--kv-sharing-fast-prefill`):
the token decoder runs only each request's open block instead of every prompt
token. Prompt logprobs, which would read the skipped rows, are refused with a
clear error on both the offline and the HTTP path. (Exactness under chunked
prefill, preemption and prefix caching: `test_vllm_scheduling.py`; on random
configurations: `test_vllm_random_configs.py`.)"""
from __future__ import annotations

import pytest

from engine import check_against_cases, engine, greedy_params, token_prompts
from helpers import greedy_cases

pytestmark = pytest.mark.engine  # starts vLLM engines (make test-fast skips it)

CASES = [{**c, "prompt_logprobs": None} for c in greedy_cases()]  # not available here
NEW = len(CASES[0]["greedy"])


def test_fast_prefill_refuses_prompt_logprobs_with_a_clear_error(tiny_b4_dir):
    from vllm.exceptions import VLLMValidationError

    with engine(tiny_b4_dir, kv_sharing_fast_prefill=True) as llm:
        with pytest.raises(VLLMValidationError,
                           match="prompt_logprobs.*--kv-sharing-fast-prefill"):
            llm.generate(token_prompts([CASES[0]["prompt"]]), greedy_params(NEW))
        (out,) = llm.generate(token_prompts([CASES[3]["prompt"]]),
                              greedy_params(NEW, prompt_logprobs=None))
    check_against_cases([out], [CASES[3]])  # the engine is still serving


def test_vllm_serve_with_fast_prefill_answers_and_refuses_echo_logprobs(tiny_b4_tok_dir, tmp_path):
    from openai import BadRequestError, OpenAI

    from vllm_block.tools.serving import vllm_serve

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
