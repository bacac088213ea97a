"""The token decoder's attention math: rows attending within their block's
window (<= R+L-1 positions), as plain functions of the queries, the layer's
window buffer and the plan's index tensors.

`TokenWindowAttention` (token_attention.py) gathers each window from the
layer's stored state, writes the step's K/V into it and calls one of these.
Exact steps (`StepPlan`): prefill-like steps fill their windows and attend per
window, causally (2-4x faster on CPU, no window copy per row); decode-like
steps have about one row per window and attend per row
(benchmarks/window_attention.py). The static decode step (`DecodePlan`)
attends per request over a fixed [B, R] layout.

An exact step moves whole windows as rows of a [windows, 2*S*heads*head_dim]
matrix (`gather_windows`, `write_rows`, `store_windows`): on a CPU, row
copies (`index_select` / `index_copy_` / `index_fill_`) run near memory
bandwidth, where multi-dimensional advanced indexing and a broadcast
`torch.where` ran 5-10x slower and made the state traffic, not the GEMMs,
the token decoder's cost at large batches (issue 18's profile).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def attends_per_window(num_rows: int, num_windows: int, window: int) -> bool:
    """Whether an exact step's rows fill their windows enough to attend per
    window rather than per row (host sizes only)."""
    return 2 * num_rows >= num_windows * window


def gather_windows(stored: torch.Tensor, window_slot: torch.Tensor,
                   blank_cells: torch.Tensor) -> torch.Tensor:
    """The step's windows [W, 2*S*heads*head_dim] from the layer's state
    (`stored`: [pages, 2, S, heads, head_dim], pages possibly padded), with
    every cell that does not continue the stored state zeroed: keys past a
    row's position are masked, but 0 x stale NaN would not be."""
    windows = stored.view(len(stored), -1).index_select(0, window_slot)
    windows.view(-1, stored[0, 0, 0].numel()).index_fill_(0, blank_cells, 0)
    return windows


def write_rows(windows: torch.Tensor, row_cell: torch.Tensor, k: torch.Tensor,
               v: torch.Tensor, window: int) -> None:
    """The step's K and V ([M, heads, head_dim]) into their windows' cells."""
    cells = windows.view(-1, k[0].numel())
    cells.index_copy_(0, row_cell, k.reshape(len(k), -1))
    cells.index_copy_(0, row_cell + window, v.reshape(len(v), -1))


def store_windows(stored: torch.Tensor, slot: torch.Tensor, windows: torch.Tensor,
                  last_win: torch.Tensor) -> None:
    """Each request's open window after the step back into its state page."""
    # a view (never a silent copy): the state's pages may be padded, not reshaped
    stored.view(len(stored), -1).index_copy_(0, slot, windows.index_select(0, last_win))


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


def row_attention(q: torch.Tensor, buf: torch.Tensor, row_win: torch.Tensor,
                  row_hidden: torch.Tensor) -> torch.Tensor:
    """The same, row by row: each row with a copy of its window's K/V
    (buf [W, 2, S, heads, head_dim]), keys after its position hidden
    (`row_hidden` [M, S]). A window holds a few keys, so the scores are an
    elementwise product and a sum (one pass over the copy, fp32 sums), not a
    batched GEMM of [1, S] tiles, whose operand copies and per-tile calls
    cost more than the arithmetic."""
    W, _, S, num_heads, head_dim = buf.shape
    kv = buf.view(W, -1).index_select(0, row_win).view(-1, 2, S, num_heads, head_dim)
    scores = (q[:, None] * kv[:, 0]).sum(-1, dtype=torch.float32)  # [M, S, heads]
    scores.mul_(head_dim ** -0.5).masked_fill_(row_hidden[:, :, None], float("-inf"))
    weights = scores.softmax(1).to(q.dtype)
    return (weights[..., None] * kv[:, 1]).sum(1)  # [M, heads, head_dim]


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
