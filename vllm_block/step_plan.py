"""The step plan: which of a step's tokens close blocks, which token-decoder
rows and windows it computes, and where each output comes from.

It depends only on each request's scheduled token count and sequence length,
which vLLM keeps on the host (`query_start_loc_cpu`, `seq_lens_cpu_upper_bound`;
exact here because speculative decoding is refused). So the plan is built on
the host with numpy, uploaded in one copy, and the model's forward reads index
tensors and host ints: no device->host sync, no data-dependent branch.

Alignment (see `config.py`): each request has `num_pad` virtual pad tokens
before its first token (L - 1 when no per-request count is given); token p
has in-block index (p + num_pad) % L and closes a block when that is L - 1;
its hidden state is then the output of the next block's last lead position.
A token of block 0 that does not close it has no context to be predicted
from (only when num_pad < L - 1): it gets no token-decoder row and its hidden
state is zero (zero logits: the uniform distribution).

`prefix_length` below is the number of token-decoder positions before a
block's first token (`BlockTransformerConfig.token_lead_length`: R for
"prefix", 1 for "summation"); the plan's shape does not depend on which.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch

from .config import index_in_block, num_complete_blocks, padded_index, window_size


def upload(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device` without a stream sync: pinned and
    non-blocking on CUDA (a blocking copy would also stall vLLM's async
    scheduling); as it is on the CPU."""
    if device.type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)


@dataclass
class StepPlan:
    """Index arrays (numpy on the host, torch on the device) and host sizes."""
    num_tokens: int  # T: tokens of the step (padding beyond them is ignored)
    block_end: np.ndarray  # [E] tokens that close a block
    end_req: np.ndarray  # [E] their requests
    end_block: np.ndarray  # [E] block index each closes
    piece_src_token: np.ndarray  # [E, L] step token holding piece k (when in step)
    piece_in_step: np.ndarray  # [E, L] bool
    piece_is_pad: np.ndarray  # [E, L] bool
    pending_token: np.ndarray  # tokens of each request's open block after the step
    pending_req: np.ndarray
    pending_idx: np.ndarray  # their in-block index
    open_rows: np.ndarray  # [M_open] open-block tokens fed to the token decoder
    end_with_rows: np.ndarray  # [E'] closed blocks whose R prefix rows are computed
    open_opener: np.ndarray  # [M_open] the end_with_rows entry whose context its
    #                          block reads, -1: one closed in an earlier step
    addend_end: np.ndarray  # end_with_rows entries that open a request's last block
    addend_req: np.ndarray  # their requests
    row_pos: np.ndarray  # [M] token-decoder position of each row (0..R+L-2)
    row_win: np.ndarray  # [M] window of each row
    win_req: np.ndarray  # [W]
    win_from_state: np.ndarray  # [W, S] bool: key comes from the stored state
    blank_cells: np.ndarray  # K/V cells (window_cell) of the windows not from the state
    row_cell: np.ndarray  # [M] each row's K cell in its window (its V cell is S further)
    row_hidden: np.ndarray  # [M, S] bool: keys after the row's position
    last_win: np.ndarray  # [n] each request's open window after the step
    out_token: np.ndarray  # tokens whose hidden state this step computes
    out_row: np.ndarray  # the row holding each one's hidden state

    @property
    def num_blocks(self) -> int:
        return len(self.block_end)

    @property
    def all_ends_have_rows(self) -> bool:
        return len(self.end_with_rows) == len(self.block_end)

    def to(self, device: torch.device) -> "StepPlan":
        """The same plan with torch index tensors on `device`: one host->device
        copy of one packed int64 buffer (pinned on CUDA, non-blocking)."""
        arrays = [f.name for f in fields(self) if isinstance(getattr(self, f.name), np.ndarray)]
        flat = np.concatenate([getattr(self, a).astype(np.int64).ravel() for a in arrays])
        packed = upload(torch.from_numpy(flat), device)
        out, at = {}, 0
        for a in arrays:
            host = getattr(self, a)
            t = packed[at:at + host.size].view(host.shape)
            out[a] = t.bool() if host.dtype == np.bool_ else t
            at += host.size
        return StepPlan(num_tokens=self.num_tokens, **out)


