"""The model hands vLLM's sampler float32 logits in memory kept from step to
step, the LM head run in row chunks on CPU (vllm_block/logits.py): the values
are the LM head's output converted, as the sampler would convert it."""
from __future__ import annotations

import torch

from vllm_block.logits import CHUNK_BYTES, FloatLogits

VOCAB = 11


class LMHead:
    """A bf16 LM head that records the rows of each call."""

    def __init__(self, dtype=torch.bfloat16, gathered: bool = True) -> None:
        self.weight = torch.randn(VOCAB, 8).to(dtype)
        self.calls: list[int] = []
        self.gathered = gathered

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor | None:
        self.calls.append(len(hidden))
        return hidden @ self.weight.t() if self.gathered else None


def hidden(rows: int, dtype=torch.bfloat16) -> torch.Tensor:
    return torch.randn(rows, 8).to(dtype)


def test_bf16_logits_become_the_same_values_in_float32():
    head, h = LMHead(), hidden(5)
    out = FloatLogits(max_rows=8, row_bytes=2 * VOCAB, device_type="cpu")(head, h)
    assert out.dtype == torch.float32 and torch.equal(out, (h @ head.weight.t()).float())


def test_on_cpu_rows_are_chunked_below_the_mmap_threshold_with_the_same_values():
    head, h = LMHead(), hidden(10)
    row_bytes = CHUNK_BYTES // 4  # 4 rows a chunk
    out = FloatLogits(max_rows=16, row_bytes=row_bytes, device_type="cpu")(head, h)
    assert head.calls == [4, 4, 2]
    assert torch.equal(out, (h @ head.weight.t()).float())


def test_on_gpu_the_lm_head_runs_once():
    head = LMHead()
    FloatLogits(max_rows=16, row_bytes=CHUNK_BYTES // 4, device_type="cuda")(head, hidden(10))
    assert head.calls == [10]


def test_steps_of_up_to_max_rows_reuse_one_buffer():
    head = LMHead()
    convert = FloatLogits(max_rows=8, row_bytes=2 * VOCAB, device_type="cpu")
    first = convert(head, hidden(8))
    h = hidden(3)
    second = convert(head, h)
    assert second.data_ptr() == first.data_ptr() and second.shape == (3, VOCAB)
    assert torch.equal(second, (h @ head.weight.t()).float())


def test_more_rows_than_max_rows_get_a_fresh_tensor():
    head, h = LMHead(), hidden(4)
    convert = FloatLogits(max_rows=2, row_bytes=2 * VOCAB, device_type="cpu")
    out = convert(head, h)
    assert torch.equal(out, (h @ head.weight.t()).float()) and convert.buffer is None


def test_float32_logits_of_one_chunk_pass_through_untouched():
    head = LMHead(dtype=torch.float32)
    returned = []
    out = FloatLogits(max_rows=8, row_bytes=4 * VOCAB, device_type="cpu")(
        lambda x: returned.append(head(x)) or returned[-1], hidden(3, torch.float32))
    assert out is returned[0]


def test_a_rank_without_the_gathered_logits_gets_none():
    convert = FloatLogits(max_rows=8, row_bytes=CHUNK_BYTES // 2, device_type="cpu")
    assert convert(LMHead(gathered=False), hidden(5)) is None
