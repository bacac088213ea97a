"""The static decode plan (vllm_block/step_plan.py: build_decode_plan) lays out
a uniform single-token decode step in fixed shapes, and agrees with the exact
step plan on everything that is not padding: which tokens close blocks, their
block indices and pad pieces, each request's output position and what its
window reads from the stored state. Also: the persistent upload buffer, the
profile run's worst-case plan, and the step-mode decision. No engine."""
from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from vllm_block.step_mode import MAX_CAPTURED_ROWS, StepMode, configure_engine
from vllm_block.step_plan import (DecodePlanBuffer, build_decode_plan, build_step_plan,
                                  is_uniform_decode, worst_case_plan)


def exact_plan(seq_lens: list[int], L: int, R: int, fast: bool = False, num_pad=None):
    return build_step_plan(np.arange(len(seq_lens) + 1), np.array(seq_lens), L, R, fast,
                           num_pad)


def check_agrees_with_exact_plan(seq_lens: list[int], L: int, R: int, num_pad=None) -> None:
    S = R + L - 1
    plan = build_decode_plan(np.array(seq_lens), L, R, num_pad)
    exact = exact_plan(seq_lens, L, R, num_pad=num_pad)
    B = len(seq_lens)
    assert plan.batch_size == B
    for field, width in (("row_pos", R), ("kv_col", R), ("from_state", S + 1),
                         ("piece_is_pad", L)):
        assert getattr(plan, field).shape == (B, width), field
    assert list(np.flatnonzero(plan.closes)) == list(exact.end_req)
    assert list(plan.block_pos[plan.closes]) == list(exact.end_block)
    assert np.array_equal(plan.piece_is_pad[plan.closes], exact.piece_is_pad)
    # the row holding each request's hidden state sits at the same window position
    # (a token without context, in block 0, has none: zero logits)
    exact_out = dict(zip(exact.out_token, exact.row_pos[exact.out_row]))
    assert list(np.flatnonzero(plan.has_context)) == sorted(exact_out)
    assert [plan.row_pos.flat[plan.out_row[b]] for b in exact_out] == list(exact_out.values())
    # each request's window reads the same stored columns, and writes the new
    # rows where the exact plan writes them (spare rows: the scratch column)
    # (a window of block 0 without context is never read: not compared)
    for b in np.flatnonzero(plan.has_context):
        win = exact.last_win[b]
        assert np.array_equal(plan.from_state[b, :S], exact.win_from_state[win]), b
        assert not plan.from_state[b, S]
        rows = np.flatnonzero(exact.row_win == win)
        written = sorted(exact.row_pos[rows])
        used = sorted(plan.kv_col[b][plan.kv_col[b] < S])
        assert used == written, b
    # pending pieces: an open block's token is stored at its in-block index
    pend = dict(zip(exact.pending_req, exact.pending_idx))
    for b in np.flatnonzero(~plan.closes):
        assert plan.pending_idx[b] == pend[b]


@pytest.mark.parametrize("seed", range(60))
def test_decode_plan_agrees_with_the_exact_plan(seed):
    rng = random.Random(seed)
    L, R = rng.randint(1, 8), rng.randint(1, 4)
    # one-token prompts (length 1) and decodes at every block phase
    seq_lens = [rng.choice([1, rng.randint(2, 400)]) for _ in range(rng.randint(1, 70))]
    check_agrees_with_exact_plan(seq_lens, L, R)


@pytest.mark.parametrize("seed", range(30))
def test_decode_plan_agrees_with_the_exact_plan_per_request_pads(seed):
    """A "nopad" model's requests: 0 pads, or L - T for a short prompt; a
    single-token step of a long prompt's first block has no context."""
    rng = random.Random(seed)
    L, R = rng.randint(2, 8), rng.randint(1, 4)
    seq_lens = [rng.choice([1, 2, rng.randint(2, 400)]) for _ in range(rng.randint(1, 70))]
    num_pad = np.array([rng.randrange(L) for _ in seq_lens])
    check_agrees_with_exact_plan(seq_lens, L, R, num_pad)


@pytest.mark.parametrize("L,R", [(1, 1), (4, 2), (8, 4)])
def test_every_request_closing_a_block_in_the_same_step(L, R):
    seq_lens = [1 + L * k for k in range(1, 9)]  # position L*k closes a block
    plan = build_decode_plan(np.array(seq_lens), L, R)
    assert plan.closes.all()
    assert list(plan.out_row) == [b * R + R - 1 for b in range(len(seq_lens))]
    check_agrees_with_exact_plan(seq_lens, L, R)


def test_padded_requests_read_nothing_and_close_nothing():
    """vLLM pads a captured decode batch with requests of length 0."""
    L, R = 4, 2
    plan = build_decode_plan(np.array([9, 6, 0, 0]), L, R)
    assert list(plan.closes) == [True, False, False, False]
    assert not plan.from_state[2:].any()
    assert (plan.block_pos >= 0).all() and (plan.pending_idx >= 0).all()
    assert (plan.kv_col[2:, 1:] == R + L - 1).all()  # spare rows: scratch column