@dataclass
class _StepTokens:
    """Each scheduled token of a step: its request and place in its block."""
    req: np.ndarray  # [T] request
    positions: np.ndarray  # [T] position in the request's sequence
    j: np.ndarray  # [T] in-block index; L-1 closes a block
    block: np.ndarray  # [T] block index
    first: np.ndarray  # [n] each request's first token of the step
    last_block: np.ndarray  # [n] its open block after the step (fresh if the last closed)

    @classmethod
    def of(cls, query_start_loc: np.ndarray, seq_lens: np.ndarray, L: int,
           num_pad: np.ndarray | None = None) -> "_StepTokens":
        starts = np.asarray(query_start_loc, dtype=np.int64)
        seq = np.asarray(seq_lens, dtype=np.int64)
        num_scheduled = np.diff(starts)
        req = np.repeat(np.arange(len(seq)), num_scheduled)
        first, last = starts[:-1], starts[1:] - 1
        positions = (seq - num_scheduled)[req] + np.arange(int(starts[-1])) - first[req]
        pad = None if num_pad is None else np.asarray(num_pad, dtype=np.int64)[req]
        j = index_in_block(positions, L, pad)
        block = padded_index(positions, L, pad) // L
        return cls(req, positions, j, block, first, block[last] + (j[last] == L - 1))


def build_step_plan(query_start_loc: np.ndarray, seq_lens: np.ndarray, block_length: int,
                    prefix_length: int, last_windows_only: bool = False,
                    num_pad: np.ndarray | None = None) -> StepPlan:
    """The plan of one step from each request's token range in the step
    (`query_start_loc`, [n + 1]), its length after the step (`seq_lens`, [n])
    and its virtual pad count (`num_pad`, [n]; None: L - 1 for every request).

    `last_windows_only` (fast prefill) keeps just the token-decoder rows of
    each request's open window after the step: they make its stored state and
    hold its last token's hidden state (the one vLLM samples from). The other
    prompt positions' outputs are only needed for prompt logprobs."""
    L, R = block_length, prefix_length
    t = _StepTokens.of(query_start_loc, seq_lens, L, num_pad)
    ends = t.j == L - 1
    # an open token of block 0 has no context: no row (its hidden state is 0)
    block_end, open_token = np.flatnonzero(ends), np.flatnonzero(~ends & (t.block > 0))
    back = np.arange(L - 1, -1, -1)  # piece k is L-1-k tokens back
    src_pos = t.positions[block_end, None] - back
    end_req = t.req[block_end]
    pending_token = np.flatnonzero(~ends & (t.block == t.last_block[t.req]))
    # rows: each open token is one (in its block's window); each closed
    # block gives R prefix positions of the next block's window.
    if last_windows_only:
        open_rows = open_token[t.block[open_token] == t.last_block[t.req[open_token]]]
        end_with_rows = np.flatnonzero(t.block[block_end] + 1 == t.last_block[end_req])
    else:
        open_rows, end_with_rows = open_token, np.arange(len(block_end))
    end_rows = block_end[end_with_rows]
    num_open = len(open_rows)
    # which computed context each open row's block reads ("summation" adds
    # its expansion vectors to the inputs): key (request, block it opens)
    key_of = np.int64(t.block.max(initial=0) + 2)
    opened = t.req[end_rows] * key_of + t.block[end_rows] + 1
    wanted = t.req[open_rows] * key_of + t.block[open_rows]
    at = np.minimum(np.searchsorted(opened, wanted), max(len(opened) - 1, 0))
    found = (opened[at] == wanted) if len(opened) else np.zeros(num_open, dtype=bool)
    last = np.flatnonzero(t.block[end_rows] + 1 == t.last_block[t.req[end_rows]])
    return StepPlan(
        num_tokens=len(t.req), block_end=block_end, end_req=end_req,
        end_block=t.block[block_end],
        piece_src_token=np.maximum(block_end[:, None] - back, 0).reshape(-1, L),
        piece_in_step=(src_pos >= t.positions[t.first][end_req, None]).reshape(-1, L),
        piece_is_pad=(src_pos < 0).reshape(-1, L),
        pending_token=pending_token, pending_req=t.req[pending_token],
        pending_idx=t.j[pending_token], open_rows=open_rows, end_with_rows=end_with_rows,
        open_opener=np.where(found, at, -1), addend_end=last, addend_req=t.req[end_rows[last]],
        **_windows(t, open_rows, end_rows, R, L, last_windows_only),
        out_token=np.concatenate([open_rows, end_rows]),
        out_row=np.concatenate([np.arange(num_open),
                                num_open + np.arange(len(end_rows)) * R + R - 1]))


