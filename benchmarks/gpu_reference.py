"""The paper's Table 1 setting with plain PyTorch only (no vLLM): block vs vanilla.

Block model: this package's reference `BlockTransformerForCausalLM.generate`
(cached: block-decoder cache one entry per block, token-decoder cache of at
most R + L - 1 entries). Vanilla: transformers' `GPTNeoXForCausalLM.generate`
(KV cache, SDPA attention). Random weights, bf16, the paper's three pairs
(vanilla 70M / block 170M, 160M / 420M, 410M / 1.4B), prefill-heavy
(2048 -> 128) and decode-heavy (128 -> 2048), batch maximised for the GPU's
memory (largest power of two whose estimated memory fits, halved on OOM), as
the paper's `measure_generation_time.py` auto-tunes its batch size.

Needs only torch >= 2.11 and transformers 5.x (a bare CUDA image) plus this
repository on the path (`vllm_block` imports no vLLM code for the reference):

    python benchmarks/gpu_reference.py                   # CUDA, about 6-8 min on an H200
    python benchmarks/gpu_reference.py --scale tiny --device cpu   # code path check

Writes benchmarks/results/reference_<scale>.json and throughput_reference_<scale>_*.png.
Each run is bounded by --budget-s overall: a model that would not fit in the
remaining time is recorded as skipped rather than overrunning.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from models import MODELS, PAPER_PAIRS  # noqa: E402

SCALES = {
    "paper": dict(workloads=[("prefill-heavy", 2048, 128), ("decode-heavy", 128, 2048)],
                  pairs=[(v, b) for v, b, _, _ in PAPER_PAIRS], max_batch=1024,
                  dtype="bfloat16"),
    "tiny": dict(workloads=[("prefill-heavy", 32, 4), ("decode-heavy", 4, 32)],
                 pairs=[("tiny_vanilla", "tiny_block")], max_batch=8, dtype="float32"),
}


def build(name: str, dtype, device: str):
    import torch

    spec = MODELS[name]
    torch.manual_seed(0)
    with torch.device(device):
        if spec.kind == "block":
            from vllm_block import BlockTransformerConfig, BlockTransformerForCausalLM

            model = BlockTransformerForCausalLM(BlockTransformerConfig(
                **{**spec.block_config(), "max_position_embeddings": 4096}))
        else:
            from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

            model = GPTNeoXForCausalLM(GPTNeoXConfig(
                **{**spec.hf_config(), "max_position_embeddings": 4096}))
    return model.to(dtype).eval()


def generate(model, kind: str, ids, new: int):
    import torch

    with torch.no_grad():
        if kind == "block":
            return model.generate(ids, max_new_tokens=new)
        return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                              min_new_tokens=new, do_sample=False, pad_token_id=0,
                              use_cache=True)


def first_batch(spec, prompt: int, new: int, nbytes: int, free_bytes: float,
                max_batch: int) -> int:
    """Largest power of two whose cache (x2: caches grow by concatenation)
    plus per-request activations fit into `free_bytes`."""
    ctx = prompt + new
    hidden = getattr(spec, "hidden", None) or spec.token_hidden
    per_req = 2 * spec.cache_bytes(ctx, nbytes) + 16 * prompt * hidden * nbytes \
        + 2 * spec.vocab * 4
    b = 2 ** int(math.log2(max(1, free_bytes / per_req)))
    return max(1, min(b, max_batch))


def main(argv: list[str] | None = None) -> dict:
    import torch

    from throughput import machine, measure_peaks, plot, summarise

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", choices=sorted(SCALES), default="paper")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--budget-s", type=float, default=420.0,
                    help="stop starting runs after this many seconds")
    ap.add_argument("--memory-fraction", type=float, default=0.8)
    args = ap.parse_args(argv)
    scale = SCALES[args.scale]
    dtype = getattr(torch, scale["dtype"])
    nbytes = 2 if scale["dtype"] == "bfloat16" else 4
    t0 = time.time()

    def log(msg):
        print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)

    peaks = measure_peaks(args.device, seconds=0.3 if args.scale == "tiny" else 1.0)
    log("peaks: " + ", ".join(f"{k} {v:.3g}" for k, v in peaks.items()))
    runs, skipped = [], []
    rng = random.Random(0)
    for gi, pair in enumerate(scale["pairs"]):
        for name in pair:
            spec = MODELS[name]
            model = build(name, dtype, args.device)
            for wl, prompt, new in scale["workloads"]:
                if time.time() - t0 > args.budget_s:
                    skipped.append({"model": name, "workload": wl, "why": "time budget"})
                    log(f"  {name} {wl}: skipped (time budget)")
                    continue
                if args.device == "cuda":
                    torch.cuda.empty_cache()
                    free = torch.cuda.mem_get_info()[0] * args.memory_fraction
                else:
                    free = 2 << 30
                batch = first_batch(spec, prompt, new, nbytes, free, scale["max_batch"])
                while True:
                    ids = torch.tensor([[rng.randrange(spec.vocab) for _ in range(prompt)]
                                        for _ in range(batch)], device=args.device)
                    try:
                        generate(model, spec.kind, ids[:1, :8], 2)  # warm-up
                        if args.device == "cuda":
                            torch.cuda.synchronize()
                        t = time.perf_counter()
                        out = generate(model, spec.kind, ids, new)
                        if args.device == "cuda":
                            torch.cuda.synchronize()
                        elapsed = time.perf_counter() - t
                        break
                    except torch.OutOfMemoryError:
                        del ids
                        torch.cuda.empty_cache()
                        if batch == 1:
                            raise
                        batch //= 2
                        log(f"  {name} {wl}: OOM, batch -> {batch}")
                generated = (out.shape[1] - prompt) * batch
                assert generated == batch * new
                tps = generated / elapsed
                log(f"  [{scale['dtype']} {wl}] {name:20s} hf batch {batch:5d}: {tps:10.1f} "
                    f"tok/s ({elapsed:.1f} s)")
                runs.append({"group": gi, "dtype": scale["dtype"], "workload": wl,
                             "prompt": prompt, "new": new, "requests": batch, "model": name,
                             "column": "hf", "repeat": 0, "tokens_per_s": tps,
                             "seconds": elapsed, "generated": generated, "max_running": batch})
                del out, ids
            del model
            if args.device == "cuda":
                torch.cuda.empty_cache()
    summary = summarise(runs, [], peaks)
    tag = f"reference_{args.scale}"
    result = {"command": "python benchmarks/gpu_reference.py " + " ".join(
                  sys.argv[1:] if argv is None else argv),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "wall_seconds": round(time.time() - t0, 1), "machine": machine(),
              "peaks": peaks, "scale": args.scale, "device": args.device,
              "skipped": skipped, **summary, "runs": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    result["plots"] = plot(summary, args.out, tag)
    (args.out / f"{tag}.json").write_text(json.dumps(result, indent=1) + "\n")
    for r in summary["ratios"]:
        log(f"  {r['workload']:13s} {r['block']}/{r['vanilla']}: {r['ratio']:.2f}x"
            + (f" (paper {r['paper_ratio']}x)" if r["paper_ratio"] else ""))
    log(f"done in {result['wall_seconds']:.0f} s: {args.out}/{tag}.json")
    return result


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
