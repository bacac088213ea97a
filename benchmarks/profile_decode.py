"""Where one decode step of the Block Transformer goes inside vLLM.

Runs an in-process engine on a randomly initialised model with the
dimensions of one of the original configs (default `block_main_b4_19`: 3+3
layers x 512, vocabulary 50304, L=4, R=2), prefills `--batch` prompts of
`--context` tokens and then times only *pure decode* steps (every one of the
batch's requests has one new token: the scheduler's output is checked), so
prefill chunks never count as decode at large batches. For each step it times
the metadata build (the host-built step plan), the block decoder, the token
decoder, the attention inside both, the LM head (compute_logits) and the rest
of the engine step (scheduler, input preparation, sampling, output
processing), then runs `--profile-steps` more pure decode steps under
torch.profiler and keeps its op table. Each part is set against its own
limit measured in the same run: GEMM FLOPs at the measured matmul peak, the
block decoder's paged attention KV bytes at the measured copy bandwidth.

    python benchmarks/profile_decode.py [--model block_main_b4_19] [--batch 64]
        [--context 64] [--dtype float32] [--fast-prefill] [--kv-gib 2]
    # the paper-regime decode run of a throughput JSON: its model, dtype, the
    # batch vLLM reached and the mean context of its decode steps
    python benchmarks/profile_decode.py --like benchmarks/results/throughput_cpu.json

Writes benchmarks/results/decode_profile_<model>_<dtype>_b<batch>_ctx<context>.json
and the op table beside it (.ops.txt).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from collections import defaultdict
from itertools import chain
from pathlib import Path

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the model lives in this process

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from models import MODELS, decode_parts, decode_step_limit  # noqa: E402
from throughput import BATCH_MAX, NBYTES, PAPER, make_checkpoint, measure_peaks  # noqa: E402


def like(path: Path, column: str = "block-fast") -> dict:
    """The paper-regime decode-heavy run of the (largest, bf16) block model in a
    throughput JSON: its model, dtype, batch reached, mean decode context, roofline fraction."""
    d = json.loads(path.read_text())
    m = max((m for m in d["medians"] if m["table"] in (PAPER, BATCH_MAX)
             and m["workload"] == "decode-heavy" and m["column"] == column),
            key=lambda m: (m["params"], m["dtype"] == "bfloat16"))
    return {"model": m["model"], "dtype": m["dtype"], "batch": m["max_running"],
            "context": m["prompt"] + m["new"] // 2, "fast_prefill": column == "block-fast",
            "throughput_run": {k: m[k] for k in ("model", "dtype", "workload", "prompt", "new",
                                                 "requests", "max_running",
                                                 "median_tokens_per_s", "fraction_of_limit")}
            | {"limit_tokens_per_s": m["roofline"]["limit_tokens_per_s"]}}


class Timers:
    """Wall-clock per named part, per engine step."""

    def __init__(self) -> None:
        self.step: dict[str, float] = defaultdict(float)
        self.steps: list[dict[str, float]] = []

    def wrap(self, obj, name: str, label: str) -> None:
        fn = getattr(obj, name)

        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.step[label] += time.perf_counter() - t

        setattr(obj, name, timed)

    def hook(self, module, label: str) -> None:
        """Time a module's forward (pre/post hooks work whatever its code is)."""
        started: list[float] = []
        module.register_forward_pre_hook(lambda *_: started.append(time.perf_counter()))

        def done(*_):
            self.step[label] += time.perf_counter() - started.pop()

        module.register_forward_hook(done)


