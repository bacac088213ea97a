"""The model hands vLLM's sampler float32 logits from a buffer kept from
step to step (model.FloatLogits): the values are the logits converted, as
the sampler would convert them, and no step allocates a new [B, vocab]."""
from __future__ import annotations

import torch

from vllm_block.model import FloatLogits


def test_bf16_logits_become_the_same_values_in_float32():
    logits = torch.randn(5, 11).to(torch.bfloat16)
    out = FloatLogits(max_rows=8)(logits)
    assert out.dtype == torch.float32 and torch.equal(out, logits.float())


def test_steps_of_up_to_max_rows_reuse_one_buffer():
    convert = FloatLogits(max_rows=8)
    first = convert(torch.randn(8, 11).to(torch.bfloat16))
    logits = torch.randn(3, 11).to(torch.bfloat16)
    second = convert(logits)
    assert second.data_ptr() == first.data_ptr() and second.shape == (3, 11)
    assert torch.equal(second, logits.float())


def test_more_rows_than_max_rows_are_converted_without_the_buffer():
    convert = FloatLogits(max_rows=2)
    logits = torch.randn(4, 11).to(torch.bfloat16)
    out = convert(logits)
    assert torch.equal(out, logits.float()) and convert.buffer is None


def test_float32_logits_pass_through_untouched():
    logits = torch.randn(3, 11)
    assert FloatLogits(max_rows=8)(logits) is logits


def test_a_sliced_vocabulary_view_converts_correctly():
    padded = torch.randn(3, 16).to(torch.bfloat16)
    out = FloatLogits(max_rows=8)(padded[:, :11])  # vLLM drops the padded vocabulary
    assert torch.equal(out, padded[:, :11].float())
