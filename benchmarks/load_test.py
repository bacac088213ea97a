"""Load test: many concurrent streaming clients against a real `vllm serve`.

    python benchmarks/load_test.py [MODEL_DIR] [--clients 64] [--rounds 4]

Starts `vllm serve MODEL_DIR` on 127.0.0.1, then runs rounds of concurrent
streaming requests (completions and chat, mixed prompt lengths from 1 token
to near max_model_len, mixed sampling parameters, ~20% of clients
disconnecting mid-stream; greedy, seeded and unseeded sampling). Afterwards
every greedy or seeded request that completed is run again alone and must
return exactly the same text. Records requests/s,
p50/p99 time to first token and latency, aborted requests, errors,
preemptions (from /metrics) and the server's resident memory over time.
Writes benchmarks/results/load_test.json. The test suite runs a short version
(tests/test_reliability.py).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_MODEL = HERE.parent / "models" / "kjv-block-tiny"


@dataclass
class Request:
    idx: int
    kind: str  # "completion" | "chat"
    prompt_ids: list[int]
    text: str  # chat content
    max_tokens: int
    greedy: bool
    params: dict
    disconnect_after: int | None  # chunks; None = read to the end

    @property
    def reproducible(self) -> bool:
        """Greedy or seeded: the text must equal the same request sent alone."""
        return self.greedy or "seed" in self.params


@dataclass
class Result:
    idx: int
    ok: bool
    aborted: bool
    text: str = ""
    ttft: float | None = None
    latency: float | None = None
    error: str | None = None
    finish_reason: str | None = None


@dataclass
class LoadReport:
    requests: int = 0
    completed: int = 0
    aborted: int = 0
    errors: int = 0
    mismatches: int = 0
    greedy_checked: int = 0  # greedy or seeded requests compared with a solo run
    seeded_checked: int = 0
    duration_s: float = 0.0
    requests_per_s: float = 0.0
    ttft_p50_s: float | None = None
    ttft_p99_s: float | None = None
    latency_p50_s: float | None = None
    latency_p99_s: float | None = None
    preemptions: float = 0.0
    rss_first_third_mib: float = 0.0
    rss_last_third_mib: float = 0.0
    error_messages: list[str] = field(default_factory=list)


def make_requests(n: int, vocab: int, max_model_len: int, decode, seed: int = 0,
                  disconnect_share: float = 0.2) -> list[Request]:
    """Mixed requests; `decode(ids) -> str` renders chat content."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        max_tokens = rng.choice([4, 8, 16, 32, 64])
        longest = max_model_len - max_tokens - 16
        length = rng.choice([1, 2, 3, rng.randint(4, 64), rng.randint(64, longest), longest])
        ids = [rng.randrange(1, vocab) for _ in range(length)]
        greedy = rng.random() < 0.4
        params = {"temperature": 0.0} if greedy else {
            "temperature": rng.choice([0.5, 0.8, 1.2]), "top_p": rng.choice([0.8, 0.95, 1.0]),
            "extra_body": {"top_k": rng.choice([0, 20, 50])}}
        if not greedy and rng.random() < 0.5:
            params["seed"] = rng.randrange(2**31)
        kind = "chat" if rng.random() < 0.3 else "completion"
        text = decode(ids[:min(length, 48)]) if kind == "chat" else ""
        disconnect = rng.randint(1, 3) if rng.random() < disconnect_share else None
        out.append(Request(i, kind, ids, text, max_tokens, greedy, params, disconnect))
    return out


async def run_one(client, model: str, req: Request, stream: bool = True) -> Result:
    extra = {"ignore_eos": True, **req.params.get("extra_body", {})}
    kwargs = {k: v for k, v in req.params.items() if k != "extra_body"}
    start = time.perf_counter()
    res = Result(req.idx, ok=False, aborted=False)
    try:
        if req.kind == "completion":
            call = client.completions.create(model=model, prompt=req.prompt_ids,
                                             max_tokens=req.max_tokens, stream=stream,
                                             extra_body=extra, **kwargs)
        else:
            call = client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": req.text}],
                max_tokens=req.max_tokens, stream=stream, extra_body=extra, **kwargs)
        response = await call
        if not stream:
            choice = response.choices[0]
            res.text = choice.text if req.kind == "completion" else choice.message.content
            res.finish_reason = choice.finish_reason
            res.ok = True
            return res
        pieces, chunks = [], 0
        async for chunk in response:
            if not chunk.choices:
                continue
            choice = chunk.choices[0]
            piece = choice.text if req.kind == "completion" else (choice.delta.content or "")
            if piece and res.ttft is None:
                res.ttft = time.perf_counter() - start
            pieces.append(piece)
            res.finish_reason = choice.finish_reason or res.finish_reason
            chunks += 1
            if req.disconnect_after is not None and chunks >= req.disconnect_after:
                await response.close()  # the client goes away mid-stream
                res.aborted = True
                return res
        res.text = "".join(pieces)
        res.latency = time.perf_counter() - start
        res.ok = True
    except Exception as e:  # noqa: BLE001 - every failure is recorded
        res.error = f"{type(e).__name__}: {e}"[:300]
    return res


