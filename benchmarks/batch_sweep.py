"""Decode throughput against the number of concurrent requests, both models.

The paper's argument in one plot: a vanilla transformer's decode step reads
every request's whole KV cache, so its tokens/s stops growing once the
requests fill its KV budget (or once the step is memory-bound); the Block
Transformer reads 1/L of it and holds L x the requests, so its tokens/s keeps
growing with the batch up to the compute limit.

For each model (`vanilla_70` as vLLM's native GPT-J at vLLM's defaults,
inductor-compiled on CPU; `block_main_b4_85` in this plugin with fast prefill,
the plugin's defaults) one engine with the same KV budget runs, for each
batch B: B prompts of `--context` tokens, stepped until every running request
is decoding, then `--steps` pure decode steps (the scheduler's output is
checked: every running request has one new token and nothing else runs) are
timed. Generated tokens/s = the running requests / the step time. Requests
that the KV budget cannot hold wait (or are preempted): the running count is
the concurrency reached, recorded beside the batch asked for. The prompt
length is the mean context of the paper regime's decode-heavy run (128 ->
1888: about 1072), so the figures are the decode part of that workload at
each batch; the first requests in decode while the last are prefilled, so
the measured steps' mean context (recorded) grows with the batch.
Each point is set against its roofline limit (`models.decode_step_limit` at
the matmul peak and copy bandwidth measured in the same run).

    python benchmarks/batch_sweep.py [--batches 8,16,32,64,128,256,512]
        [--kv-gib 4] [--dtype bfloat16] [--context 1072]

Writes benchmarks/results/batch_sweep_<dtype>.json and .png.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from models import MODELS, decode_step_limit  # noqa: E402
from throughput import NBYTES, engine_setting, machine, make_checkpoint, measure_peaks  # noqa: E402

LABELS = {"gptj": "(vLLM GPT-J, vLLM defaults)", "block": "(vLLM plugin, fast prefill)"}


def impl_of(name: str) -> str:
    return "block" if MODELS[name].kind == "block" else "gptj"


def sweep_one(args) -> dict:
    """One model's engine (in this process), every batch in turn."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the scheduler lives here
    from vllm import LLM, SamplingParams

    impl = impl_of(args.one)
    path = make_checkpoint(args.one, impl, args.dtype, args.cache)
    top = max(args.batches)
    # every request keeps decoding until the last one of the batch is in: the
    # batch's prefill takes about B x context / 2048 steps, each decoding the
    # requests already running
    new_tokens = top * args.context // 2048 + args.steps + 64
    t = time.perf_counter()
    llm = LLM(model=str(path), skip_tokenizer_init=True, dtype=args.dtype,
              max_model_len=args.context + new_tokens + 16, max_num_seqs=top,
              max_num_batched_tokens=2048, kv_cache_memory_bytes=int(args.kv_gib * (1 << 30)),
              enable_prefix_caching=False, seed=0,
              **(dict(kv_sharing_fast_prefill=True) if impl == "block" else {}))
    start_s = time.perf_counter() - t
    engine = llm.llm_engine
    core = engine.engine_core.engine_core
    cache = engine.vllm_config.cache_config
    scheduled: list[tuple[int, int, int]] = []  # (requests, tokens, running) per step
    schedule = core.scheduler.schedule

    def recorded_schedule(*a, **k):
        out = schedule(*a, **k)
        scheduled.append((len(out.num_scheduled_tokens), out.total_num_scheduled_tokens,
                          len(core.scheduler.running)))
        return out

    core.scheduler.schedule = recorded_schedule
    rng = random.Random(0)
    vocab = MODELS[args.one].vocab
    sp = SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True,
                        detokenize=False)
    points = []
    # the first batch twice: its first pass warms the engine (oneDNN kernels
    # per shape, allocator) and is not recorded
    for n_batch, batch in enumerate([args.batches[0]] + args.batches):
        ids = [f"{n_batch}-{i}" for i in range(batch)]
        for rid in ids:
            engine.add_request(rid, {"prompt_token_ids": [rng.randrange(vocab)
                                                          for _ in range(args.context)]}, sp)
        scheduled.clear()

        def pure(s):  # every running request decodes one token, nothing else
            return s[0] == s[1] == s[2] and s[0] > 0

        t0 = time.perf_counter()
        while not (len(scheduled) >= 4 and all(pure(s) for s in scheduled[-4:])):
            engine.step()
        fill_s = time.perf_counter() - t0
        # the mean context of the measured steps: the first requests in have
        # decoded while the last ones were prefilled
        context = sum(r.num_computed_tokens for r in core.scheduler.running) \
            / len(core.scheduler.running) + args.steps / 2
        times, running = [], []
        while len(times) < args.steps:
            n = len(scheduled)
            t = time.perf_counter()
            engine.step()
            dt = time.perf_counter() - t
            if len(scheduled) == n + 1 and pure(scheduled[-1]):
                times.append(dt)
                running.append(scheduled[-1][0])
            elif len(scheduled) > n + 200:
                raise RuntimeError("no pure decode steps")
        engine.abort_request(ids)
        while engine.has_unfinished_requests():
            engine.step()
        if n_batch == 0:
            continue
        tps = sum(running) / sum(times)
        lim = decode_step_limit(MODELS[args.one], context, round(sum(running) / len(running)),
                                NBYTES[args.dtype], args.peaks[f"matmul_flops_{args.dtype}"],
                                args.peaks["copy_bandwidth_bytes_per_s"])
        points.append({"batch": batch, "running": round(sum(running) / len(running), 1),
                       "context": round(context, 1),
                       "max_running": max(running), "tokens_per_s": round(tps, 1),
                       "ms_per_step": round(1e3 * sum(times) / len(times), 2),
                       "limit_tokens_per_s": lim["limit_tokens_per_s"], "bound": lim["bound"],
                       "fraction_of_limit": round(tps / lim["limit_tokens_per_s"], 3),
                       "fill_seconds": round(fill_s, 1)})
        print(f"{time.strftime('%H:%M:%S')} {args.one} B={batch}: {points[-1]}", flush=True)
    return {"model": args.one, "impl": impl, "label": f"{args.one} {LABELS[impl]}",
            "setting": engine_setting(engine.vllm_config), "start_seconds": round(start_s, 1),
            "kv_capacity_tokens": cache.num_gpu_blocks * cache.block_size,
            "block_size": cache.block_size, "points": points}