def _windows(t: _StepTokens, open_rows: np.ndarray, end_rows: np.ndarray, R: int, L: int,
             last_windows_only: bool) -> dict[str, np.ndarray]:
    """The token-decoder windows of a step and each row's place in them:
    request r covers blocks first(r) .. last_block(r), or only its last one."""
    S = window_size(L, R)
    b_first = t.block[t.first]
    win_first = t.last_block if last_windows_only else b_first
    n_win = t.last_block - win_first + 1
    win_start = np.cumsum(n_win) - n_win
    win_req = np.repeat(np.arange(len(n_win)), n_win)
    win_block = win_first[win_req] + np.arange(int(n_win.sum())) - win_start[win_req]
    row_req = np.concatenate([t.req[open_rows], np.repeat(t.req[end_rows], R)])
    row_block = np.concatenate([t.block[open_rows], np.repeat(t.block[end_rows] + 1, R)])
    row_pos = np.concatenate([R + t.j[open_rows], np.tile(np.arange(R), len(end_rows))])
    # the first window continues the stored state when the step starts
    # mid-block (not at a request's first token): its positions before the
    # first new one are cached
    j_first = t.j[t.first]
    mid_block = (j_first < L - 1) & (t.positions[t.first] > 0)
    continues = (win_block == b_first[win_req]) & mid_block[win_req]
    win_from_state = continues[:, None] & (np.arange(S) < (R + j_first[win_req])[:, None])
    row_win = win_start[row_req] + row_block - win_first[row_req]
    blank_win, blank_pos = np.nonzero(~win_from_state.reshape(-1, S))
    return dict(row_pos=row_pos, row_win=row_win,
                win_req=win_req, win_from_state=win_from_state.reshape(-1, S),
                blank_cells=np.concatenate([window_cell(blank_win, 0, blank_pos, S),
                                            window_cell(blank_win, 1, blank_pos, S)]),
                row_cell=window_cell(row_win, 0, row_pos, S),
                row_hidden=np.arange(S)[None, :] > row_pos[:, None],
                last_win=win_start + n_win - 1)


def window_cell(window: np.ndarray, kv: int, pos: np.ndarray, S: int) -> np.ndarray:
    """Index of the (K or V, position) cell of a window in a [W * 2 * S, heads
    * head_dim] view of the step's windows (the token decoder's state layout:
    [2, S, heads, head_dim] per window)."""
    return (window * 2 + kv) * S + pos


