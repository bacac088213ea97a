"""Where one decode step of the Block Transformer goes inside vLLM.

Runs an in-process engine on a randomly initialised model with the
dimensions of one of the original configs (default `block_main_b4_19`: 3+3
layers x 512, vocabulary 50304, L=4, R=2), decodes a full batch at a given
context, and times the parts of every all-decode step: the step plan (index
maths, built on the host by the token-state metadata builder), the block
decoder, the token decoder, the attention inside both (the `attend` calls:
paged over blocks, or local within a block), the LM head (compute_logits),
and the rest of the engine step (scheduler, input preparation, sampling,
output processing).

    python benchmarks/profile_decode.py [--model block_main_b4_19] [--batch 64]
        [--context 64] [--dtype float32] [--fast-prefill]
    # the paper-regime decode run of a throughput JSON: its model, dtype, the
    # batch vLLM reached and the mean context of its decode steps
    python benchmarks/profile_decode.py --like benchmarks/results/throughput_cpu.json

Writes benchmarks/results/decode_profile_<model>_<dtype>_b<batch>_ctx<context>.json.
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
from pathlib import Path

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the model lives in this process

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from models import MODELS, decode_step_limit  # noqa: E402
from throughput import NBYTES, PAPER, make_checkpoint, measure_peaks  # noqa: E402


def like(path: Path, column: str = "block-fast") -> dict:
    """The paper-regime decode-heavy run of the block model in a throughput
    JSON: its model, dtype, batch reached, mean decode context, roofline fraction."""
    d = json.loads(path.read_text())
    m = max((m for m in d["medians"] if m["table"] == PAPER and m["workload"] == "decode-heavy"
             and m["column"] == column), key=lambda m: m["params"])
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

    def wrap_attend(self, attention, label: str) -> None:
        """Time the `attend` callable a NeoXAttention module is handed (the
        attention itself, without the projections around it)."""
        fn = attention.forward

        def forward(x, positions, attend):
            def timed(*args):
                t = time.perf_counter()
                try:
                    return attend(*args)
                finally:
                    self.step[label] += time.perf_counter() - t
            return fn(x, positions, timed)

        attention.forward = forward


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="block_main_b4_19",
                    choices=[n for n, m in MODELS.items() if m.kind == "block"])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--context", type=int, default=64,
                    help="prompt length: the decode steps run at about this context")
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--fast-prefill", action="store_true",
                    help="kv_sharing_fast_prefill (the block model's throughput setting)")
    ap.add_argument("--like", type=Path, default=None,
                    help="take model, dtype, batch and context from the paper-regime "
                         "decode-heavy block run of this throughput JSON")
    ap.add_argument("--decode", default="auto", choices=["auto", "static", "exact"],
                    help="the decode step (--additional-config block_transformer_decode)")
    ap.add_argument("--compiled", action="store_true",
                    help="vLLM's default compilation instead of --enforce-eager (the parts "
                         "inside a compiled step are then not timed separately)")
    ap.add_argument("--tag", default="", help="suffix of the JSON file name")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/vllm_block_bench"))
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    source = like(args.like) if args.like else {}
    for k in ("model", "dtype", "batch", "context", "fast_prefill"):
        if k in source:
            setattr(args, k, source[k])

    from vllm import LLM, SamplingParams

    from vllm_block import cache as block_cache

    peaks = measure_peaks("cpu", seconds=0.5)
    args.cache.mkdir(parents=True, exist_ok=True)
    path = make_checkpoint(args.model, "block", args.dtype, args.cache)
    # eager: the parts are timed by Python wrappers, which a compiled graph would
    # bypass (the throughput run's own mode is in its JSON)
    llm = LLM(model=str(path), skip_tokenizer_init=True, dtype=args.dtype,
              enforce_eager=not args.compiled,
              additional_config={"block_transformer_decode": args.decode},
              max_model_len=args.context + args.new_tokens + 8,
              max_num_seqs=args.batch, max_num_batched_tokens=max(2048, args.batch),
              kv_cache_memory_bytes=2 << 30, enable_prefix_caching=False, seed=0,
              kv_sharing_fast_prefill=args.fast_prefill)
    core = llm.llm_engine.engine_core.engine_core
    runner = core.model_executor.driver_worker.worker.model_runner
    model = runner.model
    timers = Timers()
    # the plan is built on the host: the exact step's, or the static decode step's
    timers.wrap(block_cache, "device_step_plan", "step_plan")
    timers.wrap(block_cache, "host_decode_plan", "step_plan")
    timers.wrap(block_cache.DecodePlanBuffer, "upload", "step_plan")
    timers.wrap(model, "forward", "model_forward")
    timers.wrap(model, "compute_logits", "lm_head")
    if not args.compiled:  # a timer inside a compiled step would break its graph
        timers.wrap(model.token_decoder, "forward_decode", "token_decoder")
        timers.wrap(model.block_decoder, "forward", "block_decoder")
        timers.wrap(model.token_decoder, "forward", "token_decoder")
        for dec in ("block_decoder", "token_decoder"):
            for layer in getattr(model, dec).layers:
                timers.wrap_attend(layer.attention, f"{dec}_attention")
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
    prompts = [{"prompt_token_ids": [rng.randrange(vocab) for _ in range(args.context)]}
               for _ in range(args.batch)]
    sp = SamplingParams(temperature=0.0, max_tokens=args.new_tokens, ignore_eos=True,
                        detokenize=False)
    llm.generate(prompts[:2], sp, use_tqdm=False)  # warm-up
    timers.steps.clear()
    t = time.perf_counter()
    llm.generate(prompts, sp, use_tqdm=False)
    wall = time.perf_counter() - t
    # all-decode steps: the block decoder ran on <= batch entries and the
    # forward was short; take the middle of the run, past the prefill steps
    steps = [s for s in timers.steps if "model_forward" in s]
    decode = steps[len(steps) // 3: -3]
    parts = ["step_plan", "block_decoder", "token_decoder", "block_decoder_attention",
             "token_decoder_attention", "lm_head", "model_forward", "engine_step"]
    def per_step(stat) -> dict[str, float]:
        out = {p: stat(s.get(p, 0.0) for s in decode) * 1e3 for p in parts}
        # the step plan is built by the metadata builder, before the forward
        out["forward_other"] = out["model_forward"] - out["block_decoder"] \
            - out["token_decoder"]
        out["engine_other"] = out["engine_step"] - out["model_forward"] - out["lm_head"] \
            - out["step_plan"]
        return out

    # medians: a typical step; means: the block decoder's 1 step in L included
    med, mean = per_step(statistics.median), per_step(statistics.mean)
    # block-closing steps (1 in L) vs the others
    with_block = [s["engine_step"] for s in decode if s.get("block_decoder")]
    without = [s["engine_step"] for s in decode if not s.get("block_decoder")]
    result = {
        "config": f"{args.model} dimensions, random weights", "model": args.model,
        "batch": args.batch, "dtype": args.dtype, "context": args.context,
        "new_tokens": args.new_tokens, "fast_prefill": args.fast_prefill,
        "enforce_eager": not args.compiled, "decode": args.decode,
        "median_ms_per_decode_step": {k: round(v, 3) for k, v in med.items()},
        "mean_ms_per_decode_step": {k: round(v, 3) for k, v in mean.items()},
        "share_of_engine_step": {k: round(v / mean["engine_step"], 3) for k, v in mean.items()
                                 if k not in ("engine_step", "model_forward")},
        "median_step_ms_block_closing": round(statistics.median(with_block) * 1e3, 3)
        if with_block else None,
        "median_step_ms_within_block": round(statistics.median(without) * 1e3, 3)
        if without else None,
        "decode_steps_measured": len(decode),
        # decode-only rate at this batch and context, and its roofline limit
        "decode_tokens_per_s": round(args.batch / mean["engine_step"] * 1e3, 1),
        "decode_roofline": decode_step_limit(
            MODELS[args.model], args.context, args.batch, NBYTES[args.dtype],
            peaks[f"matmul_flops_{args.dtype}"], peaks["copy_bandwidth_bytes_per_s"]),
        "peaks": peaks,
        "generated_tokens_per_s": round(args.batch * args.new_tokens / wall, 1),
        "throughput_run": source.get("throughput_run"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d"),
    }
    result["decode_fraction_of_limit"] = float(
        f"{result['decode_tokens_per_s'] / result['decode_roofline']['limit_tokens_per_s']:.3g}")
    out = args.out / (f"decode_profile_{args.model}_{args.dtype}_b{args.batch}"
                      f"_ctx{args.context}{args.tag}.json")
    args.out.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
