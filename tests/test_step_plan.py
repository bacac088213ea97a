"""The step plan built on the host from vLLM's CPU-side metadata (token counts
and sequence lengths) equals the plan the model used to build on the device
from the step's positions (tests/step_plan_oracle.py), on random batches of
mixed phases, without an engine."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from step_plan_oracle import DeviceStepPlan
from vllm_block.step_plan import build_step_plan, device_step_plan

FIELDS = ("block_end", "end_req", "end_block", "piece_in_step", "piece_is_pad",
          "pending_token", "pending_req", "pending_idx", "open_rows", "row_pos", "row_win",
          "win_req", "win_from_state", "last_win", "out_token", "out_row")


def random_batch(rng: random.Random, kind: str) -> tuple[list[int], list[int]]:
    """(tokens already computed, tokens scheduled now) per request."""
    n = rng.randint(1, 12)
    if kind == "decode":  # every request has one new token
        return [rng.randint(1, 300) for _ in range(n)], [1] * n
    if kind == "one_token_prompts":
        return [0] * n, [1] * n
    batch = []
    for _ in range(n):
        phase = rng.choice(["decode", "prefill", "chunk", "one_token"])
        batch.append({"decode": (rng.randint(1, 300), 1),
                      "prefill": (0, rng.randint(1, 80)),
                      "chunk": (rng.randint(1, 300), rng.randint(2, 80)),
                      "one_token": (0, 1)}[phase])
    return [c for c, _ in batch], [q for _, q in batch]


def oracle(computed: list[int], scheduled: list[int], L: int, R: int, fast: bool):
    positions = torch.cat([torch.arange(c, c + q) for c, q in zip(computed, scheduled)])
    qsl = torch.tensor([0, *np.cumsum(scheduled)])
    return DeviceStepPlan.build(positions, qsl, L, R, last_windows_only=fast)


def host(computed: list[int], scheduled: list[int], L: int, R: int, fast: bool):
    qsl = np.array([0, *np.cumsum(scheduled)])
    return build_step_plan(qsl, np.add(computed, scheduled), L, R, last_windows_only=fast)


def assert_same_plan(got, expected) -> None:
    for name in FIELDS:
        want = getattr(expected, name).numpy()
        assert np.array_equal(getattr(got, name), want.reshape(getattr(got, name).shape)), name
    assert np.array_equal(got.piece_src_token, expected.piece_src_token.clamp(min=0).numpy())
    ends = expected.block_end.numel()
    with_rows = (np.arange(ends) if expected.end_has_rows is None
                 else expected.end_has_rows.nonzero().squeeze(1).numpy())
    assert np.array_equal(got.end_with_rows, with_rows)


@pytest.mark.parametrize("fast", [False, True], ids=["all-rows", "fast-prefill"])
@pytest.mark.parametrize("kind", ["mixed", "decode", "one_token_prompts"])
@pytest.mark.parametrize("seed", range(40))
def test_host_plan_equals_the_device_plan(seed, kind, fast):
    rng = random.Random(seed)
    L, R = rng.randint(1, 8), rng.randint(1, 4)
    computed, scheduled = random_batch(rng, kind)
    plan = host(computed, scheduled, L, R, fast)
    assert plan.num_tokens == sum(scheduled)
    assert_same_plan(plan, oracle(computed, scheduled, L, R, fast))


@pytest.mark.parametrize("fast", [False, True], ids=["all-rows", "fast-prefill"])
def test_every_request_closing_a_block_in_the_same_step(fast):
    L, R = 4, 2
    computed = [4, 8, 12, 104]  # the next token of each closes a block (p % L == 0)
    plan = host(computed, [1] * 4, L, R, fast)
    assert plan.num_blocks == 4 and plan.all_ends_have_rows
    assert list(plan.end_block) == [1, 2, 3, 26]
    assert_same_plan(plan, oracle(computed, [1] * 4, L, R, fast))


def test_decode_step_sizes_are_host_ints():
    plan = host([5, 9, 2], [1, 1, 1], 4, 2, False)
    assert isinstance(plan.num_tokens, int) and plan.num_tokens == 3
    assert isinstance(plan.num_blocks, int)


def test_device_plan_is_one_upload_of_the_host_plan():
    qsl, seq = torch.tensor([0, 3, 4, 9], dtype=torch.int32), torch.tensor([3, 50, 20])
    expected = build_step_plan(qsl.numpy(), seq.numpy(), 4, 2)
    plan = device_step_plan(qsl, seq, 4, 2, False, torch.device("cpu"))
    assert plan.num_tokens == 9
    for name in FIELDS + ("piece_src_token", "end_with_rows"):
        t = getattr(plan, name)
        assert isinstance(t, torch.Tensor) and np.array_equal(t.numpy(), getattr(expected, name))
        assert t.dtype == (torch.bool if getattr(expected, name).dtype == np.bool_
                           else torch.int64)
    # every field is a view of the same packed buffer
    assert len({t.untyped_storage().data_ptr() for t in
                (plan.block_end, plan.row_pos, plan.out_row)}) == 1