@dataclass
class DecodePlan:
    """The static layout of a uniform single-token decode step: every array
    has one row per request (B, vLLM's padded batch included), so every shape
    of the forward is a function of B alone. A request's token closes a block
    or not; either way it gets one block-decoder row and R token-decoder rows:
    a closing token's R rows are the next block's prefix positions, any
    other token uses row 0 and its spare rows write to a scratch key column
    (S = R+L-1) that no query sees."""
    closes: np.ndarray  # [B] bool: the token closes a block (its K/V is stored)
    block_pos: np.ndarray  # [B] block index of the token's block (rotary position)
    piece_is_pad: np.ndarray  # [B, L] bool: piece k precedes the sequence
    pending_idx: np.ndarray  # [B] in-block index the token's piece is stored at
    row_pos: np.ndarray  # [B, R] token-decoder position of each row
    kv_col: np.ndarray  # [B, R] window column each row writes K/V to (S: scratch)
    from_state: np.ndarray  # [B, S + 1] bool: window column read from the state
    out_row: np.ndarray  # [B] flat row (b * R + r) holding request b's hidden state
    has_context: np.ndarray  # [B] bool: the token has a prediction (else its hidden is 0)

    @property
    def batch_size(self) -> int:
        return len(self.closes)


def build_decode_plan(seq_lens: np.ndarray, block_length: int, prefix_length: int,
                      num_pad: np.ndarray | None = None) -> DecodePlan:
    """The static plan of a step in which every request has one new token,
    from each request's length after the step (0: a padded request, which
    reads and writes only what nobody reads) and virtual pad count (`num_pad`
    as in `build_step_plan`)."""
    L, R = block_length, prefix_length
    S = window_size(L, R)
    seq = np.asarray(seq_lens, dtype=np.int64)
    B = len(seq)
    pos = seq - 1
    j = index_in_block(pos, L, num_pad)
    block = padded_index(pos, L, num_pad) // L
    closes = (j == L - 1) & (seq > 0)
    # padded requests, and open tokens of block 0 (no context), are neither:
    # all their rows are scratch
    opened = (j != L - 1) & (seq > 0) & (block > 0)
    row_pos = np.where(closes[:, None], np.arange(R), 0)
    row_pos[opened, 0] = R + j[opened]
    kv_col = np.where(closes[:, None], np.arange(R), S)
    kv_col[opened, 0] = R + j[opened]
    from_state = opened[:, None] & (np.arange(S + 1) < np.where(opened, R + j, 0)[:, None])
    return DecodePlan(
        closes=closes, block_pos=np.maximum(block, 0),
        piece_is_pad=(pos[:, None] - np.arange(L - 1, -1, -1)) < 0,
        pending_idx=np.minimum(j, max(L - 2, 0)), row_pos=row_pos, kv_col=kv_col,
        from_state=from_state,
        out_row=np.arange(B) * R + np.where(closes, R - 1, 0), has_context=closes | opened)


