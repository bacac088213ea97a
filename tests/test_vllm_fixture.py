"""The vLLM model on the original code's ground truth (`original_tiny_b4`).

One engine for the module, default scheduling (prefix caching on, as vLLM
ships it) and a tokenizer (so vLLM validates token ids). Greedy tokens exact; logprobs within 1e-3 (fp32).
"""
from __future__ import annotations

import pytest
from vllm.exceptions import VLLMValidationError

from engine import check_against_cases, engine, greedy_params, token_prompts
from helpers import greedy_cases

pytestmark = pytest.mark.engine  # starts vLLM engines (make test-fast skips it)

CASES = greedy_cases()
NEW = len(CASES[0]["greedy"])


@pytest.fixture(scope="module")
def llm(tiny_b4_tok_dir):
    with engine(tiny_b4_tok_dir, skip_tokenizer_init=False) as llm:
        yield llm


def test_all_cases_in_one_batch_match_ground_truth(llm):
    outputs = llm.generate(token_prompts(c["prompt"] for c in CASES), greedy_params(NEW))
    check_against_cases(outputs, CASES)


def test_each_case_alone_matches_ground_truth(llm):
    for case in CASES:
        (out,) = llm.generate(token_prompts([case["prompt"]]), greedy_params(NEW))
        check_against_cases([out], [case])


def test_requests_in_different_block_phases_batch_with_decoding_ones(llm):
    """Continuous batching: requests join while others are mid-block."""
    from vllm import SamplingParams

    # different max_tokens make requests finish (and free slots) at different
    # steps, so later ones are scheduled beside ones already decoding
    params = [greedy_params(NEW - i % 5) for i in range(len(CASES))]
    outputs = llm.generate(token_prompts(c["prompt"] for c in CASES), params)
    for case, out, p in zip(CASES, outputs, params):
        assert list(out.outputs[0].token_ids) == case["greedy"][:p.max_tokens]
    assert isinstance(params[0], SamplingParams)


def test_max_tokens_and_stop_token_cut_the_greedy_continuation(llm):
    case = CASES[4]
    stop_at = 5
    stop_token = case["greedy"][stop_at]
    expected_len = case["greedy"].index(stop_token) + 1  # stop token included by default
    (out,) = llm.generate(token_prompts([case["prompt"]]),
                          greedy_params(NEW, stop_token_ids=[stop_token], ignore_eos=False,
                                        prompt_logprobs=None))
    assert list(out.outputs[0].token_ids) == case["greedy"][:expected_len]
    (out,) = llm.generate(token_prompts([case["prompt"]]), greedy_params(3))
    assert list(out.outputs[0].token_ids) == case["greedy"][:3]


def test_seeded_sampling_is_reproducible_alone_and_in_a_batch(llm):
    from vllm import SamplingParams

    sp = SamplingParams(temperature=0.9, top_p=0.9, top_k=50, seed=1234, max_tokens=12,
                        ignore_eos=True, detokenize=False, logprobs=2)
    prompts = token_prompts(c["prompt"] for c in CASES)
    alone = [llm.generate([p], sp)[0].outputs[0].token_ids for p in prompts[:3]]
    batched = [o.outputs[0].token_ids for o in llm.generate(prompts, sp)[:3]]
    assert [list(x) for x in alone] == [list(x) for x in batched]
    greedy = [c["greedy"][:12] for c in CASES[:3]]
    assert [list(x) for x in alone] != greedy  # it did sample


def test_n_samples_are_distinct_and_logprobs_are_consistent(llm):
    from vllm import SamplingParams

    sp = SamplingParams(n=4, temperature=1.0, seed=7, max_tokens=10, ignore_eos=True,
                        detokenize=False, logprobs=1)
    (out,) = llm.generate(token_prompts([CASES[6]["prompt"]]), sp)
    assert len(out.outputs) == 4
    assert len({tuple(c.token_ids) for c in out.outputs}) > 1
    for comp in out.outputs:
        assert len(comp.token_ids) == 10
        # the sampled token's logprob is reported, and is a log-probability
        assert all(lp[t].logprob <= 0 for t, lp in zip(comp.token_ids, comp.logprobs))


def test_top_k_1_sampling_equals_greedy(llm):
    from vllm import SamplingParams

    sp = SamplingParams(temperature=1.0, top_k=1, seed=3, max_tokens=NEW, ignore_eos=True,
                        detokenize=False)
    outs = llm.generate(token_prompts(c["prompt"] for c in CASES), sp)
    assert [list(o.outputs[0].token_ids) for o in outs] == [c["greedy"] for c in CASES]


def test_out_of_vocabulary_token_id_is_rejected_with_a_clear_error(llm):
    vocab = 512
    for bad in (vocab, -1):
        with pytest.raises(VLLMValidationError, match=f"Token id {bad} is out of vocabulary"):
            llm.generate(token_prompts([[1, 2, bad]]), greedy_params(2))
    # the engine still serves valid requests afterwards
    (out,) = llm.generate(token_prompts([CASES[0]["prompt"]]), greedy_params(NEW))
    check_against_cases([out], [CASES[0]])


def test_over_long_prompt_is_rejected_with_a_clear_error(llm):
    with pytest.raises(VLLMValidationError, match=r"maximum context length is 512 tokens"):
        llm.generate(token_prompts([[1] * 600]), greedy_params(2))


def test_empty_prompt_is_rejected_with_a_clear_error(llm):
    with pytest.raises(VLLMValidationError, match=r"prompt cannot be empty"):
        llm.generate(token_prompts([[]]), greedy_params(2))


def test_stop_string_ends_the_text_before_it(llm):
    from vllm import SamplingParams

    case = CASES[5]
    stop_word = f"w{case['greedy'][6]}"  # the fixture's tokenizer: id i is word "wi"
    sp = SamplingParams(temperature=0.0, max_tokens=NEW, stop=[stop_word])
    (out,) = llm.generate(token_prompts([case["prompt"]]), sp)
    first = case["greedy"].index(case["greedy"][6])
    assert list(out.outputs[0].token_ids) == case["greedy"][:first + 1]
    assert stop_word not in out.outputs[0].text.split()
    assert out.outputs[0].finish_reason == "stop"
