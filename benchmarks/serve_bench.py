"""Online serving: `vllm bench serve` against `vllm serve`, block model vs vanilla.

For each model of a pair, starts `vllm serve` on 127.0.0.1 (the random-weight
checkpoint `throughput.py` builds, with the same engine arguments as its
column: the block model with fast prefill and whatever the plugin's config
hook sets; vanilla as vLLM's native GPT-J at vLLM's defaults), under the same
KV budget, then runs `vllm bench serve --dataset-name random` (Poisson
arrivals, ignore_eos) at each request rate of a sweep. Records output
throughput, request throughput, the maximum concurrency reached, TTFT and
TPOT medians and p99. The random checkpoints carry no tokenizer, and there is
no model hub here: each gets an offline word-level tokenizer with one word
per vocabulary id ("t0" ... "t50303"), which `vllm bench serve`'s random
dataset decodes and re-encodes exactly.

    python benchmarks/serve_bench.py                  # --scale cpu: about 5 min, 2 cores
    python benchmarks/serve_bench.py --scale tiny --out /tmp/s   # code path only

Writes benchmarks/results/serve_<scale>.json and serve_<scale>.png
(throughput and latency vs request rate).
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from models import MODELS  # noqa: E402
from throughput import COLUMN_ARGS, IMPL, machine, make_checkpoint  # noqa: E402

SCALES = {
    # decode step about 35-45 ms at batch 16-32 here: 128 output tokens take
    # ~5 s a request, so ~4 req/s saturates either model
    "cpu": dict(models=[("vanilla_70", "vanilla-gptj"), ("block_main_b4_85", "block-fast")],
                dtype="bfloat16", input_len=128, output_len=128, num_prompts=24,
                rates=[1.0, 2.0, 4.0], kv_budget=512 << 20, max_num_seqs=64),
    "tiny": dict(models=[("tiny_vanilla", "vanilla-gptj"), ("tiny_block", "block-fast")],
                 dtype="float32", input_len=16, output_len=8, num_prompts=4,
                 rates=[4.0, 16.0, 64.0], kv_budget=8 << 20, max_num_seqs=4),
}
PERCENTILES = (50, 99)


def add_tokenizer(path: Path, vocab: int) -> Path:
    """A word-level tokenizer covering every id of the model ("t<id>",
    whitespace separated), written offline beside the checkpoint."""
    if (path / "tokenizer.json").exists():
        return path
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="t0",
                            eos_token=f"t{vocab - 1}").save_pretrained(path)
    return path


def cli_flags(kwargs: dict) -> list[str]:
    """Engine keyword arguments as `vllm serve` flags."""
    flags = []
    for k, v in kwargs.items():
        flag = "--" + k.replace("_", "-")
        flags += [flag] if v is True else [flag, str(v)]
    return flags


def serve_args(column: str, cfg: dict) -> list[str]:
    return ["--dtype", cfg["dtype"], "--max-model-len",
            str(cfg["input_len"] + cfg["output_len"] + 16), "--served-model-name", "model",
            "--max-num-seqs", str(cfg["max_num_seqs"]), "--no-enable-prefix-caching",
            "--seed", "0", *cli_flags({"kv_cache_memory_bytes": cfg["kv_budget"],
                                       **COLUMN_ARGS[column]})]


def bench(url: str, tokenizer: Path, rate: float, cfg: dict, out: Path, log: Path) -> dict:
    """One `vllm bench serve` run; its result JSON."""
    name = f"bench_{rate:g}.json"
    cmd = [str(Path(sys.executable).with_name("vllm")), "bench", "serve", "--backend", "vllm",
           "--base-url", url, "--model", "model", "--tokenizer", str(tokenizer),
           "--dataset-name", "random", "--random-input-len", str(cfg["input_len"]),
           "--random-output-len", str(cfg["output_len"]), "--random-range-ratio", "0",
           "--num-prompts", str(cfg["num_prompts"]), "--request-rate", f"{rate:g}",
           "--ignore-eos", "--seed", "0", "--disable-tqdm", "--num-warmups", "2",
           "--percentile-metrics", "ttft,tpot,itl,e2el",
           "--metric-percentiles", ",".join(map(str, PERCENTILES)),
           "--save-result", "--result-dir", str(out), "--result-filename", name]
    with open(log, "a") as f:
        subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return json.loads((out / name).read_text())


KEEP = ["completed", "duration", "request_throughput", "output_throughput",
        "max_concurrent_requests"] + [f"{s}_{m}_ms" for m in ("ttft", "tpot", "itl", "e2el")
                                      for s in ["median"] + [f"p{p}" for p in PERCENTILES]
                                      if s != "p50"]


def run_model(name: str, column: str, cfg: dict, args, log) -> dict:
    from vllm_block.tools.serving import vllm_serve

    path = make_checkpoint(name, IMPL[column], cfg["dtype"], args.cache)
    add_tokenizer(path, MODELS[name].vocab)
    work = args.out / f"serve_{args.scale}_runs" / f"{name}-{column}"
    work.mkdir(parents=True, exist_ok=True)
    server_log = work / "server.log"
    t = time.perf_counter()
    points = []
    with vllm_serve(path, *serve_args(column, cfg), log=server_log, timeout=600) as server:
        log(f"  {name} {column}: server up in {time.perf_counter() - t:.0f} s")
        for rate in cfg["rates"]:
            res = bench(server.url, path, rate, cfg, work, work / "bench.log")
            point = {"request_rate": rate, **{k: res.get(k) for k in KEEP}}
            points.append(point)
            log(f"  {name} {column} rate {rate:g}/s: {point['output_throughput']:.1f} tok/s, "
                f"TTFT median {point['median_ttft_ms']:.0f} ms, TPOT median "
                f"{point['median_tpot_ms']:.1f} ms, max concurrency "
                f"{point['max_concurrent_requests']}")
    return {"model": name, "column": column, "serve_args": serve_args(column, cfg),
            "points": points}


def plot(result: dict, out: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("output_throughput", "output tokens / s"),
              ("ttft", "time to first token (ms)"), ("tpot", "time per output token (ms)")]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, (key, label) in zip(axes, panels):
        for i, m in enumerate(result["models"]):
            rates = [p["request_rate"] for p in m["points"]]
            tag = f"{m['model']} ({m['column']})"
            if key == "output_throughput":
                ax.plot(rates, [p[key] for p in m["points"]], "o-", color=f"C{i}", label=tag)
                continue
            ax.plot(rates, [p[f"median_{key}_ms"] for p in m["points"]], "o-", color=f"C{i}",
                    label=f"{tag} median")
            ax.plot(rates, [p[f"p99_{key}_ms"] for p in m["points"]], "x--", color=f"C{i}",
                    label=f"{tag} p99")
        ax.set_xlabel("request rate (req/s, Poisson)")
        ax.set_ylabel(label)
        ax.set_xscale("log", base=2)
        ax.grid(alpha=.3, which="both")
        ax.legend(fontsize=7)
    c = result["setting"]
    fig.suptitle(f"vllm bench serve, random {c['input_len']} -> {c['output_len']}, "
                 f"{c['num_prompts']} prompts per rate, {c['dtype']}, KV budget "
                 f"{c['kv_budget'] >> 20} MiB", fontsize=10)
    fig.tight_layout()
    f = out / f"serve_{result['scale']}.png"
    fig.savefig(f, dpi=110)
    plt.close(fig)
    return f.name


def main(argv: list[str] | None = None) -> dict:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", choices=sorted(SCALES), default="cpu")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/vllm_block_bench"))
    ap.add_argument("--rates", default=None, help="comma-separated request rates (req/s)")
    ap.add_argument("--num-prompts", type=int, default=None)
    args = ap.parse_args(argv)
    cfg = dict(SCALES[args.scale])
    if args.rates:
        cfg["rates"] = [float(r) for r in args.rates.split(",")]
    cfg["num_prompts"] = args.num_prompts or cfg["num_prompts"]
    args.cache.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)

    t0 = time.time()
    models = [run_model(name, col, cfg, args, log) for name, col in cfg["models"]]
    result = {"command": "python benchmarks/serve_bench.py " + " ".join(
                  sys.argv[1:] if argv is None else argv),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "wall_seconds": round(time.time() - t0, 1), "machine": machine(),
              "scale": args.scale, "setting": {k: v for k, v in cfg.items() if k != "models"},
              "models": models}
    # the highest rate both ran: block / vanilla output throughput
    top = [m["points"][-1]["output_throughput"] for m in models]
    if len(top) == 2 and all(top) and not any(math.isnan(x) for x in top):
        result["block_over_vanilla_output_throughput_at_top_rate"] = round(top[1] / top[0], 3)
    result["plot"] = plot(result, args.out)
    (args.out / f"serve_{args.scale}.json").write_text(json.dumps(result, indent=1) + "\n")
    log(f"done in {result['wall_seconds']:.0f} s: {args.out}/serve_{args.scale}.json")
    return result


if __name__ == "__main__":
    main()
