"""Reference model vs the original code's outputs on `original_tiny_b4` (fp32)."""
from __future__ import annotations

import pytest
import torch

from helpers import forward_fixture, greedy_cases

TOL = 1e-4  # max abs error on logits and log-probabilities, fp32
CASES = greedy_cases()


def test_raw_forward_matches_original_forward(tiny_b4_model):
    input_ids, expected = forward_fixture()
    with torch.no_grad():
        logits = tiny_b4_model.raw_forward(input_ids)
    assert logits.shape == expected.shape
    assert (logits - expected).abs().max().item() <= TOL


def assert_steps_match(logprobs: torch.Tensor, steps: list[dict]) -> None:
    """logprobs [n, V] vs greedy.json steps: each listed top-5 logprob within TOL."""
    assert logprobs.shape[0] == len(steps)
    for i, step in enumerate(steps):
        assert logprobs[i].argmax().item() == step["token"], f"step {i}"
        for token, expected in step["top5"]:
            assert abs(logprobs[i, token].item() - expected) <= TOL, f"step {i} token {token}"


@pytest.mark.parametrize("case", CASES, ids=[f"prompt_len{len(c['prompt'])}" for c in CASES])
def test_cached_greedy_generation_matches_original(tiny_b4_model, case):
    prompt = torch.tensor([case["prompt"]])
    ids, logits = tiny_b4_model.generate(prompt, max_new_tokens=len(case["greedy"]),
                                         output_logits=True)
    assert ids[0, prompt.shape[1]:].tolist() == case["greedy"]
    assert_steps_match(logits[0].log_softmax(-1), case["steps"])


@pytest.mark.parametrize("case", CASES, ids=[f"prompt_len{len(c['prompt'])}" for c in CASES])
def test_full_forward_step_logprobs_match_original(tiny_b4_model, case):
    """The fixture's steps come from forward() over the whole sequence: so does this."""
    T = len(case["prompt"])
    seq = torch.tensor([case["prompt"] + case["greedy"]])
    with torch.no_grad():
        logprobs = tiny_b4_model(seq).logits[0].log_softmax(-1)
    assert_steps_match(logprobs[T - 1:T - 1 + len(case["steps"])], case["steps"])


@pytest.mark.parametrize("case", CASES, ids=[f"prompt_len{len(c['prompt'])}" for c in CASES])
def test_prompt_logprobs_match_original(tiny_b4_model, case):
    """prompt_logprobs[i] is the log-probability of prompt[i + 1]."""
    prompt = torch.tensor([case["prompt"]])
    with torch.no_grad():
        logprobs = tiny_b4_model(prompt).logits[0].log_softmax(-1)
    got = logprobs[:-1].gather(-1, prompt[0, 1:, None])[:, 0]
    expected = torch.tensor(case["prompt_logprobs"])
    assert got.shape == expected.shape
    if len(expected):
        assert (got - expected).abs().max().item() <= TOL

