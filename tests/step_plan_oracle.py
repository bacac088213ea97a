"""The step plan as the model built it on the device before it moved to the
host (`vllm_block/step_plan.py`): torch ops on the step's positions, with
`nonzero` and data-dependent sizes. Kept as the oracle the host plan is
checked against (tests/test_step_plan.py); it ran every CI test until then."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from vllm_block.config import index_in_block, padded_index


@dataclass
class DeviceStepPlan:
    """Index tensors that map this step's tokens to blocks, rows and windows."""
    block_end: torch.Tensor  # [E] tokens that close a block
    end_req: torch.Tensor  # [E] their requests
    end_block: torch.Tensor  # [E] block index each closes
    piece_src_token: torch.Tensor  # [E, L] step token holding piece k (when in step)
    piece_in_step: torch.Tensor  # [E, L]
    piece_is_pad: torch.Tensor  # [E, L]
    pending_token: torch.Tensor  # tokens of each request's open block after the step
    pending_req: torch.Tensor
    pending_idx: torch.Tensor  # their in-block index
    open_rows: torch.Tensor  # [M_open] open-block tokens fed to the token decoder
    end_has_rows: torch.Tensor | None  # [E] bool: its R prefix rows are computed (None: all)
    row_pos: torch.Tensor  # [M] token-decoder position of each row (0..R+L-2)
    row_win: torch.Tensor  # [M] window of each row
    win_req: torch.Tensor  # [W]
    win_from_state: torch.Tensor  # [W, S] key comes from the stored state
    last_win: torch.Tensor  # [n] each request's open window after the step
    out_token: torch.Tensor  # tokens whose hidden state this step computes
    out_row: torch.Tensor  # the row holding each one's hidden state

    @classmethod
    def build(cls, positions: torch.Tensor, query_start_loc: torch.Tensor,
              block_length: int, prefix_length: int,
              last_windows_only: bool = False) -> "DeviceStepPlan":
        """`last_windows_only` keeps just the token-decoder rows of each
        request's open window after the step: they make its stored state and
        hold its last token's hidden state (the one vLLM samples from). The
        other prompt positions' outputs are only needed for prompt logprobs."""
        L, R = block_length, prefix_length
        S = R + L - 1
        dev = positions.device
        T, n = positions.numel(), query_start_loc.numel() - 1
        qlen = query_start_loc[1:] - query_start_loc[:-1]
        req = torch.repeat_interleave(torch.arange(n, device=dev), qlen, output_size=T)
        j = index_in_block(positions, L)
        block = padded_index(positions, L) // L
        ends = j == L - 1
        first, last = query_start_loc[:-1], query_start_loc[1:] - 1
        first_pos = positions[first]

        block_end = ends.nonzero().squeeze(1)
        open_token = (~ends).nonzero().squeeze(1)
        back = torch.arange(L - 1, -1, -1, device=dev)  # piece k is L-1-k tokens back
        src_pos = positions[block_end, None] - back
        end_req = req[block_end]
        piece_in_step = src_pos >= first_pos[end_req, None]
        piece_is_pad = src_pos < 0

        # the open block after the step (a fresh one if the last token closed one)
        last_block = block[last] + ends[last].long()
        pend = ~ends & (block == last_block[req])
        pending_token = pend.nonzero().squeeze(1)

        # rows: each open token is one (in its block's window); each closed
        # block gives R prefix positions of the next block's window.
        if last_windows_only:
            open_rows = open_token[block[open_token] == last_block[req[open_token]]]
            end_has_rows = block[block_end] + 1 == last_block[end_req]
            end_rows = block_end[end_has_rows]
        else:
            open_rows, end_has_rows, end_rows = open_token, None, block_end

        # windows: request r covers blocks b_first(r) .. last_block(r), or
        # only its last one
        b_first = block[first]
        win_first = last_block if last_windows_only else b_first
        n_win = last_block - win_first + 1
        win_start = torch.cumsum(n_win, 0) - n_win
        W = int(n_win.sum())
        win_req = torch.repeat_interleave(torch.arange(n, device=dev), n_win, output_size=W)
        win_block = win_first[win_req] + torch.arange(W, device=dev) - win_start[win_req]
        row_req = torch.cat([req[open_rows], req[end_rows].repeat_interleave(R)])
        row_block = torch.cat([block[open_rows], (block[end_rows] + 1).repeat_interleave(R)])
        row_pos = torch.cat([R + j[open_rows], torch.arange(R, device=dev).repeat(len(end_rows))])
        row_win = win_start[row_req] + row_block - win_first[row_req]
        # the first window continues the stored state when the step starts
        # mid-block: its positions before the first new one are cached
        j_first = j[first]
        continues = (win_block == b_first[win_req]) & (j_first[win_req] < L - 1)
        first_new = R + j_first[win_req]
        win_from_state = continues[:, None] & (torch.arange(S, device=dev) < first_new[:, None])

        M_open = open_rows.numel()
        out_token = torch.cat([open_rows, end_rows])
        out_row = torch.cat([torch.arange(M_open, device=dev),
                             M_open + torch.arange(end_rows.numel(), device=dev) * R + R - 1])
        return cls(block_end=block_end, end_req=end_req, end_block=block[block_end],
                   piece_src_token=block_end[:, None] - back, piece_in_step=piece_in_step,
                   piece_is_pad=piece_is_pad, pending_token=pending_token,
                   pending_req=req[pending_token], pending_idx=j[pending_token],
                   open_rows=open_rows, end_has_rows=end_has_rows, row_pos=row_pos,
                   row_win=row_win, win_req=win_req, win_from_state=win_from_state,
                   last_win=win_start + n_win - 1, out_token=out_token, out_row=out_row)