def worst_case_plan(num_tokens: int, max_num_seqs: int, block_length: int,
                    prefix_length: int, last_windows_only: bool = False) -> StepPlan:
    """The plan of the heaviest step `num_tokens` tokens can make: as many
    requests as the engine admits, each prefilling from position 0, so the
    most blocks close (every L-th token of each, plus each one's first) and
    the token decoder gets the most rows. vLLM's profile run measures it."""
    n = max(1, min(max_num_seqs, num_tokens))
    qlen = np.full(n, num_tokens // n, dtype=np.int64)
    qlen[:num_tokens % n] += 1
    qsl = np.concatenate([[0], np.cumsum(qlen)])
    return build_step_plan(qsl, qlen, block_length, prefix_length, last_windows_only)


class DecodePlanBuffer:
    """Persistent home of decode plans on the device: each field has a fixed
    region sized for `max_batch` requests, so a plan of B requests is always
    read from the same addresses (what a CUDA-graph replay needs). Fields stay
    int64 (the forward compares bool fields with 0 inside the graph)."""

    def __init__(self, block_length: int, prefix_length: int, max_batch: int,
                 device: torch.device) -> None:
        # each field's width per request, as build_decode_plan makes it
        one = build_decode_plan(np.ones(1), block_length, prefix_length)
        self.widths = {f.name: getattr(one, f.name).size for f in fields(DecodePlan)}
        self.max_batch = max_batch
        self.offsets, at = {}, 0
        for name, width in self.widths.items():
            self.offsets[name] = at
            at += max_batch * width
        self.device = device
        self.device_buf = torch.zeros(at, dtype=torch.int64, device=device)
        on_host = device.type == "cpu"
        self.host_buf = self.device_buf if on_host else torch.zeros(
            at, dtype=torch.int64, pin_memory=device.type == "cuda")

    def upload(self, plan: DecodePlan) -> DecodePlan:
        B = plan.batch_size
        if B > self.max_batch:
            raise ValueError(f"decode batch {B} exceeds the plan buffer ({self.max_batch})")
        views = {}
        for name, width in self.widths.items():
            at = self.offsets[name]
            region = slice(at, at + B * width)
            host = getattr(plan, name)
            self.host_buf[region] = torch.from_numpy(host.astype(np.int64).ravel())
            views[name] = self.device_buf[region].view(host.shape)
        if self.host_buf is not self.device_buf:
            self.device_buf.copy_(self.host_buf, non_blocking=True)
        return DecodePlan(**views)


def is_uniform_decode(query_start_loc: np.ndarray) -> bool:
    """Whether every request of the step has at most one new token (vLLM's
    padded requests have none) and at least one has one."""
    qlen = np.diff(np.asarray(query_start_loc))
    return len(qlen) > 0 and int(qlen.max()) == 1 and int(qlen.min()) >= 0


def device_step_plan(query_start_loc: torch.Tensor, seq_lens: torch.Tensor,
                     block_length: int, prefix_length: int, last_windows_only: bool,
                     device: torch.device) -> StepPlan:
    """The step's plan on `device`, from vLLM's host-side metadata."""
    return build_step_plan(query_start_loc.numpy(), seq_lens.numpy(), block_length,
                           prefix_length, last_windows_only).to(device)


@dataclass
class BlockQueries:
    """The block decoder's share of a step, derived from its plan: the
    queries of its paged attention (one per block row, grouped by request in
    the plan's order) and the block each one writes."""
    query_start_loc: np.ndarray  # [n + 1] int32: each request's block queries
    seq_lens: np.ndarray  # [n] int32: each request's complete blocks after the step
    request: np.ndarray  # [E] request of each block row
    block: np.ndarray  # [E] block index whose K/V the row writes
    writes: np.ndarray  # [E] bool: the row stores K/V (the static step runs rows that do not)

    @property
    def max_query_len(self) -> int:
        return int(np.diff(self.query_start_loc).max(initial=0))


def step_block_queries(plan: StepPlan, seq_lens: np.ndarray, block_length: int,
                       num_pad: np.ndarray | None = None) -> BlockQueries:
    """The exact step: one query per closing token (`plan.block_end`, token
    order, hence grouped by request)."""
    n = len(seq_lens)
    per_request = np.bincount(plan.end_req, minlength=n)
    query_start_loc = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(per_request, out=query_start_loc[1:])
    return BlockQueries(query_start_loc, _blocks_after(seq_lens, block_length, num_pad),
                        plan.end_req, plan.end_block, np.ones(len(plan.end_req), dtype=bool))


def decode_block_queries(plan: DecodePlan, seq_lens: np.ndarray, block_length: int,
                         num_pad: np.ndarray | None = None) -> BlockQueries:
    """The static decode step: one query per request (padded ones included,
    which have no blocks); only closing tokens write."""
    B = plan.batch_size
    return BlockQueries(np.arange(B + 1, dtype=np.int32),
                        _blocks_after(seq_lens, block_length, num_pad), np.arange(B),
                        np.where(plan.closes, plan.block_pos, 0), plan.closes)


def _blocks_after(seq_lens: np.ndarray, block_length: int,
                  num_pad: np.ndarray | None) -> np.ndarray:
    """Each request's complete blocks; a padded request (length 0) has none."""
    seq = np.asarray(seq_lens, dtype=np.int64)
    return np.where(seq > 0, num_complete_blocks(seq, block_length, num_pad), 0).astype(np.int32)
