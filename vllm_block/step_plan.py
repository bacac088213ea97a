"""The step plan: which of a step's tokens close blocks, which token-decoder
rows and windows it computes, and where each output comes from.

It depends only on each request's scheduled token count and sequence length,
which vLLM keeps on the host (`query_start_loc_cpu`, `seq_lens_cpu_upper_bound`;
exact here because speculative decoding is refused). So the plan is built on
the host with numpy, uploaded in one copy, and the model's forward reads index
tensors and host ints: no device->host sync, no data-dependent branch.

Alignment (see `config.py`): token p has in-block index (p + L - 1) % L and
closes a block when that is L - 1; its hidden state is then the output of
the next block's last prefix position.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, fields

import numpy as np
import torch

from .config import index_in_block, padded_index


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
    row_pos: np.ndarray  # [M] token-decoder position of each row (0..R+L-2)
    row_win: np.ndarray  # [M] window of each row
    win_req: np.ndarray  # [W]
    win_from_state: np.ndarray  # [W, S] bool: key comes from the stored state
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
        packed = torch.from_numpy(flat)
        if device.type == "cuda":
            packed = packed.pin_memory().to(device, non_blocking=True)
        else:
            packed = packed.to(device)
        out, at = {}, 0
        for a in arrays:
            host = getattr(self, a)
            t = packed[at:at + host.size].view(host.shape)
            out[a] = t.bool() if host.dtype == np.bool_ else t
            at += host.size
        return StepPlan(num_tokens=self.num_tokens, **out)


def build_step_plan(query_start_loc: np.ndarray, seq_lens: np.ndarray, block_length: int,
                    prefix_length: int, last_windows_only: bool = False) -> StepPlan:
    """The plan of one step from each request's token range in the step
    (`query_start_loc`, [n + 1]) and its length after the step (`seq_lens`, [n]).

    `last_windows_only` (fast prefill) keeps just the token-decoder rows of
    each request's open window after the step: they make its stored state and
    hold its last token's hidden state (the one vLLM samples from). The other
    prompt positions' outputs are only needed for prompt logprobs."""
    L, R = block_length, prefix_length
    S = R + L - 1
    qsl = np.asarray(query_start_loc, dtype=np.int64)
    seq = np.asarray(seq_lens, dtype=np.int64)
    n, T = len(qsl) - 1, int(qsl[-1])
    qlen = np.diff(qsl)
    req = np.repeat(np.arange(n), qlen)
    first, last = qsl[:-1], qsl[1:] - 1
    positions = (seq - qlen)[req] + np.arange(T) - first[req]
    j = index_in_block(positions, L)
    block = padded_index(positions, L) // L
    ends = j == L - 1

    block_end = np.flatnonzero(ends)
    open_token = np.flatnonzero(~ends)
    back = np.arange(L - 1, -1, -1)  # piece k is L-1-k tokens back
    src_pos = positions[block_end, None] - back
    end_req = req[block_end]
    piece_in_step = src_pos >= positions[first][end_req, None]

    # the open block after the step (a fresh one if the last token closed one)
    last_block = block[last] + ends[last]
    pending_token = np.flatnonzero(~ends & (block == last_block[req]))

    # rows: each open token is one (in its block's window); each closed
    # block gives R prefix positions of the next block's window.
    if last_windows_only:
        open_rows = open_token[block[open_token] == last_block[req[open_token]]]
        end_with_rows = np.flatnonzero(block[block_end] + 1 == last_block[end_req])
    else:
        open_rows, end_with_rows = open_token, np.arange(len(block_end))
    end_rows = block_end[end_with_rows]

    # windows: request r covers blocks b_first(r) .. last_block(r), or only its last one
    b_first = block[first]
    win_first = last_block if last_windows_only else b_first
    n_win = last_block - win_first + 1
    win_start = np.cumsum(n_win) - n_win
    W = int(n_win.sum())
    win_req = np.repeat(np.arange(n), n_win)
    win_block = win_first[win_req] + np.arange(W) - win_start[win_req]
    row_req = np.concatenate([req[open_rows], np.repeat(req[end_rows], R)])
    row_block = np.concatenate([block[open_rows], np.repeat(block[end_rows] + 1, R)])
    row_pos = np.concatenate([R + j[open_rows], np.tile(np.arange(R), len(end_rows))])
    row_win = win_start[row_req] + row_block - win_first[row_req]
    # the first window continues the stored state when the step starts
    # mid-block: its positions before the first new one are cached
    j_first = j[first]
    continues = (win_block == b_first[win_req]) & (j_first[win_req] < L - 1)
    win_from_state = continues[:, None] & (np.arange(S) < (R + j_first[win_req])[:, None])

    M_open = len(open_rows)
    return StepPlan(
        num_tokens=T, block_end=block_end, end_req=end_req, end_block=block[block_end],
        piece_src_token=np.maximum(block_end[:, None] - back, 0).reshape(-1, L),
        piece_in_step=piece_in_step.reshape(-1, L), piece_is_pad=(src_pos < 0).reshape(-1, L),
        pending_token=pending_token, pending_req=req[pending_token],
        pending_idx=j[pending_token], open_rows=open_rows, end_with_rows=end_with_rows,
        row_pos=row_pos, row_win=row_win, win_req=win_req,
        win_from_state=win_from_state.reshape(-1, S), last_win=win_start + n_win - 1,
        out_token=np.concatenate([open_rows, end_rows]),
        out_row=np.concatenate([np.arange(M_open), M_open + np.arange(len(end_rows)) * R + R - 1]))


@functools.lru_cache(maxsize=1)
def _cached(qsl: bytes, seq: bytes, block_length: int, prefix_length: int,
            last_windows_only: bool, device: torch.device) -> StepPlan:
    return build_step_plan(np.frombuffer(qsl, np.int64), np.frombuffer(seq, np.int64),
                           block_length, prefix_length, last_windows_only).to(device)


def device_step_plan(query_start_loc: torch.Tensor, seq_lens: torch.Tensor,
                     block_length: int, prefix_length: int, last_windows_only: bool,
                     device: torch.device) -> StepPlan:
    """The step's plan on `device`, from vLLM's host-side metadata. Built once
    per step: every token-decoder layer's metadata builder asks for it."""
    qsl = query_start_loc.numpy().astype(np.int64).tobytes()
    seq = seq_lens.numpy().astype(np.int64).tobytes()
    return _cached(qsl, seq, block_length, prefix_length, last_windows_only, device)
