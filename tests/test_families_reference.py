"""Reference model vs the original code's ground truth for every checkpoint
family: no-pad main, uptrain (projection_layer), MEGABYTE (summation), b1.

Each fixture was made by the original forward() in that model's alignment
(tests/fixtures/README.md); greedy must match exactly, log-probs within TOL.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from families import FAMILIES, TOL, case_id, cases, family_cases, family_dir, forward_fixture
from vllm_block.convert import convert

CASES = family_cases()
IDS = [f"{name}-{case_id(case)}" for name, case in CASES]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Each family's fixture converted and loaded (fp32, eval)."""
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("families")
    return {name: AutoModelForCausalLM.from_pretrained(
        convert(family_dir(name), root / name), dtype=torch.float32).eval()
        for name in FAMILIES}


def assert_steps_match(logprobs: torch.Tensor, steps: list[dict]) -> None:
    """logprobs [n, V] vs greedy.json steps: argmax exact, top-5 within TOL."""
    assert logprobs.shape[0] == len(steps)
    for i, step in enumerate(steps):
        assert logprobs[i].argmax().item() == step["token"], f"step {i}"
        for token, expected in step["top5"]:
            assert abs(logprobs[i, token].item() - expected) <= TOL, f"step {i} token {token}"


@pytest.mark.parametrize("name", FAMILIES)
def test_raw_forward_matches_original_forward(models, name):
    input_ids, expected = forward_fixture(name)
    with torch.no_grad():
        logits = models[name].raw_forward(input_ids)
    assert logits.shape == expected.shape
    assert (logits - expected).abs().max().item() <= TOL


@pytest.mark.parametrize("name,case", CASES, ids=IDS)
def test_cached_greedy_generation_matches_original(models, name, case):
    prompt = torch.tensor([case["prompt"]])
    ids, logits = models[name].generate(prompt, max_new_tokens=len(case["greedy"]),
                                        output_logits=True)
    assert ids[0, prompt.shape[1]:].tolist() == case["greedy"]
    assert_steps_match(logits[0].log_softmax(-1), case["steps"])


@pytest.mark.parametrize("name,case", CASES, ids=IDS)
def test_full_forward_step_logprobs_match_original(models, name, case):
    """forward() over prompt + continuation, in the layout the prompt fixed."""
    T = len(case["prompt"])
    seq = torch.tensor([case["prompt"] + case["greedy"]])
    with torch.no_grad():
        logits = models[name](seq, num_virtual_pad=case["virtual_pad"]).logits
    assert_steps_match(logits[0, T - 1:T - 1 + len(case["steps"])].log_softmax(-1),
                       case["steps"])


@pytest.mark.parametrize("name,case", CASES, ids=IDS)
def test_prompt_logprobs_match_original(models, name, case):
    """prompt_logprobs[i] is the log-probability of prompt[i + 1]; where the
    original forward() has no prediction (None: a token of the first block)
    the model gives the uniform distribution."""
    prompt = torch.tensor([case["prompt"]])
    with torch.no_grad():
        logprobs = models[name](prompt).logits[0].log_softmax(-1)
    got = logprobs[:-1].gather(-1, prompt[0, 1:, None])[:, 0].tolist()
    uniform = -math.log(models[name].config.vocab_size)
    assert len(got) == len(case["prompt_logprobs"])
    for i, (g, expected) in enumerate(zip(got, case["prompt_logprobs"])):
        assert abs(g - (uniform if expected is None else expected)) <= TOL, f"token {i + 1}"


@pytest.mark.parametrize("name", FAMILIES)
def test_virtual_pad_rule_matches_the_fixture_layout(models, name):
    config = models[name].config
    for case in cases(name):
        assert config.virtual_pad(len(case["prompt"])) == case["virtual_pad"], case["prompt"]


def test_nopad_prompt_logits_over_whole_blocks_equal_original_forward(models):
    """No-pad: block b is prompt tokens bL..bL+L-1, so logits[t] (predicting
    token t+1) for t >= L-1 are the original forward()'s logits, unshifted."""
    model = models["nopad_b4"]
    input_ids, expected = forward_fixture("nopad_b4")
    L = model.config.block_length
    with torch.no_grad():
        logits = model(input_ids).logits
    flat = expected.flatten(1, 2)  # predicts tokens L .. nL-1
    assert (logits[:, L - 1:-1] - flat).abs().max().item() <= TOL
    assert logits[:, :L - 1].abs().max().item() == 0  # first block: no context


def test_nopad_loss_leaves_out_the_first_block(models):
    model = models["nopad_b4"]
    input_ids, _ = forward_fixture("nopad_b4")
    L = model.config.block_length
    with torch.no_grad():
        out = model(input_ids, labels=input_ids)
    expected = F.cross_entropy(out.logits[:, L - 1:-1].flatten(0, 1), input_ids[:, L:].flatten())
    assert abs(out.loss.item() - expected.item()) <= 1e-6


def test_nopad_short_prompt_layout_is_fixed_at_the_start(models):
    """A prompt shorter than L keeps its left padding while it grows past L:
    cached generation equals generation with the layout passed explicitly."""
    model = models["nopad_b4"]
    prompt = torch.tensor([[5, 6]])
    pad = model.config.virtual_pad(2)
    assert pad == model.config.block_length - 2
    ids = model.generate(prompt, max_new_tokens=9)
    assert torch.equal(ids, model.generate(prompt, max_new_tokens=9, num_virtual_pad=pad))
    assert not torch.equal(ids[:, 2:], model.generate(prompt, max_new_tokens=9,
                                                      num_virtual_pad=pad + 1)[:, 2:])


def test_prefill_refuses_a_layout_without_a_complete_block(models):
    with pytest.raises(ValueError, match="no complete block"):
        models["nopad_b4"].prefill(torch.tensor([[5, 6]]), num_virtual_pad=0)


def test_summation_token_cache_holds_at_most_block_length_entries(models):
    model = models["megabyte_b4"]
    state = model.prefill(torch.tensor([[3, 4, 5]]))
    for _ in range(3 * model.config.block_length):
        model.step(state, state.logits.argmax(-1))
    assert max(state.token_cache_lengths) == model.config.token_cache_length \
        == model.config.block_length


def test_b1_closes_a_block_with_every_token(models):
    model = models["b1"]
    state = model.prefill(torch.tensor([[3, 4, 5]]))
    assert state.num_blocks == 3
    for n in range(4, 8):
        model.step(state, state.logits.argmax(-1))
        assert state.num_blocks == n
    assert set(state.token_cache_lengths) == {model.config.prefix_length}
