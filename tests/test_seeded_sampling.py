"""Seeded sampling on CPU survives a prefill split over several steps (chunked
prefill, Mamba align mode's page-sized chunks, preemption, prefix-cache hits)
and gives the same tokens as the same request prefilled at once and alone.
vLLM 0.32 alone crashes the engine here, for native models too; the fix is
`vllm_block/cpu_seed_rewind.py`."""
from __future__ import annotations

import pytest

from engine import engine, metric, token_prompts
from test_vllm_scheduling import random_prompts

pytestmark = pytest.mark.engine  # starts vLLM engines (make test-fast skips it)

# the default engine prefills in chunks of one 128-token page (align mode)
LONG = random_prompts(11, [129, 300, 497, 1, 5, 200])


def seeded(seed: int, max_tokens: int = 12, **kwargs):
    from vllm import SamplingParams

    return SamplingParams(temperature=1.0, seed=seed, max_tokens=max_tokens, ignore_eos=True,
                          detokenize=False, **kwargs)


def tokens(outputs) -> list[list[int]]:
    return [list(c.token_ids) for o in outputs for c in o.outputs]


def alone(llm, prompts: list[list[int]], params: list) -> list[list[int]]:
    """Each request on its own (the engine is otherwise idle)."""
    return [t for p, sp in zip(prompts, params, strict=True)
            for t in tokens(llm.generate(token_prompts([p]), sp))]


@pytest.fixture(scope="module")
def whole(tiny_b4_dir):
    """Prompts prefilled in one step: no prefix caching, a large token budget."""
    with engine(tiny_b4_dir, enable_prefix_caching=False,
                max_num_batched_tokens=1024) as llm:
        yield llm


@pytest.fixture(scope="module")
def default(tiny_b4_dir):
    """vLLM's defaults: prefix caching on, so prompts over one page are chunked."""
    with engine(tiny_b4_dir) as llm:
        yield llm


def test_seeded_requests_with_chunked_prefill_equal_unchunked_alone(default, whole):
    params = [seeded(100 + i) for i in range(len(LONG))]
    got = tokens(default.generate(token_prompts(LONG), params))
    assert got == alone(whole, LONG, params)
    assert len({tuple(t) for t in got}) == len(got)  # the seeds matter


def test_engine_keeps_serving_after_seeded_chunked_prefill(default, whole):
    default.generate(token_prompts(LONG[2:3]), seeded(5))
    got = tokens(default.generate(token_prompts(LONG[:3]), [seeded(6)] * 3))
    assert got == alone(whole, LONG[:3], [seeded(6)] * 3)


def test_seeded_n_and_penalties_with_chunked_prefill_equal_alone(default, whole):
    params = [seeded(7, n=3, top_p=0.9, top_k=40, presence_penalty=0.5,
                     repetition_penalty=1.2, logprobs=3)]
    assert tokens(default.generate(token_prompts(LONG[1:2]), params)) == \
        alone(whole, LONG[1:2], params)


def test_seeded_request_with_prefix_cache_hit_equals_alone(default, whole):
    shared = random_prompts(12, [300])[0]
    default.generate(token_prompts([shared]), seeded(1, max_tokens=1))
    prompt = shared + [3, 1, 4]
    (out,) = default.generate(token_prompts([prompt]), seeded(8))
    assert out.num_cached_tokens >= 256
    assert tokens([out]) == alone(whole, [prompt], [seeded(8)])


def test_seeded_requests_under_preemption_equal_alone(tiny_b4_dir, whole):
    prompts = random_prompts(13, [150, 170, 190, 130, 160, 120])
    params = [seeded(200 + i, max_tokens=150) for i in range(len(prompts))]
    # 12 pages of 64 tokens hold about two of these requests at a time
    with engine(tiny_b4_dir, block_size=64, num_gpu_blocks_override=12, max_num_seqs=8,
                enable_prefix_caching=False, max_num_batched_tokens=128) as llm:
        got = tokens(llm.generate(token_prompts(prompts), params))
        assert metric(llm, "vllm:num_preemptions") > 0, "no preemption happened"
    assert got == alone(whole, prompts, params)


@pytest.fixture(scope="module")
def gptj_dir(tmp_path_factory):
    from transformers import GPTJConfig, GPTJForCausalLM

    cfg = GPTJConfig(vocab_size=512, n_embd=64, n_layer=2, n_head=2, rotary_dim=16,
                     n_positions=1024, bos_token_id=0, eos_token_id=0)
    path = tmp_path_factory.mktemp("gptj") / "gptj"
    GPTJForCausalLM(cfg).save_pretrained(path)
    return path


def test_native_gptj_seeded_chunked_prefill_is_fixed_too(gptj_dir):
    """The fix is vLLM's, for every model on CPU: GPT-J with a 64-token budget."""
    prompts, params = LONG[:3], [seeded(300 + i) for i in range(3)]
    with engine(gptj_dir, max_num_batched_tokens=64, enable_chunked_prefill=True,
                enable_prefix_caching=False) as llm:
        got = tokens(llm.generate(token_prompts(prompts), params))
    with engine(gptj_dir, max_num_batched_tokens=1024, enable_prefix_caching=False) as llm:
        assert got == alone(llm, prompts, params)
