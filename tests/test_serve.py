"""`vllm serve MODEL_DIR` with only the plugin installed, driven by the
`openai` client over loopback. One server for the module, on the converted
fixture with a word-level tokenizer (id i is the word "wi")."""
from __future__ import annotations

import json

import pytest

from helpers import greedy_cases, http_post
from vllm_block.tools.serving import vllm_serve

pytestmark = pytest.mark.engine  # starts vLLM engines (make test-fast skips it)

CASES = greedy_cases()
NEW = len(CASES[0]["greedy"])
MODEL = "tiny"


@pytest.fixture(scope="module")
def server(tiny_b4_tok_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "server.log"
    with vllm_serve(tiny_b4_tok_dir, "--served-model-name", MODEL, "--dtype", "float32",
                    "--max-model-len", "512", log=log) as server:
        yield server.url
    # nothing went wrong while serving (vLLM may log a race while shutting down)
    serving = log.read_text().split("[shutdown]")[0]
    assert "Traceback" not in serving and " ERROR " not in serving, serving[-3000:]


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0)


def test_models_endpoint_lists_the_served_model(client):
    assert [m.id for m in client.models.list().data] == [MODEL]


def test_greedy_completions_over_http_equal_ground_truth(client):
    for case in CASES:
        out = client.completions.create(model=MODEL, prompt=case["prompt"], max_tokens=NEW,
                                        temperature=0.0, logprobs=5,
                                        extra_body={"ignore_eos": True,
                                                    "return_token_ids": True})
        choice = out.choices[0]
        assert choice.token_ids == case["greedy"]
        assert choice.text.split() == [f"w{t}" for t in case["greedy"]]
        for step, top in zip(case["steps"], choice.logprobs.top_logprobs):
            for tok, lp in step["top5"]:
                assert abs(top[f"w{tok}"] - lp) <= 1e-3


def test_streaming_completion_yields_the_same_tokens(client):
    case = CASES[7]
    stream = client.completions.create(model=MODEL, prompt=case["prompt"], max_tokens=NEW,
                                       temperature=0.0, stream=True,
                                       extra_body={"ignore_eos": True})
    text = "".join(chunk.choices[0].text for chunk in stream if chunk.choices)
    assert text.split() == [f"w{t}" for t in case["greedy"]]


def test_chat_completion_answers(client):
    out = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "w1 w2 w3"}], max_tokens=8,
        temperature=0.0, extra_body={"ignore_eos": True})
    assert out.choices[0].message.content.split()
    assert out.usage.completion_tokens == 8


def test_n_seed_stop_and_echo(client):
    case = CASES[5]
    out = client.completions.create(model=MODEL, prompt=case["prompt"], max_tokens=10, n=3,
                                    temperature=1.0, top_p=0.9, seed=11,
                                    extra_body={"ignore_eos": True, "top_k": 40})
    again = client.completions.create(model=MODEL, prompt=case["prompt"], max_tokens=10, n=3,
                                      temperature=1.0, top_p=0.9, seed=11,
                                      extra_body={"ignore_eos": True, "top_k": 40})
    assert len(out.choices) == 3
    assert [c.text for c in out.choices] == [c.text for c in again.choices]
    stop_word = f"w{case['greedy'][3]}"
    out = client.completions.create(model=MODEL, prompt=case["prompt"], max_tokens=NEW,
                                    temperature=0.0, stop=[stop_word],
                                    extra_body={"ignore_eos": True})
    assert out.choices[0].finish_reason == "stop" and stop_word not in out.choices[0].text
    prompt_text = " ".join(f"w{t}" for t in case["prompt"])
    out = client.completions.create(model=MODEL, prompt=prompt_text, max_tokens=2,
                                    temperature=0.0, echo=True,
                                    extra_body={"ignore_eos": True})
    assert out.choices[0].text.split()[:len(case["prompt"])] == prompt_text.split()


@pytest.mark.parametrize("body,fragment", [
    ({"prompt": []}, "at least one prompt"),
    ({"prompt": ""}, "empty"),
    ({"prompt": [1] * 600}, "maximum context length"),
    ({"prompt": [1, 2], "max_tokens": 0}, "max_tokens"),
    ({"prompt": [1, 2], "max_tokens": -5}, "max_tokens"),
    ({"prompt": [1, 2], "max_tokens": 10**6}, "cannot be greater than max_model_len"),
    ({"prompt": [1, 512]}, "out of vocabulary"),
    ({"prompt": [1, -3]}, "greater_than_equal"),
    ({"prompt": [1, 2], "model": "nope"}, "does not exist"),
])
def test_bad_requests_get_a_4xx_with_a_clear_message_and_the_server_lives(
        server, client, body, fragment):
    status, raw = http_post(server, "/v1/completions",
                            json.dumps({"model": MODEL, "max_tokens": 4, **body}).encode())
    err = json.loads(raw or b"{}")
    assert 400 <= status < 500, (status, err)
    assert fragment.lower() in json.dumps(err).lower(), err
    ok = client.completions.create(model=MODEL, prompt=CASES[0]["prompt"], max_tokens=NEW,
                                   temperature=0.0, extra_body={"ignore_eos": True,
                                                                "return_token_ids": True})
    assert ok.choices[0].token_ids == CASES[0]["greedy"]


def test_malformed_json_gets_a_4xx(server):
    status, _ = http_post(server, "/v1/completions", b'{"model": "tiny", "prompt": [1, 2')
    assert 400 <= status < 500