def plot(result: dict, out: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, m in enumerate(result["models"]):
        pts = m["points"]
        color = "C0" if m["impl"] == "block" else "C1"
        axes[0].plot([p["batch"] for p in pts], [p["tokens_per_s"] for p in pts],
                     "o-" if m["impl"] == "block" else "s--", color=color, label=m["label"])
        axes[0].plot([p["batch"] for p in pts], [p["limit_tokens_per_s"] for p in pts], ":",
                     color=color, alpha=.6, label=f"{m['model']} roofline limit")
        axes[1].plot([p["batch"] for p in pts], [p["running"] for p in pts],
                     "o-" if m["impl"] == "block" else "s--", color=color, label=m["model"])
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("requests handed to the engine")
        ax.grid(alpha=.3, which="both")
        ax.legend(fontsize=7)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("generated tokens / s (pure decode steps)")
    axes[1].set_ylabel("requests running (concurrency reached)")
    kv = result["kv_gib"]
    axes[0].set_title(f"decode, prompts of {result['context']} tokens, {result['dtype']}, "
                      f"{kv:g} GiB KV per engine", fontsize=9)
    axes[1].set_title("what the KV budget holds", fontsize=9)
    fig.tight_layout()
    f = out / f"batch_sweep_{result['dtype']}.png"
    fig.savefig(f, dpi=110)
    plt.close(fig)
    return f.name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="vanilla_70,block_main_b4_85",
                    help="one vanilla and one block model of benchmarks/models.py")
    ap.add_argument("--batches", default="8,16,32,64,128,256,512")
    ap.add_argument("--kv-gib", type=float, default=4.0)
    ap.add_argument("--dtype", default="bfloat16", choices=sorted(NBYTES))
    ap.add_argument("--context", type=int, default=1072)
    ap.add_argument("--steps", type=int, default=8, help="pure decode steps timed per batch")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/vllm_block_bench"))
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--one", choices=sorted(MODELS), help=argparse.SUPPRESS)
    ap.add_argument("--peaks", help=argparse.SUPPRESS)
    ap.add_argument("--result-file", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.batches = [int(b) for b in args.batches.split(",")]
    args.cache.mkdir(parents=True, exist_ok=True)
    if args.one:  # a child: one model, its JSON in --result-file
        args.peaks = json.loads(args.peaks)
        args.result_file.write_text(json.dumps(sweep_one(args)))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    peaks = measure_peaks("cpu", seconds=2.0)
    models = []
    for name in args.models.split(","):  # each engine in its own process, one after the other
        part = args.out / f".batch_sweep_{name}.json"
        subprocess.run([sys.executable, __file__, "--one", name, "--peaks", json.dumps(peaks),
                        "--result-file", str(part), *sys.argv[1:]], check=True)
        models.append(json.loads(part.read_text()))
        part.unlink()
    result = {"command": "python benchmarks/batch_sweep.py " + " ".join(sys.argv[1:]),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "wall_seconds": round(time.time() - t0, 1), "machine": machine(),
              "peaks": peaks, "dtype": args.dtype, "kv_gib": args.kv_gib,
              "context": args.context, "steps": args.steps, "models": models}
    by = {m["impl"]: {p["batch"]: p for p in m["points"]} for m in models}
    result["block_over_vanilla"] = {
        b: round(by["block"][b]["tokens_per_s"] / by["gptj"][b]["tokens_per_s"], 3)
        for b in args.batches}
    result["plot"] = plot(result, args.out)
    (args.out / f"batch_sweep_{args.dtype}.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["block_over_vanilla"]))


if __name__ == "__main__":
    main()
