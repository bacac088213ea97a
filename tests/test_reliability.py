"""Reliability of `vllm serve` under load and faults (short versions; the
long load test is benchmarks/load_test.py): concurrent streaming clients
that disconnect, a preemption storm, hostile requests, mixed sampling with
seeds under concurrency, and SIGKILL/restart."""
from __future__ import annotations

import asyncio
import hashlib
import json
import random
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import REPO_ROOT, greedy_cases, http_post as post
from vllm_block.tools.serving import vllm_serve

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
from load_test import make_requests, metric, run_load  # noqa: E402

pytestmark = pytest.mark.engine  # starts vLLM engines (make test-fast skips it)

MODEL = "tiny"
MAX_LEN = 512  # of the load-test requests
SERVE_ARGS = ("--served-model-name", MODEL, "--dtype", "float32", "--max-model-len",
              str(MAX_LEN))
# the shared server also takes prompts of up to 600 tokens
SHARED_SERVE_ARGS = (*SERVE_ARGS, "--max-model-len", "1024")
CASES = greedy_cases()


def serving_log(path: Path) -> str:
    """The server's log up to its shutdown (vLLM may log a race while stopping)."""
    return path.read_text().split("[shutdown]")[0]


@pytest.fixture(scope="module")
def server(tiny_b4_tok_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("reliability") / "server.log"
    with vllm_serve(tiny_b4_tok_dir, *SHARED_SERVE_ARGS, log=log) as server:
        yield server


def decode_words(ids: list[int]) -> str:
    return " ".join(f"w{i}" for i in ids)  # the fixture tokenizer's words


def test_64_streaming_clients_with_disconnects(server):
    requests = make_requests(64, vocab=512, max_model_len=MAX_LEN, decode=decode_words,
                             seed=1)
    report, _ = asyncio.run(run_load(server, MODEL, requests, rounds=2, concurrency=64))
    print(report)
    assert report.errors == 0, report.error_messages
    assert report.aborted > 0 and report.completed > 0
    assert report.greedy_checked > 10 and report.mismatches == 0
    assert report.seeded_checked > 5
    # memory does not keep growing from the first to the last third of the run
    assert report.rss_last_third_mib <= 1.2 * report.rss_first_third_mib + 64
    log = serving_log(server.log)
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]
    assert server.process.poll() is None


def test_preemption_storm_keeps_outputs_identical(server, tiny_b4_tok_dir, tmp_path):
    # pages of 64 tokens; 12 pages hold about a quarter of the 12 requests
    requests = make_requests(12, vocab=512, max_model_len=MAX_LEN, decode=decode_words,
                             seed=2, disconnect_share=0.0)
    for r in requests:  # half greedy, half seeded sampling
        r.kind, r.greedy = "completion", r.idx % 2 == 0
        r.params = {"temperature": 0.0} if r.greedy else {"temperature": 1.0, "seed": r.idx}
        r.prompt_ids = (r.prompt_ids * 200)[:150]
        r.max_tokens = 120
    reference, _ = asyncio.run(run_load(server, MODEL, requests, concurrency=1))
    with vllm_serve(tiny_b4_tok_dir, *SERVE_ARGS, "--block-size", "64",
                    "--num-gpu-blocks-override", "12", log=tmp_path / "storm.log") as storm:
        report, results = asyncio.run(run_load(storm, MODEL, requests, concurrency=12))
        preemptions = metric(storm.url, "vllm:num_preemptions_total")
    _, expected = asyncio.run(run_load(server, MODEL, requests, concurrency=1))
    print(f"storm: {preemptions:.0f} preemptions, {report}")
    assert preemptions > 0
    assert report.errors == 0 and reference.errors == 0
    assert [r.text for r in results] == [r.text for r in expected]


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=3),
    max_leaves=8)
NUMBER = st.one_of(st.integers(-10**12, 10**12), st.floats(allow_nan=True,
                                                          allow_infinity=True), JSON)
COMMON = {
    "max_tokens": st.one_of(st.integers(-5, 8), NUMBER),
    "n": st.one_of(st.integers(-2, 4), NUMBER), "logprobs": st.one_of(st.integers(-2, 30), NUMBER),
    "temperature": NUMBER, "top_p": NUMBER, "top_k": NUMBER, "seed": NUMBER,
    "stop": st.one_of(st.text(max_size=5), st.lists(st.text(max_size=5), max_size=3), JSON),
    "stream": st.booleans(), "echo": JSON, "presence_penalty": NUMBER,
}
PROMPT = st.one_of(st.text(max_size=40),  # odd unicode included
                   st.lists(st.integers(-10, 2000), max_size=30), JSON)


def check_valid_request_still_works(url: str) -> None:
    status, body = post(url, "/v1/completions", json.dumps(
        {"model": MODEL, "prompt": CASES[0]["prompt"], "max_tokens": 14, "temperature": 0,
         "ignore_eos": True, "return_token_ids": True}).encode())
    assert status == 200 and json.loads(body)["choices"][0]["token_ids"] == CASES[0]["greedy"]


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow])
@given(body=st.fixed_dictionaries({"model": st.sampled_from([MODEL, "", "nope"]),
                                   "prompt": PROMPT},
                                  optional=COMMON),
       extra=st.dictionaries(st.text(min_size=1, max_size=8), JSON, max_size=2))
