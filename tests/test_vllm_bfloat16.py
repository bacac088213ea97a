"""bfloat16 on CPU: the same model in half the memory, within bf16 rounding of
the fp32 ground truth."""
from __future__ import annotations

import pytest

from engine import engine, greedy_params, token_prompts
from helpers import greedy_cases

pytestmark = pytest.mark.engine  # starts vLLM engines (make test-fast skips it)

CASES = greedy_cases()
# bf16 keeps 8 bits of mantissa (measured: max error 1.2e-2 over all cases)
BF16_TOL = 5e-2


def test_bfloat16_teacher_forced_logprobs_are_close_to_fp32_ground_truth(tiny_b4_dir):
    # feed prompt + ground-truth continuation and score every position, so a
    # near-tie flip in bf16 cannot derail the comparison
    prompts = [c["prompt"] + c["greedy"] for c in CASES]
    with engine(tiny_b4_dir, dtype="bfloat16") as llm:
        outputs = llm.generate(token_prompts(prompts),
                               greedy_params(1, logprobs=None, prompt_logprobs=0))
        greedy = llm.generate(token_prompts(c["prompt"] for c in CASES),
                              greedy_params(len(CASES[0]["greedy"]), prompt_logprobs=None))
    worst = 0.0
    for case, out in zip(CASES, outputs):
        n = len(case["prompt"])
        for i, step in enumerate(case["steps"]):
            got = out.prompt_logprobs[n + i][step["token"]].logprob
            worst = max(worst, abs(got - step["logprob"]))
    print(f"bf16 max |logprob - fp32 ground truth| = {worst:.3e}")
    assert worst <= BF16_TOL
    # greedy decoding agrees with fp32 on the first tokens of nearly every case
    agree = sum(list(o.outputs[0].token_ids)[:3] == c["greedy"][:3]
                for c, o in zip(CASES, greedy))
    assert agree >= len(CASES) - 2, agree


def test_bfloat16_sampled_and_prompt_logprobs_in_one_batch_stay_close_to_ground_truth(
        tiny_b4_dir):
    """The model hands the sampler float32 logits in a buffer kept from step
    to step (vllm_block/logits.py); in steps that both sample (logprobs of the
    chosen token) and score prompts (prompt logprobs, computed after
    sampling), neither reads the other's logits."""
    forced = [c["prompt"] + c["greedy"] for c in CASES]
    new = len(CASES[0]["greedy"])
    with engine(tiny_b4_dir, dtype="bfloat16", max_num_batched_tokens=64) as llm:
        outputs = llm.generate(
            token_prompts(forced + [c["prompt"] for c in CASES]),
            [greedy_params(new, logprobs=0, prompt_logprobs=0)] * len(CASES)
            + [greedy_params(new, logprobs=0, prompt_logprobs=None)] * len(CASES))
    worst = 0.0
    for case, scored, sampled in zip(CASES, outputs[:len(CASES)], outputs[len(CASES):]):
        n = len(case["prompt"])
        for i, step in enumerate(case["steps"]):
            worst = max(worst, abs(scored.prompt_logprobs[n + i][step["token"]].logprob
                                   - step["logprob"]))
        for i, (step, token) in enumerate(zip(case["steps"], sampled.outputs[0].token_ids)):
            if token != step["token"]:  # a bf16 near-tie: the sequences part here
                break
            worst = max(worst, abs(sampled.outputs[0].logprobs[i][token].logprob
                                   - step["logprob"]))
    print(f"bf16 max |logprob - fp32 ground truth| in a mixed batch = {worst:.3e}")
    assert worst <= BF16_TOL
