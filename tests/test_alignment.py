"""Per-request alignment in vLLM (vllm_block/alignment.py): a "nopad"
model's prompt shorter than one block keeps L - T virtual pads, so its
prefix-cache pages must never be found by a request whose tokens are equal
but whose layout is not. vLLM's block hasher runs here on real `Request`s."""
from __future__ import annotations

import pytest

from helpers import random_config
from vllm_block.alignment import has_per_request_pads, salt_request

L, PAGE = 4, 16


@pytest.fixture(scope="module")
def make_request():
    from vllm import SamplingParams
    from vllm.utils.hashing import sha256
    from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash
    from vllm.v1.request import Request

    init_none_hash(sha256)
    hasher = get_request_block_hasher(PAGE, sha256)

    def make(prompt: list[int], output: list[int], salt: str | None = None):
        request = Request(f"r{len(prompt)}", prompt, SamplingParams(max_tokens=64), None,
                          cache_salt=salt, block_hasher=hasher)
        request.append_output_token_ids(output)
        return request

    return make


def nopad_config():
    return random_config(0, block_length=L, alignment="nopad")


def test_only_nopad_models_have_per_request_pads():
    assert has_per_request_pads(nopad_config())
    assert not has_per_request_pads(random_config(0, block_length=L, alignment="pad"))


def test_short_prompt_pages_are_keyed_by_their_pad_count(make_request):
    config, tokens = nopad_config(), list(range(1, 50))
    long_request = make_request(tokens[:L], tokens[L:])  # no pads
    hashes = list(long_request.block_hashes)
    salt_request(long_request, config)
    assert long_request.block_hashes == hashes  # the usual layout keeps its keys
    one = make_request(tokens[:1], tokens[1:])  # 3 pads
    two = make_request(tokens[:2], tokens[2:])  # 2 pads
    for short in (one, two):
        assert short.block_hashes == hashes  # vLLM alone would share every page
        salt_request(short, config)
        assert len(short.block_hashes) == len(hashes) == 3
        assert not set(short.block_hashes) & set(hashes)
    assert not set(one.block_hashes) & set(two.block_hashes)
    again = make_request(tokens[:1], tokens[1:])
    salt_request(again, config)
    assert again.block_hashes == one.block_hashes  # equal layouts still share


def test_a_users_cache_salt_is_kept(make_request):
    config, tokens = nopad_config(), list(range(1, 40))
    mine, theirs = make_request(tokens[:1], tokens[1:], "mine"), make_request(
        tokens[:1], tokens[1:], "theirs")
    for request in (mine, theirs):
        salt_request(request, config)
    assert mine.cache_salt.startswith("mine|")
    assert not set(mine.block_hashes) & set(theirs.block_hashes)
