"""The vLLM model against the reference model on random configurations:
block lengths 1..8, prefix lengths 1..4, decoders of different widths, head
counts and layer counts (uneven layer counts give vLLM several KV-cache
groups), parallel and sequential residuals, non-zero pad ids."""
from __future__ import annotations

import pytest

from engine import check_against_reference, engine, greedy_params, save_model, token_prompts
from helpers import random_config, random_model
from test_vllm_scheduling import random_prompts

pytestmark = pytest.mark.engine  # starts vLLM engines (make test-fast skips it)

# (block_length, prefix_length, block layers, token layers, block head dim)
CONFIGS = [
    (1, 3, 2, 1, 32),
    (3, 1, 3, 2, 96),
    (5, 4, 1, 3, 80),
    (8, 2, 2, 2, 64),
]


def vllm_config(seed: int, L: int, R: int, block_layers: int, token_layers: int,
                head_dim: int):
    # the CPU attention kernel takes head sizes 32, 64, 80, 96, 112, ...
    heads = 2 if (2 * head_dim) % L == 0 and seed % 2 else 1
    return random_config(seed, block_length=L, prefix_length=R,
                         block_num_hidden_layers=block_layers,
                         token_num_hidden_layers=token_layers,
                         block_hidden_size=heads * head_dim,
                         block_num_attention_heads=heads)


def check_random_config(tmp_path, L: int, R: int, block_layers: int, token_layers: int,
                        head_dim: int, **engine_kwargs) -> None:
    config = vllm_config(L * 10 + R, L, R, block_layers, token_layers, head_dim)
    model = random_model(config, seed=L)
    path = save_model(model, tmp_path / "model")
    # every prompt length modulo L, plus a long one
    prompts = random_prompts(L, list(range(1, 2 * L + 2)) + [41], vocab=config.vocab_size)
    fast = engine_kwargs.get("kv_sharing_fast_prefill", False)
    with engine(path, max_num_batched_tokens=32, max_num_seqs=8, **engine_kwargs) as llm:
        outputs = llm.generate(token_prompts(prompts), greedy_params(
            2 * L + 3, logprobs=3, prompt_logprobs=None if fast else 1))
    check_against_reference(model, prompts, outputs)


@pytest.mark.parametrize("L,R,block_layers,token_layers,head_dim", CONFIGS,
                         ids=[f"L{c[0]}-R{c[1]}" for c in CONFIGS])
def test_random_config_matches_reference(tmp_path, L, R, block_layers, token_layers,
                                         head_dim):
    check_random_config(tmp_path, L, R, block_layers, token_layers, head_dim)


@pytest.mark.parametrize("L,R,block_layers,token_layers,head_dim", CONFIGS[1::2],
                         ids=[f"L{c[0]}-R{c[1]}" for c in CONFIGS[1::2]])
def test_random_config_with_fast_prefill_matches_reference(tmp_path, L, R, block_layers,
                                                           token_layers, head_dim):
    """Only each request's open block runs through the token decoder."""
    check_random_config(tmp_path, L, R, block_layers, token_layers, head_dim,
                        kv_sharing_fast_prefill=True)
