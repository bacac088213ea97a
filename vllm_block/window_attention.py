"""The token decoder's attention math: rows attending within their block's
window (<= R+L-1 positions), as plain functions of the queries, the layer's
window buffer and the plan's index tensors.

`TokenWindowAttention` (token_attention.py) gathers each window from the
layer's stored state, writes the step's K/V into it and calls one of these.
Exact steps (`StepPlan`): prefill-like steps fill their windows and attend per
window, causally (2-4x faster on CPU, no window copy per row); decode-like
steps have about one row per window and attend per row (1.5-2.7x faster
there; benchmarks/window_attention.py). The static decode step (`DecodePlan`)
attends per request over a fixed [B, R] layout.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def attends_per_window(num_rows: int, num_windows: int, window: int) -> bool:
    """Whether an exact step's rows fill their windows enough to attend per
    window rather than per row (host sizes only)."""
    return 2 * num_rows >= num_windows * window


def window_attention(q: torch.Tensor, buf: torch.Tensor, row_win: torch.Tensor,
                     row_pos: torch.Tensor) -> torch.Tensor:
    """Rows' attention within their windows, each window attended as a whole:
    q [M, heads, head_dim] is placed at (row_win, row_pos) of a [W, S] grid
    and attends causally over buf ([W, 2, S, heads, head_dim], K and V)."""
    W, _, S, num_heads, head_dim = buf.shape
    queries = q.new_zeros(W, S, num_heads, head_dim)
    queries[row_win, row_pos] = q
    keys, values = buf.transpose(2, 3).unbind(1)  # [W, heads, S, head_dim]
    out = F.scaled_dot_product_attention(queries.transpose(1, 2), keys, values, is_causal=True)
    return out.transpose(1, 2)[row_win, row_pos]  # [M, heads, head_dim]


def row_visibility(row_pos: torch.Tensor, window: int) -> torch.Tensor:
    """[M, 1, 1, S]: each row sees its window up to its own position."""
    key_pos = torch.arange(window, device=row_pos.device)
    return (key_pos[None, :] <= row_pos[:, None])[:, None, None, :]


def row_attention(q: torch.Tensor, buf: torch.Tensor, row_win: torch.Tensor,
                  visible: torch.Tensor) -> torch.Tensor:
    """The same, row by row: each row with a copy of its window and a mask
    `visible` ([M, 1, 1, S]: keys up to the row's position)."""
    M, num_heads, head_dim = q.shape
    kv = buf[row_win].transpose(2, 3)  # [M, 2, heads, S, head_dim]
    out = F.scaled_dot_product_attention(q.view(M, num_heads, 1, head_dim), kv[:, 0],
                                         kv[:, 1], attn_mask=visible)
    return out.view(M, num_heads, head_dim)


def decode_visibility(row_pos: torch.Tensor, window: int) -> torch.Tensor:
    """[B, 1, R, S+1]: a static-step row sees its window up to its own
    position, never the scratch column S that spare rows write to."""
    key_col = torch.arange(window + 1, device=row_pos.device)
    return ((key_col <= row_pos[..., None]) & (key_col < window))[:, None]


def decode_attention(q: torch.Tensor, buf: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """The static step's attention: q [B, R, heads, head_dim], one window per
    request, buf [B, 2, S+1, heads, head_dim] (+ scratch column)."""
    keys, values = buf.transpose(2, 3).unbind(1)  # [B, heads, S+1, head_dim]
    out = F.scaled_dot_product_attention(q.transpose(1, 2), keys, values, attn_mask=visible)
    return out.transpose(1, 2)  # [B, R, heads, head_dim]
