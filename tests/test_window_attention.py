"""The exact step's two token-decoder attentions agree: per window (each
window attended as a whole, causally; used for prefill-like steps) and per
row (each row with a copy of its window; decode-like steps), on the plans of
random batches of mixed phases, both fast-prefill modes. No engine; fp32,
within 1e-5."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from test_step_plan import random_batch
from vllm_block.window_attention import row_attention, window_attention
from vllm_block.step_plan import build_step_plan


@pytest.mark.parametrize("fast", [False, True], ids=["all-rows", "fast-prefill"])
@pytest.mark.parametrize("kind", ["mixed", "decode", "one_token_prompts"])
@pytest.mark.parametrize("seed", range(8))
def test_window_attention_equals_row_attention(seed, kind, fast):
    rng = random.Random(seed)
    L, R = rng.randint(1, 8), rng.randint(1, 4)
    S, heads, head_dim = R + L - 1, rng.randint(1, 3), 8
    computed, scheduled = random_batch(rng, kind)
    qsl = np.array([0, *np.cumsum(scheduled)])
    plan = build_step_plan(qsl, np.add(computed, scheduled), L, R, fast).to(torch.device("cpu"))
    torch.manual_seed(seed)
    q = torch.randn(len(plan.row_pos), heads, head_dim)
    buf = torch.randn(len(plan.win_req), 2, S, heads, head_dim)
    visible = (torch.arange(S)[None, :] <= plan.row_pos[:, None])[:, None, None, :]
    expected = row_attention(q, buf, plan.row_win, visible)
    got = window_attention(q, buf, plan.row_win, plan.row_pos)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
