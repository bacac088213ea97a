"""The released checkpoint families through vLLM, against the original
code's ground truth (tests/fixtures/, made by scripts/make_original_fixtures.py).

- `b1` (L = 1, R = 1, the `block_vanilla_ablation_b1_85` layout): served.
  The fixture's block decoder has head size 16, which vLLM's CPU attention
  kernel does not take (the released b1_85 has 64): the engine refuses it at
  start naming the head size, and vLLM is checked on an L = 1, R = 1 model
  with head size 32 against the reference model, which
  tests/test_families_reference.py holds to the fixture (greedy exact,
  logprobs within 1e-3, fp32, every prompt length 1..3 and longer).
- no-pad alignment, `projection_layer` and `summation`: not served by vLLM
  yet; the engine refuses them at start with one error naming the option
  (never serves them in a layout they were not trained in).
"""
from __future__ import annotations

import pytest

from engine import engine_config
from families import copy_family
from test_vllm_random_configs import check_random_config

pytestmark = pytest.mark.engine  # starts vLLM engines (make test-fast skips it)


def converted(tmp_path_factory, name: str):
    from vllm_block.convert import convert

    root = tmp_path_factory.mktemp(name)
    return convert(copy_family(name, root / "original"), root / "hf")


def test_b1_layout_matches_reference(tmp_path):
    check_random_config(tmp_path, 1, 1, 2, 2, 32)


def test_b1_layout_with_fast_prefill_matches_reference(tmp_path):
    check_random_config(tmp_path, 1, 1, 2, 2, 32, kv_sharing_fast_prefill=True)


def test_unsupported_block_head_size_is_refused_at_start(tmp_path_factory):
    with pytest.raises(ValueError, match="block decoder's head size 16 .* not supported"):
        engine_config(converted(tmp_path_factory, "b1"))


@pytest.mark.parametrize("name,option", [("nopad_b4", "alignment='nopad'"),
                                         ("uptrain_b4", "embedder_projection='projection_layer'"),
                                         ("megabyte_b4", "decoding_strategy='summation'")])
def test_unserved_family_is_refused_naming_its_option(tmp_path_factory, name, option):
    with pytest.raises(ValueError, match=f"{option} is not served by vLLM"):
        engine_config(converted(tmp_path_factory, name))