def attention_modules(decoder) -> list:
    """The attention itself (not the projections around it) inside a decoder:
    vLLM's paged Attention layers, and the token decoder's window attention."""
    from vllm.model_executor.layers.attention import Attention

    return [m for m in decoder.modules()
            if isinstance(m, Attention) or "Window" in type(m).__name__]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="block_main_b4_19",
                    choices=[n for n, m in MODELS.items() if m.kind == "block"])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--context", type=int, default=64,
                    help="prompt length: the decode steps run at about this context")
    ap.add_argument("--steps", type=int, default=24, help="pure decode steps timed")
    ap.add_argument("--profile-steps", type=int, default=8,
                    help="pure decode steps under torch.profiler (op table)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--fast-prefill", action="store_true",
                    help="kv_sharing_fast_prefill (the block model's throughput setting)")
    ap.add_argument("--kv-gib", type=float, default=2.0, help="KV cache memory")
    ap.add_argument("--block-size", type=int, default=None,
                    help="vLLM's page size in tokens (default: the plugin's choice)")
    ap.add_argument("--like", type=Path, default=None,
                    help="take model, dtype, batch and context from the paper-regime "
                         "decode-heavy block run of this throughput JSON")
    ap.add_argument("--decode", default="auto", choices=["auto", "static", "exact"],
                    help="the decode step (--additional-config block_transformer_decode)")
    ap.add_argument("--compiled", action="store_true",
                    help="vLLM's default compilation instead of --enforce-eager (the parts "
                         "inside a compiled step are then not timed separately)")
    ap.add_argument("--by-shape", action="store_true",
                    help="also write the op table grouped by input shapes (.shapes.txt)")
    ap.add_argument("--tag", default="", help="suffix of the file names")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/vllm_block_bench"))
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    source = like(args.like) if args.like else {}
    for k in ("model", "dtype", "batch", "context", "fast_prefill"):
        if k in source:
            setattr(args, k, source[k])

    import torch
    from vllm import LLM, SamplingParams

    # a shared machine's rates drift: the peaks are measured before the engine
    # starts and again after the timed steps, and the higher of each is used
    peaks_before = measure_peaks("cpu", seconds=0.5)
    args.cache.mkdir(parents=True, exist_ok=True)
    path = make_checkpoint(args.model, "block", args.dtype, args.cache)
    warmup = 4
    # every request decodes through the measured steps (none finishes): the
    # first request admitted decodes a token in every step of the batch's
    # prefill, whose 2048-token budget the running requests' decodes share
    budget = max(2048, args.batch)
    fill_steps = -(-args.context * args.batch // max(budget - args.batch, budget // 8))
    new_tokens = fill_steps + warmup + args.steps + args.profile_steps + 16
    llm = LLM(model=str(path), skip_tokenizer_init=True, dtype=args.dtype,
              enforce_eager=not args.compiled,
              additional_config={"block_transformer_decode": args.decode},
              max_model_len=args.context + new_tokens + 8,
              max_num_seqs=args.batch, max_num_batched_tokens=budget,
              kv_cache_memory_bytes=int(args.kv_gib * (1 << 30)), block_size=args.block_size,
              enable_prefix_caching=False, seed=0,
              kv_sharing_fast_prefill=args.fast_prefill)
    engine = llm.llm_engine
    core = engine.engine_core.engine_core
    runner = core.model_executor.driver_worker.worker.model_runner
    model = runner.model
    timers = Timers()
    for group in chain.from_iterable(runner.attn_groups):
        for builder in group.metadata_builders:  # the step plan is built here
            timers.wrap(builder, "build", "metadata_build")
    timers.wrap(model, "forward", "model_forward")
    timers.wrap(model, "compute_logits", "lm_head")
    if not args.compiled:  # a timer inside a compiled step would break its graph
        for dec in ("block_decoder", "token_decoder"):
            timers.hook(getattr(model, dec), dec)
            for m in attention_modules(getattr(model, dec)):
                timers.hook(m, f"{dec}_attention")
    scheduled: list[tuple[int, int]] = []  # (requests, tokens) of each step
    schedule = core.scheduler.schedule

    def recorded_schedule(*args, **kwargs):
        out = schedule(*args, **kwargs)
        scheduled.append((len(out.num_scheduled_tokens), out.total_num_scheduled_tokens))
        return out

    core.scheduler.schedule = recorded_schedule
    step_fn = core.step_fn

    def timed_step():
        timers.step.clear()
        t = time.perf_counter()
        out = step_fn()
        timers.step["engine_step"] = time.perf_counter() - t
        timers.steps.append(dict(timers.step))
        return out

    core.step_fn = timed_step
    rng = random.Random(0)
    vocab = MODELS[args.model].vocab
    sp = SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True,
                        detokenize=False)
    for i in range(args.batch):
        engine.add_request(str(i), {"prompt_token_ids": [rng.randrange(vocab)
                                                         for _ in range(args.context)]}, sp)

    def pure_decode(i: int) -> bool:
        return scheduled[i] == (args.batch, args.batch)

    t0 = time.perf_counter()
    while not (len(scheduled) > warmup and all(pure_decode(i) for i in range(-warmup, 0))):
        engine.step()
    prefill_s = time.perf_counter() - t0
    first = len(timers.steps)
    for _ in range(args.steps):
        engine.step()
    decode = [s for i, s in enumerate(timers.steps[first:], first) if pure_decode(i)]
    assert len(decode) == args.steps, "a request finished during the measured steps"
    first = len(scheduled)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                record_shapes=args.by_shape) as prof:
        for _ in range(args.profile_steps):
            engine.step()
    assert all(pure_decode(i) for i in range(first, len(scheduled)))
    ops = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=40)
    peaks_after = measure_peaks("cpu", seconds=0.5)
    peaks = {k: max(v, peaks_after[k]) for k, v in peaks_before.items()}

    parts = ["metadata_build", "block_decoder", "token_decoder", "block_decoder_attention",
             "token_decoder_attention", "lm_head", "model_forward", "engine_step"]

    def per_step(stat) -> dict[str, float]:
        out = {p: stat(s.get(p, 0.0) for s in decode) * 1e3 for p in parts}
        out["forward_other"] = out["model_forward"] - out["block_decoder"] \
            - out["token_decoder"]
        out["engine_other"] = out["engine_step"] - out["model_forward"] - out["lm_head"] \
            - out["metadata_build"]
        return out

    # medians: a typical step; means: the block decoder's 1 step in L included
    med, mean = per_step(statistics.median), per_step(statistics.mean)
    spec, nbytes = MODELS[args.model], NBYTES[args.dtype]
    context = args.context + (new_tokens - args.steps) // 2  # about the measured steps'
    flops, bandwidth = peaks[f"matmul_flops_{args.dtype}"], peaks["copy_bandwidth_bytes_per_s"]
    need = decode_parts(spec, context, args.batch, nbytes)
    limits_ms = {
        "block_decoder_gemm": 2 * need["block_decoder_gemm_macs"] / flops * 1e3,
        "token_decoder_gemm": 2 * need["token_decoder_gemm_macs"] / flops * 1e3,
        "lm_head_gemm": 2 * need["lm_head_macs"] / flops * 1e3,
        "block_attention_kv_read": need["block_attention_kv_bytes"] / bandwidth * 1e3,
    }
    roofline = decode_step_limit(spec, context, args.batch, nbytes, flops, bandwidth)
    step_limit_ms = args.batch / roofline["limit_tokens_per_s"] * 1e3
    result = {
        "config": f"{args.model} dimensions, random weights", "model": args.model,
        "batch": args.batch, "dtype": args.dtype, "context": context,
        "prompt": args.context, "fast_prefill": args.fast_prefill,
        "enforce_eager": not args.compiled, "decode": args.decode,
        "block_size": llm.llm_engine.vllm_config.cache_config.block_size,
        "torch_threads": torch.get_num_threads(),
        "median_ms_per_decode_step": {k: round(v, 3) for k, v in med.items()},
        "mean_ms_per_decode_step": {k: round(v, 3) for k, v in mean.items()},
        "share_of_engine_step": {k: round(v / mean["engine_step"], 3) for k, v in mean.items()
                                 if k not in ("engine_step", "model_forward")},
        # each part against its own limit (mean ms / limit ms: 1.0 is at the limit)
        "part_limits_ms": {k: round(v, 3) for k, v in limits_ms.items()},
        "part_over_limit": {
            "token_decoder / its GEMMs": round(mean["token_decoder"]
                                               / limits_ms["token_decoder_gemm"], 2),
            "block_decoder / its GEMMs + KV read": round(
                mean["block_decoder"] / (limits_ms["block_decoder_gemm"]
                                         + limits_ms["block_attention_kv_read"]), 2),
            "block_attention / its KV read": round(
                mean["block_decoder_attention"] / limits_ms["block_attention_kv_read"], 2),
            "lm_head / its GEMM": round(mean["lm_head"] / limits_ms["lm_head_gemm"], 2)},
        "decode_steps_measured": len(decode),
        "engine_step_ms": [round(s["engine_step"] * 1e3, 2) for s in decode],
        "prefill_s": round(prefill_s, 1),
        # decode-only rate at this batch and context, and its roofline limit
        "decode_tokens_per_s": round(args.batch / mean["engine_step"] * 1e3, 1),
        "decode_roofline": roofline,
        "step_limit_ms": round(step_limit_ms, 3),
        "peaks": peaks,
        "peaks_before_and_after": [peaks_before, peaks_after],
        "throughput_run": source.get("throughput_run"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d"),
    }
    result["decode_fraction_of_limit"] = float(
        f"{step_limit_ms / mean['engine_step']:.3g}")
    stem = (f"decode_profile_{args.model}_{args.dtype}_b{args.batch}"
            f"_ctx{args.context}{args.tag}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / f"{stem}.ops.txt").write_text(
        f"torch.profiler, {args.profile_steps} pure decode steps, self CPU time "
        f"(python benchmarks/profile_decode.py {' '.join(sys.argv[1:])})\n\n{ops}\n")
    if args.by_shape:
        (args.out / f"{stem}.shapes.txt").write_text(prof.key_averages(
            group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=60))
    print(json.dumps(result, indent=2))
    print(ops)


if __name__ == "__main__":
    main()
