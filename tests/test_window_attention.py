"""The exact step's token-decoder attention, against a plain specification
on the plans of random batches of mixed phases (L 1..8, R 1..4, both
fast-prefill modes). No engine.

- The specification (`spec_*` below) is what the model computed before
  the row-copy kernels: multi-dimensional indexing, a `torch.where` over the
  gathered windows and `scaled_dot_product_attention` with a mask.
- Tolerances: fp32 within 1e-5; bf16 within 2e-2 absolute / 1.6e-2 relative
  (bf16 has 8 bits of mantissa; both paths round q.k and the weights once).
- The state moves are exact (the same bytes) in both dtypes.
"""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from test_step_plan import random_batch
from vllm_block.step_plan import build_step_plan
from vllm_block.window_attention import (gather_windows, row_attention, store_windows,
                                         window_attention, write_rows)

TOLERANCE = {torch.float32: dict(atol=1e-5, rtol=1e-5),
             torch.bfloat16: dict(atol=2e-2, rtol=1.6e-2)}


def spec_row_attention(q, buf, row_win, row_pos):
    """Each row over a copy of its window, keys up to its own position."""
    M, num_heads, head_dim = q.shape
    S = buf.shape[2]
    visible = (torch.arange(S)[None, :] <= row_pos[:, None])[:, None, None, :]
    kv = buf[row_win].transpose(2, 3)  # [M, 2, heads, S, head_dim]
    out = F.scaled_dot_product_attention(q.view(M, num_heads, 1, head_dim), kv[:, 0],
                                         kv[:, 1], attn_mask=visible)
    return out.view(M, num_heads, head_dim)


def spec_state_step(stored, slot, plan, k, v):
    """Gather, zero what does not continue the state, write rows, store."""
    buf = stored[slot[plan.win_req]]
    buf = torch.where(plan.win_from_state[:, None, :, None, None], buf, 0)
    buf[plan.row_win, 0, plan.row_pos] = k
    buf[plan.row_win, 1, plan.row_pos] = v
    stored[slot] = buf[plan.last_win]
    return buf


def random_step(seed: int, kind: str, fast: bool, dtype: torch.dtype):
    rng = random.Random(seed)
    L, R = rng.randint(1, 8), rng.randint(1, 4)
    S, heads, head_dim = R + L - 1, rng.randint(1, 3), 8
    computed, scheduled = random_batch(rng, kind)
    qsl = np.array([0, *np.cumsum(scheduled)])
    plan = build_step_plan(qsl, np.add(computed, scheduled), L, R, fast).to(torch.device("cpu"))
    torch.manual_seed(seed)
    M, W, n = len(plan.row_pos), len(plan.win_req), len(scheduled)
    q, k, v = (torch.randn(M, heads, head_dim).to(dtype) for _ in range(3))
    buf = torch.randn(W, 2, S, heads, head_dim).to(dtype)
    # the state's pages, padded past the window (as vLLM pads state pages)
    pages = torch.randn(n + 3, 2 * S * heads * head_dim + 5).to(dtype)
    pages[-1, 0] = float("nan")  # a stale page no window may read through
    stored = pages[:, :-5].view(n + 3, 2, S, heads, head_dim)
    slot = torch.randperm(n + 2)[:n]
    return plan, q, k, v, buf, pages, stored, slot


CASES = [(seed, kind, fast) for seed in range(8)
         for kind in ("mixed", "decode", "one_token_prompts") for fast in (False, True)]


ATTENTIONS = {  # the plan's row layout each attention reads
    "per_window": lambda q, buf, plan: window_attention(q, buf, plan.row_win, plan.row_pos),
    "per_row": lambda q, buf, plan: row_attention(q, buf, plan.row_win, plan.row_hidden),
}


@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("seed,kind,fast", CASES)
def test_attention_equals_the_specification(seed, kind, fast, dtype, attention):
    plan, q, _, _, buf, *_ = random_step(seed, kind, fast, dtype)
    got = ATTENTIONS[attention](q, buf, plan)
    torch.testing.assert_close(got, spec_row_attention(q, buf, plan.row_win, plan.row_pos),
                               **TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("seed,kind,fast", CASES)
def test_row_copies_move_the_state_as_the_specification(seed, kind, fast, dtype):
    plan, _, k, v, _, pages, stored, slot = random_step(seed, kind, fast, dtype)
    spec_pages = pages.clone()
    spec_stored = spec_pages[:, :-5].view(stored.shape)
    expected = spec_state_step(spec_stored, slot, plan, k, v)
    windows = gather_windows(stored, slot[plan.win_req], plan.blank_cells)
    write_rows(windows, plan.row_cell, k, v, stored.shape[2])
    store_windows(stored, slot, windows, plan.last_win)
    assert torch.equal(windows.view(expected.shape), expected)
    assert torch.equal(pages.nan_to_num(), spec_pages.nan_to_num())  # padding untouched too
