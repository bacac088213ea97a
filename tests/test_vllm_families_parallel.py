"""Tensor parallelism on the checkpoint family fixtures (tests/fixtures/),
against the original code's ground truth.

- `nopad_b4`, `uptrain_b4`, `b1` (2 heads in both decoders: one per rank):
  TP = 2 over the `mp` executor, each rank bound to one core, every fixture
  case in one batch with prompt logprobs. Greedy tokens exact, logprobs
  within 1e-3 (fp32).
- `megabyte_b4` (3 block-decoder heads): TP = 2 is refused, naming the block
  decoder, before an engine starts.
"""
from __future__ import annotations

import pytest

from engine import check_against_cases, engine, engine_config, greedy_params, token_prompts
from families import cases, converted

VOCAB = 256  # every family fixture's


@pytest.mark.engine
@pytest.mark.parametrize("name", ["nopad_b4", "uptrain_b4", "b1"])
def test_tensor_parallel_2_matches_ground_truth(name, tmp_path_factory, one_core_per_rank):
    expected = cases(name)
    with engine(converted(tmp_path_factory, name), tensor_parallel_size=2,
                distributed_executor_backend="mp") as llm:
        outputs = llm.generate(token_prompts(c["prompt"] for c in expected),
                               greedy_params(len(expected[0]["greedy"])))
    check_against_cases(outputs, expected, vocab_size=VOCAB)


def test_megabyte_tensor_parallel_2_is_refused_naming_the_block_decoder(tmp_path_factory):
    with pytest.raises(Exception, match=r"block decoder has 3 attention heads "
                                        r"\(block_num_attention_heads\), which "
                                        r"tensor_parallel_size 2 does not divide"):
        engine_config(converted(tmp_path_factory, "megabyte_b4"), tensor_parallel_size=2)
