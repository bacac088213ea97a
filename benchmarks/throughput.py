"""Throughput and KV memory: Block Transformer (this plugin) vs vanilla GPT-NeoX.

One command measures, side by side in one run (interleaved, repeated):

  block        this plugin's BlockTransformerForCausalLM in vLLM (`LLM.generate`),
               default engine arguments (prompt logprobs available)
  block-fast   the same with `kv_sharing_fast_prefill=True` (`--kv-sharing-fast-
               prefill`): the token decoder skips prompt rows nobody reads
  vanilla-gptj the vanilla model's shape as vLLM's native GPT-J (same backend
               overheads as the plugin: no ratio inflated by a slow baseline)
  vanilla-neox GPT-NeoX as vLLM 0.32 serves it: the Transformers backend
               (`model_impl="transformers"`; vLLM has no native GPT-NeoX)
  hf           the Hugging Face reference: `generate` with its KV cache
               (block: vllm_block.reference; vanilla: transformers GPTNeoX)

for the paper's model pairs (random weights, real 50304 vocabulary), on a
prefill-heavy and a decode-heavy workload (random prompt ids, ignore_eos, all
requests handed to `LLM.generate` at once under one fixed KV-cache budget).
It also records vLLM's KV capacity per model, cache bytes per request, the
maximum concurrency reached, this machine's peak FLOP/s and memory bandwidth,
and the roofline limit of every run. Writes JSON and PNG plots.

    python benchmarks/throughput.py                 # --scale cpu (about 20 min, 2 cores)
    python benchmarks/throughput.py --scale paper   # the paper's sizes (GPU)
    python benchmarks/throughput.py --scale tiny --out /tmp/b   # code path only (tests)
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from gpu_reference import build, generate  # noqa: E402  (the plain-PyTorch models)
from models import MODELS, PAPER_PAIRS, paper_scale_limits, roofline  # noqa: E402

NBYTES = {"float32": 4, "bfloat16": 2}
FAST_ONLY = dict(block_columns=["block-fast"])

# Each scale: workloads (name, prompt, new tokens, requests), the KV budget,
# and groups of models measured side by side (one group's engines are alive
# together and its runs interleaved), per dtype.
SCALES = {
    "cpu": dict(
        workloads=[("prefill-heavy", 256, 16, 32), ("decode-heavy", 16, 256, 32)],
        hf_requests=4, kv_budget=256 << 20, max_num_batched_tokens=2048, repeats=3,
        # block-fast everywhere; the default engine (all prompt rows) only on
        # the paper pair in fp32, as the before/after of fast prefill (time)
        groups=[("float32", ["vanilla_31", "block_main_b4_5", "block_main_b4_19"], FAST_ONLY),
                ("float32", ["vanilla_70", "block_main_b4_85"]),
                # bf16: the paper pair only, vLLM columns, 2 repeats (time)
                ("bfloat16", ["vanilla_70", "block_main_b4_85"],
                 dict(FAST_ONLY, repeats=2, neox=False, hf=False))],
    ),
    "paper": dict(
        workloads=[("prefill-heavy", 2048, 128, 256), ("decode-heavy", 128, 2048, 256)],
        hf_requests=0, kv_budget=24 << 30, max_num_batched_tokens=16384, repeats=1,
        # up to three engines share the GPU: each may claim 30% of it at start-up
        engine_kwargs=dict(gpu_memory_utilization=0.3),
        # the block model in its throughput setting only (engines share the GPU)
        groups=[("bfloat16", ["vanilla_70", "block_main_b4_85"], FAST_ONLY),
                ("bfloat16", ["vanilla_160", "block_main_b4_300"], FAST_ONLY),
                ("bfloat16", ["vanilla_410", "block_main_b4_1.2b"], FAST_ONLY)],
    ),
    "tiny": dict(
        workloads=[("prefill-heavy", 16, 4, 1), ("decode-heavy", 4, 16, 1)],
        hf_requests=1, kv_budget=8 << 20, max_num_batched_tokens=256, repeats=1,
        groups=[("float32", ["tiny_vanilla", "tiny_block"])],
    ),
}


# ---------------------------------------------------------------------------
# machine
# ---------------------------------------------------------------------------
def measure_peaks(device: str = "cpu", seconds: float = 1.0) -> dict:
    """Peak matmul FLOP/s (fp32, bf16) and copy bandwidth, best of a few tries."""
    import torch

    def best(fn, work: float) -> float:
        fn()
        rates = []
        t_end = time.perf_counter() + seconds
        while time.perf_counter() < t_end or len(rates) < 3:
            if device != "cpu":
                torch.cuda.synchronize()
            t = time.perf_counter()
            fn()
            if device != "cpu":
                torch.cuda.synchronize()
            rates.append(work / (time.perf_counter() - t))
        return max(rates)

    out = {}
    n = 2048 if device == "cpu" else 8192
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        out[f"matmul_flops_{name}"] = best(lambda: a @ b, 2 * n ** 3)
        # a decode-shaped matmul: 32 rows through a 768 x 50304 LM head
        x = torch.randn(32, 768, device=device).to(dtype)
        w = torch.randn(768, 50304, device=device).to(dtype)
        out[f"lm_head_32x768x50304_flops_{name}"] = best(lambda: x @ w, 2 * 32 * 768 * 50304)
    numel = (256 << 20) // 4 if device == "cpu" else (2 << 30) // 4
    x = torch.empty(numel, device=device)
    y = torch.ones(numel, device=device)
    out["copy_bandwidth_bytes_per_s"] = best(lambda: x.copy_(y), 2 * numel * 4)
    out["matmul_size"] = n
    return out


def machine() -> dict:
    import torch

    info = {"platform": platform.platform(), "machine": platform.machine(),
            "cpus": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in f
                               if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    for pkg in ("vllm", "transformers"):
        try:
            info[pkg] = __import__(pkg).__version__
        except Exception:  # noqa: BLE001
            info[pkg] = None
    return info


# ---------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------
def make_checkpoint(name: str, impl: str, dtype: str, cache: Path) -> Path:
    """A random-weight HF directory for `name` as `impl` (block | neox | gptj)."""
    import torch

    path = cache / f"{name}-{impl}-{dtype}-p4096"
    if (path / "config.json").exists():
        return path
    spec = MODELS[name]
    tdtype = getattr(torch, dtype)
    if impl == "gptj":
        from transformers import GPTJConfig, GPTJForCausalLM

        torch.manual_seed(0)
        model = GPTJForCausalLM(GPTJConfig(**{**spec.gptj_config(), "n_positions": 4096}))
    elif impl == ("block" if spec.kind == "block" else "neox"):
        model = build(name, tdtype, "cpu")  # the same weights as the HF column's
    else:
        raise ValueError(f"{name} cannot be built as {impl}")
    tmp = path.with_name(path.name + ".tmp")
    model.to(tdtype).save_pretrained(tmp)
    tmp.rename(path)
    return path


# ---------------------------------------------------------------------------
# engines
# ---------------------------------------------------------------------------
class Engine:
    """One vLLM engine (its own engine-core process) for one column."""

    def __init__(self, name: str, column: str, path: Path, dtype: str, scale: dict,
                 max_len: int, eager: bool = True):
        from vllm import LLM

        self.name, self.column = name, column
        kwargs = dict(model=str(path), skip_tokenizer_init=True, dtype=dtype, enforce_eager=eager,
                      max_model_len=max_len, kv_cache_memory_bytes=scale["kv_budget"],
                      max_num_seqs=max(w[3] for w in scale["workloads"]),
                      max_num_batched_tokens=scale["max_num_batched_tokens"],
                      enable_prefix_caching=False, disable_log_stats=False, seed=0)
        kwargs.update(scale.get("engine_kwargs", {}))
        if column == "vanilla-neox":
            kwargs["model_impl"] = "transformers"
        if column == "block-fast":
            kwargs["kv_sharing_fast_prefill"] = True
        t = time.perf_counter()
        self.llm = LLM(**kwargs)
        self.start_s = time.perf_counter() - t
        cache = self.llm.llm_engine.vllm_config.cache_config
        self.block_size = cache.block_size
        self.capacity_tokens = cache.num_gpu_blocks * cache.block_size
        # the maximum concurrency: vLLM's own scheduler stats of every step
        # (what the vllm:num_requests_running gauge shows), seen as recorded
        self.peak_running, self.peak_kv_usage = 0, 0.0
        manager = self.llm.llm_engine.logger_manager
        record = manager.record

        def watched(scheduler_stats=None, *args, **kwargs):
            if scheduler_stats is not None:
                self.peak_running = max(self.peak_running, scheduler_stats.num_running_reqs)
                self.peak_kv_usage = max(self.peak_kv_usage, scheduler_stats.kv_cache_usage)
            return record(scheduler_stats, *args, **kwargs)

        manager.record = watched

    def run(self, prompts: list[list[int]], new: int) -> dict:
        from vllm import SamplingParams

        sp = SamplingParams(temperature=0.0, max_tokens=new, ignore_eos=True, detokenize=False)
        self.peak_running, self.peak_kv_usage = 0, 0.0
        t = time.perf_counter()
        outs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], sp,
                                 use_tqdm=False)
        elapsed = time.perf_counter() - t
        generated = sum(len(o.outputs[0].token_ids) for o in outs)
        assert generated == len(prompts) * new, (generated, len(prompts), new)
        return {"seconds": elapsed, "generated": generated, "max_running": self.peak_running,
                "max_kv_cache_usage": round(self.peak_kv_usage, 4)}

    def close(self) -> None:
        from vllm.distributed import cleanup_dist_env_and_memory

        self.llm.llm_engine.engine_core.shutdown()
        del self.llm
        gc.collect()
        cleanup_dist_env_and_memory()


class HFRunner:
    """The Hugging Face reference: batched cached `generate` in this process."""

    def __init__(self, name: str, path: Path, dtype: str, device: str):
        import torch
        from transformers import AutoModelForCausalLM

        import vllm_block  # noqa: F401  (registers the block model's Auto classes)

        self.name, self.column, self.device = name, "hf", device
        self.kind = MODELS[name].kind
        self.model = AutoModelForCausalLM.from_pretrained(
            path, dtype=getattr(torch, dtype)).to(device).eval()

    def run(self, prompts: list[list[int]], new: int) -> dict:
        import torch

        ids = torch.tensor(prompts, device=self.device)
        t = time.perf_counter()
        out = generate(self.model, self.kind, ids, new)
        if self.device != "cpu":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t
        generated = (out.shape[1] - ids.shape[1]) * ids.shape[0]
        assert generated == len(prompts) * new
        return {"seconds": elapsed, "generated": generated, "max_running": len(prompts)}

    def close(self) -> None:
        del self.model
        gc.collect()


def columns_for(name: str, args, gi: int, opts: dict) -> list[str]:
    if MODELS[name].kind == "block":
        cols = list(opts.get("block_columns", ["block", "block-fast"]))
    else:
        neox = not args.no_neox and (args.neox_groups is None or gi in args.neox_groups) \
            and opts.get("neox", True)
        cols = ["vanilla-gptj"] + (["vanilla-neox"] if neox else [])
    return cols + (["hf"] if args.hf_requests and opts.get("hf", True) else [])


IMPL = {"block": "block", "block-fast": "block", "vanilla-gptj": "gptj", "vanilla-neox": "neox"}


# ---------------------------------------------------------------------------
# one group: engines alive together, runs interleaved and repeated
# ---------------------------------------------------------------------------
def run_group(gi: int, dtype: str, names: list[str], opts: dict, scale: dict, args,
              runs: list, engines_info: list, log) -> None:
    import torch

    max_len = max(p + n for _, p, n, _ in scale["workloads"]) + 16
    runners = []
    for name in names:
        for col in columns_for(name, args, gi, opts):
            impl = IMPL.get(col, "block" if MODELS[name].kind == "block" else "neox")
            path = make_checkpoint(name, impl, dtype, args.cache)
            if col == "hf":
                runners.append(HFRunner(name, path, dtype, args.hf_device))
                continue
            try:
                eng = Engine(name, col, path, dtype, scale, max_len,
                             eager=col.startswith("block") or not args.vanilla_graphs)
            except Exception as exc:  # noqa: BLE001  (recorded, the run goes on)
                log(f"  {name} {col}: engine failed: {type(exc).__name__}: {exc}")
                engines_info.append({"model": name, "column": col, "dtype": dtype,
                                     "error": f"{type(exc).__name__}: {exc}"[:500]})
                continue
            log(f"  {name} {col}: engine up in {eng.start_s:.0f} s, KV capacity "
                f"{eng.capacity_tokens} tokens (block_size {eng.block_size})")
            engines_info.append({"model": name, "column": col, "dtype": dtype,
                                 "kv_budget_bytes": scale["kv_budget"],
                                 "kv_capacity_tokens": eng.capacity_tokens,
                                 "block_size": eng.block_size,
                                 "start_seconds": round(eng.start_s, 1)})
            runners.append(eng)
    rng = random.Random(0)
    vocab = MODELS[names[0]].vocab
    try:
        for w_name, prompt, new, requests in scale["workloads"]:
            prompts = [[rng.randrange(vocab) for _ in range(prompt)] for _ in range(requests)]
            for r in runners:  # warm-up: one short request each
                r.run(prompts[:1], 2)
            repeats = opts.get("repeats", args.repeats) if args.repeats_cli is None \
                else args.repeats
            for rep in range(repeats):
                order = runners if rep % 2 == 0 else runners[::-1]
                for r in order:
                    if r.column == "hf" and rep >= args.hf_repeats:
                        continue
                    n_req = min(requests, args.hf_requests) if r.column == "hf" else requests
                    if r.column == "hf":
                        torch.set_num_threads(args.hf_threads)
                    res = r.run(prompts[:n_req], new)
                    tps = res["generated"] / res["seconds"]
                    log(f"  [{dtype} {w_name} rep {rep}] {r.name:20s} {r.column:13s} "
                        f"{tps:9.1f} tok/s  ({res['generated']} tokens in "
                        f"{res['seconds']:.2f} s, max running {res['max_running']})")
                    runs.append({"group": gi, "dtype": dtype, "workload": w_name, "prompt": prompt,
                                 "new": new, "requests": n_req, "model": r.name,
                                 "column": r.column, "repeat": rep, "tokens_per_s": tps,
                                 **res})
    finally:
        for r in runners:
            r.close()


# ---------------------------------------------------------------------------
# summary
# ---------------------------------------------------------------------------
def summarise(runs: list, engines_info: list, peaks: dict, scale: dict) -> dict:
    med: dict[tuple, dict] = {}
    def key_of(r):
        return (r["group"], r["dtype"], r["workload"], r["model"], r["column"])

    for key in {key_of(r) for r in runs}:
        rs = [r for r in runs if key_of(r) == key]
        med[key] = {"dtype": key[1], "workload": key[2], "model": key[3], "column": key[4],
                    "params": MODELS[key[3]].params(),
                    "median_tokens_per_s": statistics.median(r["tokens_per_s"] for r in rs),
                    "all_tokens_per_s": [round(r["tokens_per_s"], 2) for r in rs],
                    "max_running": max(r["max_running"] for r in rs),
                    "requests": rs[0]["requests"], "prompt": rs[0]["prompt"],
                    "new": rs[0]["new"], "group": rs[0]["group"]}
    # ratios: every block model vs every vanilla model of the same group
    paper = {(v, b): (p, d) for v, b, p, d in PAPER_PAIRS}
    ratios = []
    for (_, dtype, wl, bname, bcol), bm in sorted(med.items()):
        if MODELS[bname].kind != "block":
            continue
        for (_, dtype2, wl2, vname, vcol), vm in sorted(med.items()):
            if (dtype2, wl2) != (dtype, wl) or MODELS[vname].kind != "vanilla":
                continue
            if (bcol == "hf") != (vcol == "hf") or bm["group"] != vm["group"]:
                continue  # compare like with like, measured side by side
            pp = paper.get((vname, bname))
            ratios.append({"dtype": dtype, "workload": wl, "block": bname, "vanilla": vname,
                           "block_column": bcol, "vanilla_column": vcol,
                           "block_tokens_per_s": round(bm["median_tokens_per_s"], 2),
                           "vanilla_tokens_per_s": round(vm["median_tokens_per_s"], 2),
                           "ratio": round(bm["median_tokens_per_s"] / vm["median_tokens_per_s"], 3),
                           "paper_pair": pp is not None,
                           "paper_ratio": None if pp is None else
                           (pp[0] if wl == "prefill-heavy" else pp[1])})
    # roofline per measured vLLM / HF median
    roof = []
    for m in med.values():
        spec = MODELS[m["model"]]
        nbytes = NBYTES[m["dtype"]]
        # batch of the limit: the concurrency vLLM reached (all requests when
        # the poll missed it: short runs)
        lim = roofline(spec, m["prompt"], m["new"], m["requests"], m["max_running"] or
                       m["requests"], nbytes, peaks[f"matmul_flops_{m['dtype']}"],
                       peaks["copy_bandwidth_bytes_per_s"])
        m["roofline"] = lim
        m["fraction_of_limit"] = m["median_tokens_per_s"] / lim["limit_tokens_per_s"]
        roof.append({k: m[k] for k in ("dtype", "workload", "model", "column")}
                    | {"measured_tokens_per_s": round(m["median_tokens_per_s"], 2),
                       "limit_tokens_per_s": round(lim["limit_tokens_per_s"], 1),
                       "fraction_of_limit": float(f"{m['fraction_of_limit']:.3g}"),
                       "batch": lim["batch"],
                       "gmacs_per_decode_step": round(lim["macs_per_decode_step"] / 1e9, 4),
                       "mbytes_per_decode_step": round(lim["bytes_per_decode_step"] / 1e6, 3),
                       "flop_per_byte": round(lim["arithmetic_intensity_flop_per_byte"], 1),
                       "decode_bound": lim["decode_bound"]})
    # memory: capacity and per-request bytes from the specs
    names = sorted({r["model"] for r in runs}, key=lambda n: MODELS[n].params())
    contexts = [256, 512, 1024, 2048]
    memory = {}
    for n in names:
        spec = MODELS[n]
        memory[n] = {"params": spec.params(), "kind": spec.kind,
                     "cache_bytes_per_request": {
                         dt: {c: spec.cache_bytes(c, NBYTES[dt]) for c in contexts}
                         for dt in sorted({r["dtype"] for r in runs})},
                     "vllm": [e for e in engines_info if e["model"] == n]}
    return {"medians": sorted(med.values(), key=lambda m: (m["dtype"], m["workload"],
                                                          m["params"], m["column"])),
            "ratios": ratios, "roofline": roof, "memory": memory}


def plot(summary: dict, out: Path, tag: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    meds = summary["medians"]
    for dtype in sorted({m["dtype"] for m in meds}):
        wls = sorted({m["workload"] for m in meds if m["dtype"] == dtype}, reverse=True)
        fig, axes = plt.subplots(1, len(wls), figsize=(5.5 * len(wls), 4.2), squeeze=False)
        for ax, wl in zip(axes[0], wls):
            sel = [m for m in meds if m["dtype"] == dtype and m["workload"] == wl]
            for col, style in (("block", "o-"), ("block-fast", "D-"), ("vanilla-gptj", "s--"),
                               ("vanilla-neox", "^:"), ("hf", "x-.")):
                for kind in ("block", "vanilla"):
                    pts = sorted((m["params"], m["median_tokens_per_s"]) for m in sel
                                 if m["column"] == col and MODELS[m["model"]].kind == kind)
                    if not pts:
                        continue
                    label = {"block": "block (vLLM plugin)",
                             "block-fast": "block (vLLM plugin, fast prefill)",
                             "vanilla-gptj": "vanilla (vLLM GPT-J)",
                             "vanilla-neox": "vanilla (vLLM GPT-NeoX, Transformers backend)",
                             "hf": f"{kind} (HF reference generate)"}[col]
                    ax.plot([p / 1e6 for p, _ in pts], [t for _, t in pts], style,
                            label=label, color={"block-fast": "C3", "vanilla-neox": "C2"}.get(
                                col, "C0" if kind == "block" else "C1"),
                            alpha=1 if col != "hf" else .5)
            ax.set_xscale("log")
            ax.set_yscale("log")
            p, n = sel[0]["prompt"], sel[0]["new"]
            ax.set_title(f"{wl} ({p} -> {n}), {dtype}")
            ax.set_xlabel("parameters (M)")
            ax.set_ylabel("generated tokens / s")
            ax.grid(alpha=.3, which="both")
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        f = out / f"throughput_{tag}_{dtype}.png"
        fig.savefig(f, dpi=110)
        plt.close(fig)
        files.append(f.name)
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    for n, mem in summary["memory"].items():
        dt = "bfloat16" if "bfloat16" in mem["cache_bytes_per_request"] else "float32"
        c = mem["cache_bytes_per_request"][dt]
        ax.plot(list(c), [v / 2**20 for v in c.values()],
                "o-" if mem["kind"] == "block" else "s--", label=f"{n} ({dt})")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("cache bytes per request (MiB)")
    ax.set_title("KV cache / state per request")
    ax.grid(alpha=.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    f = out / f"kv_bytes_{tag}.png"
    fig.savefig(f, dpi=110)
    plt.close(fig)
    files.append(f.name)
    return files


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", choices=sorted(SCALES), default="cpu")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/vllm_block_bench"),
                    help="where the random-weight checkpoints are written")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--groups", default=None,
                    help="indices of the scale's groups to run, e.g. 0,2")
    ap.add_argument("--no-neox", action="store_true",
                    help="skip GPT-NeoX through vLLM's Transformers backend")
    ap.add_argument("--neox-groups", default=None,
                    help="run the GPT-NeoX (Transformers backend) column only in these "
                         "groups, e.g. 0")
    ap.add_argument("--vanilla-graphs", action="store_true",
                    help="let vLLM capture CUDA graphs for the vanilla models (GPU; the "
                         "block model always runs eager)")
    ap.add_argument("--hf-requests", type=int, default=None,
                    help="batch of the HF reference column (0: skip it)")
    ap.add_argument("--hf-repeats", type=int, default=1,
                    help="repeats of the (slow) HF reference column")
    ap.add_argument("--hf-threads", type=int, default=os.cpu_count())
    ap.add_argument("--hf-device", default=None)
    args = ap.parse_args(argv)
    scale = SCALES[args.scale]
    args.repeats_cli = args.repeats
    args.repeats = args.repeats or scale["repeats"]
    args.hf_requests = scale["hf_requests"] if args.hf_requests is None else args.hf_requests
    import torch

    args.hf_device = args.hf_device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.cache.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    groups = list(enumerate(scale["groups"]))
    if args.groups:
        groups = [groups[int(i)] for i in args.groups.split(",")]
    if args.neox_groups is not None:
        args.neox_groups = {int(i) for i in args.neox_groups.split(",")}

    def log(msg: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)

    t0 = time.time()
    load_start = os.getloadavg()
    log(f"peaks ({args.hf_device}) ...")
    peaks = measure_peaks(args.hf_device, seconds=0.3 if args.scale == "tiny" else 2.0)
    log("  " + ", ".join(f"{k} {v:.3g}" for k, v in peaks.items()))
    runs, engines_info = [], []
    for gi, (dtype, names, *opts) in groups:
        log(f"group {gi} {dtype}: {', '.join(names)}")
        run_group(gi, dtype, names, opts[0] if opts else {}, scale, args, runs, engines_info, log)
    summary = summarise(runs, engines_info, peaks, scale)
    tag = args.scale
    result = {
        "command": "python benchmarks/throughput.py " + " ".join(sys.argv[1:] if argv is None
                                                                else argv),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "wall_seconds": round(time.time() - t0, 1),
        "machine": machine(), "peaks": peaks, "scale": args.scale,
        # other work on the machine during the run (1-minute load average)
        "load_average_start_end": [round(load_start[0], 2), round(os.getloadavg()[0], 2)],
        "workloads": [dict(zip(("name", "prompt", "new", "requests"), w))
                      for w in scale["workloads"]],
        "kv_budget_bytes": scale["kv_budget"], "repeats": args.repeats,
        "hf_requests": args.hf_requests,
        "paper_pairs": [dict(zip(("vanilla", "block", "prefill_heavy", "decode_heavy"), p))
                        for p in PAPER_PAIRS],
        **summary,
        "paper_scale_limits_h200_nominal": paper_scale_limits(),
        "runs": runs,
    }
    result["plots"] = plot(summary, args.out, tag)
    (args.out / f"throughput_{tag}.json").write_text(json.dumps(result, indent=1) + "\n")
    log(f"done in {result['wall_seconds']:.0f} s: {args.out}/throughput_{tag}.json")
    for r in summary["ratios"]:
        log(f"  {r['dtype']} {r['workload']:13s} {r['block']}/{r['vanilla']} "
            f"[{r['block_column']} / {r['vanilla_column']}]: {r['ratio']:.2f}x"
            + (f" (paper {r['paper_ratio']}x)" if r["paper_ratio"] else ""))
    return result


if __name__ == "__main__":
    main()