def test_uniform_decode_means_one_token_per_request_padding_allowed():
    assert is_uniform_decode(np.array([0, 1, 2, 3]))
    assert is_uniform_decode(np.array([0, 1, 2, 2, 2]))  # two padded requests
    assert not is_uniform_decode(np.array([0, 1, 3]))
    assert not is_uniform_decode(np.array([0]))


@pytest.mark.parametrize("L,R", [(4, 2), (1, 1)])
def test_plan_buffer_keeps_every_field_at_fixed_addresses(L, R):
    buf = DecodePlanBuffer(L, R, max_batch=16, device=torch.device("cpu"))
    first = buf.upload(build_decode_plan(np.array([5, 9, 2, 1]), L, R))
    plan = build_decode_plan(np.array([7, 3, 12, 40]), L, R)
    again = buf.upload(plan)
    for name in buf.widths:
        a, b = getattr(first, name), getattr(again, name)
        assert a.data_ptr() == b.data_ptr(), name
        assert b.shape == getattr(plan, name).shape, name  # [B, 1] stays 2-D
        assert np.array_equal(b.numpy(), getattr(plan, name).astype(np.int64)), name
    with pytest.raises(ValueError, match="exceeds"):
        buf.upload(build_decode_plan(np.arange(17) + 1, L, R))


@pytest.mark.parametrize("fast", [False, True], ids=["all-rows", "fast-prefill"])
def test_worst_case_plan_closes_the_most_blocks_the_budget_allows(fast):
    L, R, T, seqs = 4, 2, 2048, 256
    plan = worst_case_plan(T, seqs, L, R, fast)
    assert plan.num_tokens == T
    # 256 prompts of 8 tokens from position 0: positions 0 and 4 close blocks
    assert plan.num_blocks == 2 * seqs
    rows = len(plan.row_pos)
    if fast:  # each request's open window only: the R prefix rows + 3 tokens
        assert rows == seqs * (R + 3)
    else:  # every open token is a row, every closed block R more
        assert rows == (T - 2 * seqs) + R * 2 * seqs


@pytest.mark.parametrize("choice,on_cuda,graphs,compiled,expected", [
    ("auto", False, False, False, (False, False)),  # CPU eager: exact step
    ("auto", False, False, True, (False, False)),  # CPU default: exact measured faster
    ("static", False, False, False, (True, False)),
    ("static", False, False, True, (True, True)),
    ("auto", True, True, False, (True, False)),  # CUDA graphs replay the static step
    ("auto", True, False, False, (False, False)),  # CUDA eager
    ("exact", True, True, False, (False, False)),
])
def test_step_mode_decision(choice, on_cuda, graphs, compiled, expected):
    mode = StepMode.resolve(choice, on_cuda, graphs, compiled)
    assert (mode.static_decode, mode.compile_decode) == expected


def config_before_defaults(enforce_eager=False, mode=None, cudagraph_mode=None, R=2,
                           max_num_seqs=1024, extra=None):
    """The fields the engine-config hook reads, as vLLM has them before it
    fills in its defaults (None: not set by the user)."""
    return SimpleNamespace(
        additional_config=extra or {},
        model_config=SimpleNamespace(enforce_eager=enforce_eager,
                                     hf_config=SimpleNamespace(prefix_length=R)),
        compilation_config=SimpleNamespace(mode=mode, cudagraph_mode=cudagraph_mode,
                                           max_cudagraph_capture_size=None,
                                           cudagraph_capture_sizes=None),
        scheduler_config=SimpleNamespace(max_num_seqs=max_num_seqs))


def test_cuda_default_is_full_decode_only_graphs_capped_by_rows():
    from vllm.config import CompilationMode, CUDAGraphMode

    cfg = config_before_defaults(R=2)
    configure_engine(cfg, on_cuda=True)
    cc = cfg.compilation_config
    assert cc.cudagraph_mode == CUDAGraphMode.FULL_DECODE_ONLY
    assert cc.mode == CompilationMode.NONE
    assert cc.max_cudagraph_capture_size == MAX_CAPTURED_ROWS // 2
    assert not cfg.model_config.enforce_eager


@pytest.mark.parametrize("user", [dict(enforce_eager=True), dict(mode=3),
                                  dict(cudagraph_mode="PIECEWISE")],
                         ids=["enforce-eager", "compilation-mode", "cudagraph-mode"])
def test_cuda_respects_what_the_user_set(user):
    cfg = config_before_defaults(**user)
    before = vars(cfg.compilation_config).copy()
    configure_engine(cfg, on_cuda=True)
    assert vars(cfg.compilation_config) == before


def test_cpu_engine_config_is_left_to_vllm():
    cfg = config_before_defaults()
    configure_engine(cfg, on_cuda=False)
    assert cfg.compilation_config.cudagraph_mode is None
    assert not cfg.model_config.enforce_eager


def test_unknown_decode_choice_is_refused_by_name():
    with pytest.raises(ValueError, match="block_transformer_decode='fastest'"):
        configure_engine(config_before_defaults(extra={"block_transformer_decode": "fastest"}),
                         on_cuda=False)