def test_hostile_completion_requests_never_get_a_5xx(server, body, extra):
    body = {**extra, **body}
    status, raw = post(server.url, "/v1/completions", json.dumps(body).encode())
    assert status < 500, (status, raw[:500], body)
    if status >= 400:
        assert "error" in json.loads(raw)


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow])
@given(body=st.fixed_dictionaries(
    {"model": st.just(MODEL),
     "messages": st.one_of(
         st.lists(st.fixed_dictionaries({"role": st.sampled_from(
             ["user", "assistant", "system", "tool", "bogus"]),
             "content": st.one_of(st.text(max_size=30), JSON)}), max_size=3), JSON)},
    optional={k: v for k, v in COMMON.items() if k != "echo"}))
def test_hostile_chat_requests_never_get_a_5xx(server, body):
    status, raw = post(server.url, "/v1/chat/completions", json.dumps(body).encode())
    assert status < 500, (status, raw[:500], body)


def test_server_answers_correctly_after_hostile_input(server):
    for raw in (b"{", b"[]", b'{"model": "tiny", "prompt": NaN}', b"\xff\xfe", b"null"):
        status, _ = post(server.url, "/v1/completions", raw)
        assert 400 <= status < 500
    check_valid_request_still_works(server.url)
    assert server.process.poll() is None


SAMPLING = st.fixed_dictionaries({
    "prompt_len": st.integers(1, 600), "prompt_seed": st.integers(0, 2**16),
    "max_tokens": st.integers(1, 24), "n": st.integers(1, 3),
    "seed": st.one_of(st.none(), st.integers(0, 2**31 - 1)),
    "temperature": st.sampled_from([0.0, 0.5, 1.0, 1.5]),
    "top_p": st.sampled_from([1.0, 0.9, 0.3]), "top_k": st.sampled_from([-1, 1, 5, 50]),
    "presence_penalty": st.sampled_from([0.0, 0.5, -1.0]),
    "frequency_penalty": st.sampled_from([0.0, 1.0]),
    "repetition_penalty": st.sampled_from([1.0, 1.3]),
    "logprobs": st.one_of(st.none(), st.integers(0, 5)), "stream": st.booleans()})


def sampling_body(spec: dict) -> dict:
    rng = random.Random(spec["prompt_seed"])
    body = {k: v for k, v in spec.items() if k not in ("prompt_len", "prompt_seed")}
    if body["temperature"] == 0.0:
        body["n"] = 1  # vLLM refuses n > 1 with greedy sampling
    return {**body, "model": MODEL, "ignore_eos": True, "return_token_ids": True,
            "prompt": [rng.randrange(1, 512) for _ in range(spec["prompt_len"])]}


def completion_token_ids(url: str, body: dict) -> list[list[int]]:
    """Each choice's token ids, in choice order (streamed or not); asserts a 200."""
    status, raw = post(url, "/v1/completions", json.dumps(body).encode(), timeout=300)
    assert status == 200, (status, raw[:500], body)
    if not body["stream"]:
        choices = json.loads(raw)["choices"]
        return [c["token_ids"] for c in sorted(choices, key=lambda c: c["index"])]
    ids: dict[int, list[int]] = {}
    for line in raw.decode().splitlines():
        if line.startswith("data: {"):
            for c in json.loads(line[6:])["choices"]:
                ids.setdefault(c["index"], []).extend(c.get("token_ids") or [])
    return [ids[i] for i in sorted(ids)]


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow])
@given(specs=st.lists(SAMPLING, min_size=2, max_size=8))
def test_concurrent_mixed_sampling_never_fails_and_seeded_equals_alone(server, specs):
    bodies = [sampling_body(s) for s in specs]
    with ThreadPoolExecutor(len(bodies)) as pool:
        together = list(pool.map(lambda b: completion_token_ids(server.url, b), bodies))
    for body, got in zip(bodies, together):
        assert len(got) == body["n"] and all(len(t) == body["max_tokens"] for t in got)
        if body["seed"] is not None or body["temperature"] == 0.0:
            assert got == completion_token_ids(server.url, body), body
    assert server.process.poll() is None


def digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.iterdir()) if p.is_file()}


def test_sigkill_and_restart_gives_the_same_outputs(tiny_b4_tok_dir, tmp_path):
    before = digest(tiny_b4_tok_dir)

    def outputs(url: str) -> list[list[int]]:
        results = []
        for case in CASES[:4]:
            status, body = post(url, "/v1/completions", json.dumps(
                {"model": MODEL, "prompt": case["prompt"], "max_tokens": 14,
                 "temperature": 0, "ignore_eos": True, "return_token_ids": True}).encode())
            assert status == 200
            results.append(json.loads(body)["choices"][0]["token_ids"])
        return results

    with vllm_serve(tiny_b4_tok_dir, *SERVE_ARGS, log=tmp_path / "a.log") as first:
        got_first = outputs(first.url)
        first.kill()  # SIGKILL to the whole process group, mid-life
    with vllm_serve(tiny_b4_tok_dir, *SERVE_ARGS, log=tmp_path / "b.log") as second:
        got_second = outputs(second.url)
    assert got_first == got_second == [c["greedy"] for c in CASES[:4]]
    assert digest(tiny_b4_tok_dir) == before
