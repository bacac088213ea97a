"""Cached decoding (prefill + step) vs the full forward, on random configs (fp32)."""
from __future__ import annotations

import pytest
import torch

from helpers import random_config, random_model
from vllm_block.config import num_complete_blocks
from vllm_block.reference import sample

TOL = 1e-4  # max abs logit error, fp32
# (block_length, prefix_length): every L in 1..8, every R in 1..4
SHAPES = [(1, 1), (2, 3), (3, 2), (4, 4), (5, 1), (6, 2), (7, 3), (8, 4), (4, 2), (2, 1)]


def cache_len(cache) -> int:
    lengths = {k.shape[2] for k, v in cache}
    assert len(lengths) == 1 and {v.shape[2] for k, v in cache} == lengths
    return lengths.pop()


@pytest.mark.parametrize("seed,L,R", [(i, L, R) for i, (L, R) in enumerate(SHAPES)])
def test_cached_decoding_equals_full_forward(seed, L, R):
    cfg = random_config(seed, block_length=L, prefix_length=R)
    model = random_model(cfg, seed)
    gen = torch.Generator().manual_seed(seed)
    n_new = L + 2  # crosses at least one block boundary from every start
    for T in range(1, 2 * L + 2):  # every prompt length modulo L, short and long
        ids = torch.randint(cfg.vocab_size, (2, T + n_new), generator=gen)
        with torch.no_grad():
            full = model(ids).logits  # [2, T + n_new, V]
        state = model.prefill(ids[:, :T])
        for n in range(T, T + n_new + 1):  # n tokens consumed so far
            if n > T:
                model.step(state, ids[:, n - 1])
            err = (state.logits - full[:, n - 1]).abs().max().item()
            assert err <= TOL, f"T={T} n={n}: max err {err}"
            blocks = num_complete_blocks(n, L)
            assert state.num_blocks == blocks
            assert cache_len(state.block_cache) == blocks
            open_tokens = (n + L - 1) % L
            assert cache_len(state.token_cache) == R + open_tokens
        # one entry per prefill / step, never above R + L - 1
        assert len(state.token_cache_lengths) == n_new + 1
        assert max(state.token_cache_lengths) <= cfg.token_cache_length


def test_token_cache_reaches_its_bound():
    cfg = random_config(3, block_length=5, prefix_length=3)
    model = random_model(cfg)
    state = model.prefill(torch.tensor([[1]]))
    for _ in range(2 * cfg.block_length):
        model.step(state, state.logits.argmax(-1))
    assert max(state.token_cache_lengths) == cfg.token_cache_length == 7


def test_random_configs_cover_uneven_decoders():
    cfgs = [random_config(s) for s in range(20)]
    assert {c.block_length for c in cfgs} == set(range(1, 9))
    assert {c.prefix_length for c in cfgs} == set(range(1, 5))
    assert any(c.block_num_hidden_layers != c.token_num_hidden_layers for c in cfgs)
    assert any(c.block_hidden_size != c.token_hidden_size for c in cfgs)
    assert {c.token_use_parallel_residual for c in cfgs} == {True, False}
    assert len({c.block_rotary_pct for c in cfgs} | {c.token_rotary_pct for c in cfgs}) >= 3


@pytest.mark.parametrize("seed", range(4))
def test_random_config_cached_greedy_equals_full_greedy(seed):
    """generate() with caches picks the argmax of the full forward at every step."""
    cfg = random_config(100 + seed)
    model = random_model(cfg, seed)
    prompt = torch.randint(cfg.vocab_size, (3, 2 * cfg.block_length + 1),
                           generator=torch.Generator().manual_seed(seed))
    ids = model.generate(prompt, max_new_tokens=12)
    with torch.no_grad():
        full = model(ids).logits
    T = prompt.shape[1]
    assert torch.equal(full[:, T - 1:-1].argmax(-1), ids[:, T:])


def test_sampling_with_seeded_generator_is_reproducible():
    cfg = random_config(7)
    model = random_model(cfg, 7)
    prompt = torch.tensor([[1, 2, 3]])

    def draw(seed, **kw):
        return model.generate(prompt, max_new_tokens=20, do_sample=True, temperature=1.5,
                              generator=torch.Generator().manual_seed(seed), **kw)

    assert torch.equal(draw(0), draw(0))
    assert len({tuple(draw(s)[0].tolist()) for s in range(5)}) > 1  # it does sample
    greedy = model.generate(prompt, max_new_tokens=20)
    assert torch.equal(draw(1, top_k=1), greedy)
    assert torch.equal(draw(2, top_p=1e-6), greedy)


def test_sample_frequencies_follow_softmax_with_temperature():
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0])
    n = 40000
    draws = sample(logits.expand(n, -1), True, temperature=0.7,
                   generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=5).float() / n
    assert (freq - (logits / 0.7).softmax(-1)).abs().max().item() < 0.01


def test_sample_top_k_and_top_p_restrict_support():
    logits = torch.tensor([3.0, 2.0, 1.0, 0.0, -1.0]).expand(5000, -1)
    gen = torch.Generator().manual_seed(0)
    assert set(sample(logits, True, top_k=2, generator=gen).tolist()) == {0, 1}
    p = logits[0].softmax(-1)  # [0.64, 0.23, 0.09, ...]: top_p 0.8 keeps 2 tokens
    assert p[0] < 0.8 < p[0] + p[1]
    assert set(sample(logits, True, top_p=0.8, generator=gen).tolist()) == {0, 1}


def test_labels_loss_equals_manual_cross_entropy():
    cfg = random_config(11)
    model = random_model(cfg, 11)
    ids = torch.randint(cfg.vocab_size, (2, 3 * cfg.block_length + 2),
                        generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[0, 4] = -100  # ignored position
    out = model(ids, labels=labels)
    logprobs = out.logits[:, :-1].log_softmax(-1)
    target = labels[:, 1:]
    keep = target != -100
    manual = -logprobs[keep].gather(-1, target[keep][:, None]).mean()
    assert keep.sum() == target.numel() - 1
    assert abs(out.loss.item() - manual.item()) <= 1e-5
    out.loss.backward()  # trainable: every weight gets a finite gradient
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
