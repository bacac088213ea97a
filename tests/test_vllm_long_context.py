"""Contexts past the trained positions, when a user opts in with
VLLM_ALLOW_LONG_MAX_MODEL_LEN=1: the block decoder's rotary table is sized
for the engine's max_model_len, so outputs stay finite and equal the reference
model's (whose rotary is computed for any position). The demo model was
trained for 512 tokens and its table holds 512 block positions (2048 tokens);
3000 tokens need 751."""
from __future__ import annotations

import math

import pytest
import torch

from engine import check_against_reference, engine, greedy_params, token_prompts
from helpers import REPO_ROOT
from test_vllm_scheduling import random_prompts
from vllm_block.tools.serving import vllm_serve

pytestmark = pytest.mark.engine  # starts vLLM engines (make test-fast skips it)

MODEL_DIR = REPO_ROOT / "models" / "kjv-block-tiny"
MAX_LEN = 4096
PROMPT = random_prompts(21, [3000], vocab=4096)[0]
NEW = 8


@pytest.fixture(scope="module")
def reference():
    from transformers import AutoModelForCausalLM

    import vllm_block  # noqa: F401  (registers the Auto classes)

    return AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32).eval()


@pytest.fixture
def long_max_model_len(monkeypatch):
    monkeypatch.setenv("VLLM_ALLOW_LONG_MAX_MODEL_LEN", "1")


def test_3000_token_prompt_past_trained_positions_matches_reference(
        reference, long_max_model_len):
    with engine(MODEL_DIR, max_model_len=MAX_LEN, max_num_batched_tokens=1024,
                kv_cache_memory_bytes=64 << 20) as llm:
        outputs = llm.generate(token_prompts([PROMPT]), greedy_params(NEW, prompt_logprobs=1))
    out = outputs[0].outputs[0]
    assert all(math.isfinite(d[t].logprob) for d, t in zip(out.logprobs, out.token_ids))
    check_against_reference(reference, [PROMPT], outputs)


def test_vllm_serve_answers_a_3000_token_prompt_with_finite_logprobs(
        reference, tmp_path, long_max_model_len):
    from openai import OpenAI

    expected = reference.generate(torch.tensor([PROMPT]), max_new_tokens=NEW)[0, len(PROMPT):]
    with vllm_serve(MODEL_DIR, "--dtype", "float32", "--max-model-len", str(MAX_LEN),
                    log=tmp_path / "server.log") as server:
        client = OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        out = client.completions.create(
            model=client.models.list().data[0].id, prompt=PROMPT, max_tokens=NEW,
            temperature=0.0, logprobs=1,
            extra_body={"ignore_eos": True, "return_token_ids": True})
    choice = out.choices[0]
    assert choice.token_ids == expected.tolist()
    assert choice.text and choice.finish_reason == "length"
    assert all(math.isfinite(lp) for lp in choice.logprobs.token_logprobs)
