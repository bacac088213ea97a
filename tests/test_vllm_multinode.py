"""Multi-node serving through vLLM's own multiprocessing executor.

Each test class starts two 'nodes' on 127.0.0.1 as two separate process
groups, each the way a user starts it on its own machine: the head
`vllm serve MODEL ...` (API server) and the second node
`vllm serve MODEL ... --headless`, one core each (VLLM_CPU_OMP_THREADS_BIND):

- tensor parallelism across nodes: `--tensor-parallel-size 2 --nnodes 2
  --node-rank R --master-addr --master-port` (one TP rank per node);
- data parallelism across nodes: `--data-parallel-size 2
  --data-parallel-size-local 1 [--data-parallel-start-rank 1]
  --data-parallel-address --data-parallel-rpc-port` (one engine per node,
  behind the head's API server).

What happens when a node stops or dies is vLLM's multi-node machinery, not
this package's; docs/scaling.md states it for users. The tests marked
`pins_vllm` assert vLLM 0.32's faults there (each names its upstream issue):
when one fails after a vLLM upgrade, vLLM changed, and docs/scaling.md says
what to update.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import openai
import pytest

from engine import LOGPROB_TOL
from helpers import greedy_cases, pins_vllm
from vllm_block.tools.serving import Server, free_port, vllm_serve, vllm_serve_headless

pytestmark = pytest.mark.engine  # starts vLLM engines (make test-fast skips it)

CASES = greedy_cases()
NEW = len(CASES[0]["greedy"])
MODEL = "tiny"
SERVE = ("--served-model-name", MODEL, "--dtype", "float32", "--max-model-len", "512")
HEAD_CORE, NODE_CORE = "0", "1"
STOP_S = 30         # bound on any node's exit after SIGTERM
OUTLIVE_S = 3       # how long a headless node is watched after the head has exited
STALL_S = 5         # client read timeout that ends a request stuck on a dead node
DEATH_EXIT_S = 60   # bound on the TP head's own exit after the second node dies


def tp_flags(node_rank: int, master_port: int) -> tuple[str, ...]:
    return ("--tensor-parallel-size", "2", "--nnodes", "2", "--node-rank", str(node_rank),
            "--master-addr", "127.0.0.1", "--master-port", str(master_port))


def dp_flags(node_rank: int, rpc_port: int) -> tuple[str, ...]:
    # one API server process on the head (vLLM's default: one per DP rank)
    role = ("--data-parallel-start-rank", "1") if node_rank else ("--api-server-count", "1")
    return ("--data-parallel-size", "2", "--data-parallel-size-local", "1", *role,
            "--data-parallel-address", "127.0.0.1", "--data-parallel-rpc-port", str(rpc_port))


FLAGS = {"tp": tp_flags, "dp": dp_flags}


@dataclass
class TwoNodes:
    head: Server
    node: Server
    client: openai.OpenAI
    seen: dict = field(default_factory=dict)  # what a scenario observed on the way


@contextlib.contextmanager
def two_nodes(form: str, model, logs) -> Iterator[TwoNodes]:
    """The second node (headless) first, then the head; ready once the head's
    /health answers (it waits for the second node's rank or engine)."""
    port, flags = free_port(), FLAGS[form]
    with vllm_serve_headless(model, *SERVE, *flags(1, port), log=logs / f"{form}_node1.log",
                             env={"VLLM_CPU_OMP_THREADS_BIND": NODE_CORE}) as node, \
         vllm_serve(model, *SERVE, *flags(0, port), log=logs / f"{form}_head.log",
                    env={"VLLM_CPU_OMP_THREADS_BIND": HEAD_CORE}, watch=[node],
                    timeout=300) as head:
        client = openai.OpenAI(base_url=head.url + "/v1", api_key="unused", max_retries=0,
                               timeout=60)
        yield TwoNodes(head, node, client)


def complete(client: openai.OpenAI, case: dict, dp_rank: int | None = None) -> float:
    """One greedy case over HTTP: tokens must be the ground truth's; returns the
    largest error of the top-5 logprobs against the case's."""
    headers = {} if dp_rank is None else {"X-data-parallel-rank": str(dp_rank)}
    out = client.completions.create(
        model=MODEL, prompt=case["prompt"], max_tokens=NEW, temperature=0.0, logprobs=5,
        extra_headers=headers,
        extra_body={"ignore_eos": True, "return_token_ids": True,
                    "return_tokens_as_token_ids": True})
    choice = out.choices[0]
    assert choice.token_ids == case["greedy"], f"prompt {case['prompt']}"
    worst = 0.0
    for i, (step, top) in enumerate(zip(case["steps"], choice.logprobs.top_logprobs,
                                        strict=True)):
        for tok, expected in step["top5"]:
            assert f"token_id:{tok}" in top, f"step {i}: {tok} not in top-5 {list(top)}"
            worst = max(worst, abs(top[f"token_id:{tok}"] - expected))
    return worst


def check_cases(client: openai.OpenAI, label: str, dp_rank: int | None = None) -> float:
    worst = max(complete(client, case, dp_rank) for case in CASES)
    print(f"{label}: {len(CASES)} cases, greedy tokens exact, max logprob error {worst:.2e}")
    assert worst <= LOGPROB_TOL
    return worst


def start_long_stream(client: openai.OpenAI, dp_rank: int | None = None,
                      read_timeout: float = 60):
    """A streamed greedy request far from done: returns the stream once its
    first token has arrived."""
    headers = {} if dp_rank is None else {"X-data-parallel-rank": str(dp_rank)}
    stream = client.completions.create(
        model=MODEL, prompt=CASES[0]["prompt"], max_tokens=500, temperature=0.0, stream=True,
        extra_headers=headers, extra_body={"ignore_eos": True},
        timeout=httpx.Timeout(read_timeout, connect=5))
    next(iter(stream))
    return stream


def drain(stream) -> tuple[int, BaseException | None]:
    """Read a stream to its end: (chunks read, the exception that ended it)."""
    chunks = 0
    try:
        for _ in stream:
            chunks += 1
    except Exception as e:  # noqa: BLE001 (what ends the stream is the observation)
        return chunks, e
    return chunks, None


def stop_head_then_watch_node(nodes: TwoNodes) -> None:
    """Stop the head as a user would (SIGTERM) and keep watching the second node."""
    if nodes.head.group_alive():
        t0 = time.monotonic()
        nodes.seen["head_status"] = nodes.head.stop(STOP_S)
        nodes.seen["head_stop_s"] = time.monotonic() - t0
        nodes.seen["node_alive_after_head"] = not nodes.node.wait_exit(OUTLIVE_S)


# vLLM 0.32's faults these tests pin (docs/scaling.md, "When a node stops or dies")
HEADLESS_OUTLIVES_HEAD = pins_vllm(
    "0.32", "vllm-project/vllm#32136",
    "a headless node does not exit when the head does; stop every node itself")
DEAD_DP_ENGINE_STALLS = pins_vllm(
    "0.32", "none for this case; related: vllm-project/vllm#44428 (DP+EP fault tolerance)",
    "requests on a dead data-parallel engine get neither tokens nor an error; "
    "only a client timeout ends them")
ENGINE_DEATH_EXITS_0 = pins_vllm(
    "0.32", "vllm-project/vllm#48966",
    "the API server exits with status 0 after its engine died; a supervisor's "
    "Restart=on-failure does not restart it")


# Each class shares one pair of nodes (a class-scoped fixture, so they are gone
# before the next class starts its own); its tests run in order, the last ones
# stopping the nodes.


@pytest.fixture(scope="class")
def tp(tiny_b4_tok_dir, tmp_path_factory) -> Iterator[TwoNodes]:
    with two_nodes("tp", tiny_b4_tok_dir, tmp_path_factory.mktemp("tp")) as nodes:
        yield nodes


class TestTensorParallelAcrossTwoNodes:
    def test_answers_with_ground_truth(self, tp):
        check_cases(tp.client, "TP=2 across 2 nodes")

    def test_head_exits_cleanly_on_sigterm(self, tp):
        stop_head_then_watch_node(tp)
        print(f"TP head: exit status {tp.seen['head_status']} in {tp.seen['head_stop_s']:.1f} s")
        assert tp.seen["head_status"] == 0

    @HEADLESS_OUTLIVES_HEAD
    def test_headless_node_outlives_the_head(self, tp):
        # the TP worker of a headless node waits on the head's broadcast queue
        # with no timeout (WorkerProc.worker_busy_loop: dequeue(indefinite=True))
        stop_head_then_watch_node(tp)
        assert tp.seen["node_alive_after_head"], "the headless node now exits with the head"

    def test_headless_node_exits_on_its_own_sigterm(self, tp):
        stop_head_then_watch_node(tp)
        t0 = time.monotonic()
        status = tp.node.stop(STOP_S)
        print(f"TP headless node: exit status {status} in {time.monotonic() - t0:.1f} s")
        assert status is not None, f"the headless node did not exit within {STOP_S} s"


@pytest.fixture(scope="class")
def dp(tiny_b4_tok_dir, tmp_path_factory) -> Iterator[TwoNodes]:
    with two_nodes("dp", tiny_b4_tok_dir, tmp_path_factory.mktemp("dp")) as nodes:
        yield nodes


def served_by_engine(server: Server) -> dict[str, float]:
    """vllm:request_success_total per engine, from the head's /metrics."""
    text = httpx.get(server.url + "/metrics", timeout=10).text
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("vllm:request_success_total{"):
            engine = line.split('engine="', 1)[1].split('"', 1)[0]
            counts[engine] = counts.get(engine, 0.0) + float(line.rsplit(" ", 1)[1])
    return counts


class TestDataParallelAcrossTwoNodes:
    @pytest.mark.parametrize("dp_rank", [0, 1], ids=["engine_on_head", "engine_on_node_2"])
    def test_each_engine_answers_with_ground_truth(self, dp, dp_rank):
        check_cases(dp.client, f"DP=2 across 2 nodes, engine {dp_rank}", dp_rank=dp_rank)

    def test_unpinned_requests_are_balanced_onto_both_nodes(self, dp):
        from concurrent.futures import ThreadPoolExecutor

        before = served_by_engine(dp.head)
        with ThreadPoolExecutor(len(CASES)) as pool:
            worst = max(pool.map(lambda case: complete(dp.client, case), CASES))
        after = served_by_engine(dp.head)
        served = {e: after[e] - before.get(e, 0.0) for e in after}
        print(f"DP unpinned: requests per engine {served}, max logprob error {worst:.2e}")
        assert worst <= LOGPROB_TOL
        assert served.get("0", 0) > 0 and served.get("1", 0) > 0, served

    def test_head_exits_cleanly_on_sigterm(self, dp):
        stop_head_then_watch_node(dp)
        print(f"DP head: exit status {dp.seen['head_status']} in {dp.seen['head_stop_s']:.1f} s")
        assert dp.seen["head_status"] == 0

    @HEADLESS_OUTLIVES_HEAD
    def test_headless_node_outlives_the_head(self, dp):
        # a headless engine has no liveness check on the head's front end
        stop_head_then_watch_node(dp)
        assert dp.seen["node_alive_after_head"], "the headless node now exits with the head"

    def test_headless_node_exits_on_its_own_sigterm(self, dp):
        stop_head_then_watch_node(dp)
        t0 = time.monotonic()
        status = dp.node.stop(STOP_S)
        print(f"DP headless node: exit status {status} in {time.monotonic() - t0:.1f} s")
        assert status == 0


# -- the second node dies mid-run (SIGKILL of its whole process group) ----------------


@pytest.fixture(scope="class")
def tp_node_killed(tiny_b4_tok_dir, tmp_path_factory) -> Iterator[TwoNodes]:
    with two_nodes("tp", tiny_b4_tok_dir, tmp_path_factory.mktemp("tp_kill")) as nodes:
        stream = start_long_stream(nodes.client)
        nodes.node.kill()
        nodes.seen["killed_at"] = time.monotonic()
        nodes.seen["stream"] = drain(stream)
        nodes.seen["stream_ended_s"] = time.monotonic() - nodes.seen["killed_at"]
        yield nodes


class TestTensorParallelNodeDeath:
    def test_in_flight_request_fails_with_an_error(self, tp_node_killed):
        chunks, error = tp_node_killed.seen["stream"]
        print(f"TP node killed: in-flight stream read {chunks} more chunks, then "
              f"{type(error).__name__}: {error} "
              f"{tp_node_killed.seen['stream_ended_s']:.1f} s after the kill")
        # an error event in the stream (its HTTP status was already 200), not a timeout
        assert type(error) is openai.APIError, repr(error)
        assert "EngineCore encountered an issue" in str(error)
        assert tp_node_killed.seen["stream_ended_s"] < 30

    def test_head_exits_on_its_own(self, tp_node_killed):
        head = tp_node_killed.head
        exited = head.wait_exit(DEATH_EXIT_S)
        after = time.monotonic() - tp_node_killed.seen["killed_at"]
        print(f"TP node killed: head exited={exited} with status {head.process.returncode} "
              f"{after:.1f} s after the kill")
        assert exited, f"the head still runs {DEATH_EXIT_S} s after the second node died"
        with pytest.raises(openai.APIConnectionError):
            tp_node_killed.client.models.list()

    @ENGINE_DEATH_EXITS_0
    def test_head_exit_status_after_the_node_death_is_0(self, tp_node_killed):
        head = tp_node_killed.head
        assert head.wait_exit(DEATH_EXIT_S), "the head did not exit after the node death"
        assert head.process.returncode == 0, "the head now reports the engine's death"


@pytest.fixture(scope="class")
def dp_node_killed(tiny_b4_tok_dir, tmp_path_factory) -> Iterator[TwoNodes]:
    with two_nodes("dp", tiny_b4_tok_dir, tmp_path_factory.mktemp("dp_kill")) as nodes:
        stream = start_long_stream(nodes.client, dp_rank=1, read_timeout=STALL_S)
        nodes.node.kill()
        nodes.seen["killed_at"] = time.monotonic()
        nodes.seen["stream"] = drain(stream)
        nodes.seen["stream_ended_s"] = time.monotonic() - nodes.seen["killed_at"]
        yield nodes


class TestDataParallelNodeDeath:
    @DEAD_DP_ENGINE_STALLS
    def test_requests_on_the_dead_node_stall_without_an_error(self, dp_node_killed):
        chunks, error = dp_node_killed.seen["stream"]
        print(f"DP node killed: stream on engine 1 read {chunks} more chunks, then "
              f"{type(error).__name__}: {error} "
              f"{dp_node_killed.seen['stream_ended_s']:.1f} s after the kill")
        assert isinstance(error, (httpx.ReadTimeout, openai.APITimeoutError)), error

    def test_head_keeps_serving_from_the_first_node(self, dp_node_killed):
        assert httpx.get(dp_node_killed.head.url + "/health", timeout=10).status_code == 200
        check_cases(dp_node_killed.client, "DP, second node dead, engine 0", dp_rank=0)

    def test_head_exits_cleanly_on_sigterm(self, dp_node_killed):
        t0 = time.monotonic()
        status = dp_node_killed.head.stop(STOP_S)
        print(f"DP head after node death: exit status {status} in "
              f"{time.monotonic() - t0:.1f} s")
        assert status == 0
