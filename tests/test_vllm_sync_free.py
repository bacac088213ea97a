"""The model's forward never waits on the device: its step plan comes from the
host (vllm_block/step_plan.py), so over a mixed workload (one-token prompts,
prompts of several lengths in chunks, decode) no op that reads device data
back to the host runs inside it: no `nonzero`, no `.item()` / `int()` / `bool()`
(`_local_scalar_dense`), no `masked_select`, no boolean-mask indexing, no
`repeat_interleave` without `output_size`."""
from __future__ import annotations

import pytest

from engine import check_against_cases, engine, greedy_params, token_prompts
from helpers import greedy_cases
from test_vllm_scheduling import random_prompts

pytestmark = pytest.mark.engine  # starts vLLM engines (make test-fast skips it)

CASES = greedy_cases()
NEW = len(CASES[0]["greedy"])


def watch_forward(worker) -> None:
    """Run the model's forward under a dispatch mode that records host syncs."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    aten = torch.ops.aten
    # (int() and .item() dispatch aten.item under inference mode, bool() is_nonzero)
    syncing = {aten.nonzero, aten._local_scalar_dense, aten.item, aten.is_nonzero,
               aten.masked_select}
    indexing = {aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_}
    model = worker.model_runner.model
    seen: list[str] = []

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            op = func.overloadpacket
            if op in syncing:
                seen.append(str(op))
            elif op is aten.repeat_interleave and kwargs.get("output_size") is None:
                seen.append("aten.repeat_interleave without output_size")
            elif op in indexing and any(
                    isinstance(i, torch.Tensor) and i.dtype == torch.bool
                    for i in (args[1] if len(args) > 1 else ())):
                seen.append(f"{op} with a boolean mask")
            return func(*args, **kwargs)

    forward = model.forward
    calls = []

    def watched(*args, **kwargs):
        calls.append(1)
        with Watch():
            return forward(*args, **kwargs)

    model.forward = watched
    model.sync_watch = seen, calls


def watch_report(worker) -> tuple[list[str], int]:
    seen, calls = worker.model_runner.model.sync_watch
    return sorted(set(seen)), len(calls)


@pytest.mark.parametrize("fast", [False, True], ids=["all-rows", "fast-prefill"])
def test_forward_has_no_host_sync_over_a_mixed_workload(tiny_b4_dir, monkeypatch, fast):
    monkeypatch.setenv("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
    cases = [{**c, "prompt_logprobs": None} for c in CASES] if fast else CASES
    prompts = random_prompts(31, [1, 1, 2, 3, 5, 37, 130])
    with engine(tiny_b4_dir, max_num_batched_tokens=16, max_num_seqs=8,
                enable_prefix_caching=False, kv_sharing_fast_prefill=fast) as llm:
        llm.collective_rpc(watch_forward)
        outputs = llm.generate(token_prompts([c["prompt"] for c in CASES] + prompts),
                               greedy_params(NEW, prompt_logprobs=None if fast else 1))
        ((seen, calls),) = llm.collective_rpc(watch_report)
    check_against_cases(outputs[:len(CASES)], cases)
    assert calls > 20, calls  # chunked prefills mixed with decodes, step by step
    assert seen == [], f"host syncs inside forward: {seen}"