def metric(url: str, name: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith("#"))


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def run_load(server, model: str, requests: list[Request], rounds: int = 1,
                   concurrency: int = 64) -> tuple[LoadReport, list[Result]]:
    """Run `requests` `rounds` times with `concurrency` clients at once, then
    check every completed greedy or seeded request against a solo, non-streamed run."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0,
                         timeout=600)
    rss: list[float] = []
    stop = asyncio.Event()

    async def sample_rss():
        while not stop.is_set():
            rss.append(server.rss_bytes() / 2**20)
            await asyncio.sleep(0.5)

    sampler = asyncio.create_task(sample_rss())
    sem = asyncio.Semaphore(concurrency)

    async def limited(req):
        async with sem:
            return await run_one(client, model, req)

    start = time.perf_counter()
    results: list[Result] = []
    for _ in range(rounds):
        results += await asyncio.gather(*(limited(r) for r in requests))
    duration = time.perf_counter() - start
    stop.set()
    await sampler

    by_idx = {r.idx: r for r in requests}
    solo: dict[int, Result] = {}
    mismatches = 0
    checked = seeded = 0
    for res in results:
        req = by_idx[res.idx]
        if not (req.reproducible and res.ok and not res.aborted):
            continue
        if res.idx not in solo:
            solo[res.idx] = await run_one(client, model, req, stream=False)
        checked += 1
        seeded += not req.greedy
        if solo[res.idx].text != res.text:
            mismatches += 1
    third = max(1, len(rss) // 3)
    report = LoadReport(
        requests=len(results), completed=sum(r.ok and not r.aborted for r in results),
        aborted=sum(r.aborted for r in results),
        errors=sum(not r.ok and not r.aborted for r in results),
        mismatches=mismatches, greedy_checked=checked, seeded_checked=seeded, duration_s=round(duration, 2),
        requests_per_s=round(len(results) / duration, 2),
        ttft_p50_s=pct([r.ttft for r in results if r.ttft], 0.5),
        ttft_p99_s=pct([r.ttft for r in results if r.ttft], 0.99),
        latency_p50_s=pct([r.latency for r in results if r.latency], 0.5),
        latency_p99_s=pct([r.latency for r in results if r.latency], 0.99),
        preemptions=metric(server.url, "vllm:num_preemptions_total"),
        rss_first_third_mib=round(statistics.mean(rss[:third]), 1) if rss else 0.0,
        rss_last_third_mib=round(statistics.mean(rss[-third:]), 1) if rss else 0.0,
        error_messages=sorted({r.error for r in results if r.error})[:10])
    return report, results


def tokenizer_decoder(model_dir: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    return tok.decode, len(tok)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default=str(DEFAULT_MODEL))
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--requests", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-model-len", type=int, default=512)
    ap.add_argument("--out", default=str(HERE / "results" / "load_test.json"))
    args = ap.parse_args()

    from vllm_block.tools.serving import vllm_serve

    decode, vocab = tokenizer_decoder(args.model)
    requests = make_requests(args.requests, vocab, args.max_model_len, decode)
    log = Path("out/load_test_server.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    with vllm_serve(args.model, "--dtype", "float32", "--max-model-len",
                    str(args.max_model_len), "--served-model-name", "model", log=log) as server:
        report, _ = asyncio.run(run_load(server, "model", requests, args.rounds, args.clients))
    result = {"model": args.model, "clients": args.clients, "date": time.strftime("%Y-%m-%d"),
              "command": "python benchmarks/load_test.py " + " ".join(
                  f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
                  if k not in ("model", "out")), **asdict(report)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
