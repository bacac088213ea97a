"""`vllm serve` on each checkpoint family's fixture (tests/fixtures/: `nopad_b4`,
`uptrain_b4`, `megabyte_b4`, `b1`), driven by the `openai` client over
loopback, against the original code's ground truth.

One server per family, as vLLM ships it (torch.compile on; the `LLM()` tests
of tests/test_vllm_families.py run eager), fp32. The fixtures have no
tokenizer: the server runs with `--skip-tokenizer-init`, prompts and outputs
are token ids and logprobs are keyed `token_id:N`. Every fixture case (prompt
lengths 1..3L and longer) is sent at once as concurrent requests, which the
server batches: greedy tokens exact, logprobs within 1e-3.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from engine import LOGPROB_TOL
from families import FAMILIES, cases, converted
from vllm_block.tools.serving import vllm_serve

pytestmark = pytest.mark.engine  # starts vLLM engines (make test-fast skips it)


@pytest.fixture(scope="module", params=FAMILIES)
def served(request, tmp_path_factory):
    """(family name, an `openai` client of `vllm serve` on its converted fixture)."""
    from openai import OpenAI

    name = request.param
    path = converted(tmp_path_factory, name)
    log = path.parent / "server.log"
    with vllm_serve(path, "--served-model-name", name, "--dtype", "float32",
                    "--max-model-len", "512", "--skip-tokenizer-init", log=log) as server:
        yield name, OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    # nothing went wrong while serving (vLLM may log a race while shutting down;
    # without a tokenizer its chat-template warm-up logs a traceback as a warning)
    serving = log.read_text().split("[shutdown]")[0].splitlines()
    bad = [line for line in serving if " ERROR " in line
           or ("Traceback" in line and " WARNING " not in line)]
    assert not bad, "\n".join(serving[-60:])


def test_greedy_completions_over_http_equal_ground_truth(served):
    name, client = served
    expected = cases(name)

    def complete(case):
        return client.completions.create(
            model=name, prompt=case["prompt"], max_tokens=len(case["greedy"]),
            temperature=0.0, logprobs=5,
            extra_body={"ignore_eos": True, "return_token_ids": True,
                        "return_tokens_as_token_ids": True}).choices[0]

    with ThreadPoolExecutor(len(expected)) as pool:
        choices = list(pool.map(complete, expected))
    worst = 0.0
    for case, choice in zip(expected, choices, strict=True):
        assert choice.token_ids == case["greedy"], \
            f"prompt {case['prompt']}: {choice.token_ids} != {case['greedy']}"
        lps = choice.logprobs
        assert lps.tokens == [f"token_id:{t}" for t in case["greedy"]]
        for i, (step, lp, top) in enumerate(zip(case["steps"], lps.token_logprobs,
                                                lps.top_logprobs, strict=True)):
            worst = max(worst, abs(lp - step["logprob"]))
            for tok, want in step["top5"]:
                assert f"token_id:{tok}" in top, f"step {i}: token {tok} not in top-5 {top}"
                worst = max(worst, abs(top[f"token_id:{tok}"] - want))
    assert worst <= LOGPROB_TOL, f"{name}: max logprob error {worst:.2e}"
