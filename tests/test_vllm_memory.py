"""KV memory: the block decoder stores one entry per block, the token decoder
a state whose size does not depend on the context length."""
from __future__ import annotations

import pytest
import torch

from engine import engine

pytestmark = pytest.mark.engine  # starts vLLM engines (make test-fast skips it)

BUDGET = 8 << 20  # the same KV-cache bytes for both models


def kv_groups(worker) -> list[tuple[str, int, int, tuple]]:
    """(kind, block_size, page bytes, state shapes) of each KV-cache group."""
    cfg = worker.model_runner.kv_cache_config
    out = []
    for group in cfg.kv_cache_groups:
        spec = group.kv_cache_spec
        shapes = tuple(tuple(shape) for shape in getattr(spec, "shapes", ()))
        out.append((type(spec).__name__, spec.block_size, spec.page_size_bytes, shapes))
    return out


def capacity_tokens(llm) -> int:
    cache = llm.llm_engine.vllm_config.cache_config
    return cache.num_gpu_blocks * cache.block_size


@pytest.fixture(scope="module")
def gptj_same_block_decoder(tmp_path_factory, tiny_b4_model):
    """A vanilla GPT-J with the block decoder's dimensions (per-token KV)."""
    from transformers import GPTJConfig, GPTJForCausalLM

    c = tiny_b4_model.config
    cfg = GPTJConfig(vocab_size=c.vocab_size, n_embd=c.block_hidden_size,
                     n_head=c.block_num_attention_heads, n_layer=c.block_num_hidden_layers,
                     rotary_dim=c.decoder_rotary_dim("block"), n_positions=2048)
    path = tmp_path_factory.mktemp("gptj") / "gptj"
    GPTJForCausalLM(cfg).save_pretrained(path)
    return path


def test_block_decoder_kv_capacity_is_block_length_times_per_token(
        tiny_b4_dir, tiny_b4_model, gptj_same_block_decoder, monkeypatch):
    monkeypatch.setenv("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
    L = tiny_b4_model.config.block_length
    with engine(tiny_b4_dir, kv_cache_memory_bytes=BUDGET, enable_prefix_caching=False) as llm:
        block = capacity_tokens(llm)
        (groups,) = llm.collective_rpc(kv_groups)
    with engine(gptj_same_block_decoder, kv_cache_memory_bytes=BUDGET,
                enable_prefix_caching=False) as llm:
        vanilla = capacity_tokens(llm)
    print(f"KV capacity for {BUDGET} bytes: block decoder {block} tokens, "
          f"per-token storage {vanilla} tokens, ratio {block / vanilla:.2f}; groups {groups}")
    assert block == L * vanilla


def test_token_decoder_state_is_bounded_and_independent_of_context(
        tiny_b4_dir, tiny_b4_model, monkeypatch):
    monkeypatch.setenv("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
    c = tiny_b4_model.config
    L, R = c.block_length, c.prefix_length
    heads, head_dim = c.token_num_attention_heads, c.decoder_head_dim("token")
    expected = ((2, R + L - 1, heads, head_dim), (L - 1, c.embedder_hidden_size))
    state_groups = {}
    for max_len in (64, 1024):
        with engine(tiny_b4_dir, max_model_len=max_len, enable_prefix_caching=False) as llm:
            (groups,) = llm.collective_rpc(kv_groups)
        states = [g for g in groups if g[0] == "MambaSpec"]
        # one state page per request ('none' mode): it covers the whole context
        assert states and all(g[1] == max_len for g in states), groups
        # (results cross a process boundary: tuples come back as lists)
        state_groups[max_len] = [(g[2], tuple(map(tuple, g[3]))) for g in states]
    assert all(shapes == expected for _, shapes in state_groups[64]), state_groups
    assert state_groups[64] == state_groups[1024]
    state_bytes = sum(torch.Size(s).numel() for s in expected) * 4
    print(f"token-decoder state: {state_bytes} bytes per layer and request "
          f"(page {state_groups[64][0][0]} bytes), at any context length")
