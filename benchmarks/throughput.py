"""Throughput and KV memory: Block Transformer (this plugin) vs vanilla GPT-NeoX.

One command measures, side by side in one run (interleaved, repeated):

  block        this plugin's BlockTransformerForCausalLM in vLLM (`LLM.generate`),
               default engine arguments (prompt logprobs available)
  block-fast   the same with `kv_sharing_fast_prefill=True` (`--kv-sharing-fast-
               prefill`): the token decoder skips prompt rows nobody reads
  vanilla-gptj the vanilla model's shape as vLLM's native GPT-J at vLLM's default
               engine settings (CPU: inductor-compiled; GPU: CUDA graphs)
  vanilla-gptj-eager  the same with `enforce_eager=True` (secondary column)
  vanilla-neox GPT-NeoX as vLLM 0.32 serves it: the Transformers backend
               (`model_impl="transformers"`; vLLM has no native GPT-NeoX), defaults
  hf           the reference: cached `generate` in this process, static batch
               (block: vllm_block.reference; vanilla: transformers GPTNeoX)

The block columns never pass `enforce_eager`: the plugin's engine-config hook
decides; every engine's resulting graph / compile mode is recorded. Two tables, each its
own workloads and KV budget per engine (random prompt ids, ignore_eos, all requests handed
to `LLM.generate` at once):

  paper regime   the paper's shapes at its configs' 2048 positions, 128 -> 1888
                 and 1888 -> 128, more requests than vanilla's KV budget holds:
                 batch maximised by vLLM under one budget for both models; the
                 reference at the same batch as the vLLM runs (plugin / reference)
  paper regime, batch maximised   the same shapes under 4 GiB of KV per engine,
                 each model handed as many requests as its KV holds for the
                 whole sequence (up to max_num_seqs 512): the paper's method
  short context  256 -> 16 and 16 -> 256, 32 requests: compute-bound

It also records vLLM's KV capacity per model, the requests it fits, the
maximum concurrency reached, this machine's peak FLOP/s and memory bandwidth,
and the roofline limit of every run. Writes JSON and PNG plots.

    python benchmarks/throughput.py                 # --scale cpu (about 19 min, 2 cores)
    python benchmarks/throughput.py --scale cpu-max   # batch maximised, 4 GiB (85 min)
    python benchmarks/throughput.py --scale cpu-long  # more requests, pairs, repeats
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
from models import MODELS, PAPER_PAIRS, paper_scale_limits, requests_held, roofline  # noqa: E402

NBYTES = {"float32": 4, "bfloat16": 2}
PAPER, SHORT = "paper regime", "short context"
# the paper's "batch maximised": each model runs as many requests as its KV holds
BATCH_MAX = "paper regime, batch maximised"
KV = "kv"  # a workload's request count: what the engine's KV budget holds
# columns of a group (default: block and block-fast; GPT-J and GPT-NeoX at vLLM's defaults)
FAST_ONLY = dict(block_columns=["block-fast"])
GPTJ = dict(vanilla_columns=["vanilla-gptj"])
GPTJ_EAGER = dict(vanilla_columns=["vanilla-gptj", "vanilla-gptj-eager"])
ALL_VANILLA = dict(vanilla_columns=["vanilla-gptj", "vanilla-gptj-eager", "vanilla-neox"])


def paper_regime(prompt_long: int, new_short: int, prefill_requests: int,
                 decode_requests: int, kv_budget: int, **opts) -> dict:
    """The paper's two workload shapes (long -> short, short -> long), with
    more requests than the vanilla model's KV budget holds, and the block
    model's reference at the same batch as the vLLM runs (`hf_max_new`: only
    the first tokens of each request, to bound its time: its cost per token
    grows with the context, so this favours the reference)."""
    opts.setdefault("table", PAPER)
    return {"kv_budget": kv_budget, "hf": "block", "hf_requests": "same",
            "workloads": [("prefill-heavy", prompt_long, new_short, prefill_requests),
                          ("decode-heavy", new_short, prompt_long, decode_requests)],
            **opts}


# Each scale: defaults (workloads (name, prompt, new tokens, requests), the KV
# budget, ...) and groups of models measured side by side (one group's engines
# are alive together and its runs interleaved), per dtype; a group's options
# override the scale's defaults (see setting()).
# CPU paper regime: 128 + 1888 + 16 = the paper configs' 2048 positions; under
# 512 MiB vanilla_70 fits 21 requests of 2016 tokens in bf16 (10 in fp32),
# block_main_b4_85 57 (28).
CPU_PAPER = dict(prompt_long=1888, new_short=128, kv_budget=512 << 20, **FAST_ONLY)
# the reference decodes ~100-150 tokens/s at batch 32 here: 1888 tokens each would take 10 min
CPU_REFERENCE_CAP = dict(hf_max_new=256)
# batch maximised: under 4 GiB vanilla_70 holds 168 requests of 2016 tokens in
# bf16 (84 in fp32), block_main_b4_85 448 (224)
CPU_BATCH_MAX = dict(prompt_long=1888, new_short=128, kv_budget=4 << 30, max_num_seqs=512,
                     prefill_requests=KV, decode_requests=KV, hf=False, table=BATCH_MAX,
                     **GPTJ, **FAST_ONLY)
SHORT_CPU = dict(table=SHORT, workloads=[("prefill-heavy", 256, 16, 32),
                                         ("decode-heavy", 16, 256, 32)],
                 kv_budget=256 << 20)
PAIR = ["vanilla_70", "block_main_b4_85"]
SCALES = {
    "cpu": dict(
        hf_requests=4, max_num_batched_tokens=2048, repeats=1,
        groups=[("bfloat16", PAIR, paper_regime(prefill_requests=24, decode_requests=32,
                                                **GPTJ_EAGER, **CPU_REFERENCE_CAP,
                                                **CPU_PAPER)),
                ("float32", PAIR, paper_regime(prefill_requests=12, decode_requests=16,
                                               hf=False, **GPTJ, **CPU_PAPER)),
                # GPT-J and GPT-NeoX at vLLM's defaults (the eager column: paper regime)
                ("float32", PAIR, dict(SHORT_CPU, hf=False, **FAST_ONLY)),
                ("bfloat16", PAIR, dict(SHORT_CPU, hf=False, **GPTJ, **FAST_ONLY))],
    ),
    # the paper's method (about 85 min on 2 cores)
    "cpu-max": dict(hf_requests=0, max_num_batched_tokens=2048, repeats=1,
                    groups=[("bfloat16", PAIR, paper_regime(**CPU_BATCH_MAX)),
                            ("float32", PAIR, paper_regime(**CPU_BATCH_MAX))]),
    "cpu-long": dict(
        hf_requests=4, max_num_batched_tokens=2048, repeats=2,
        groups=[("bfloat16", PAIR, paper_regime(prefill_requests=32, decode_requests=64,
                                                **ALL_VANILLA, **CPU_PAPER)),
                ("float32", PAIR, paper_regime(prefill_requests=16, decode_requests=32,
                                               **ALL_VANILLA, **CPU_PAPER)),
                ("bfloat16", ["vanilla_160", "block_main_b4_300"],
                 paper_regime(prefill_requests=16, decode_requests=32, hf=False, **GPTJ,
                              **CPU_PAPER)),
                # the default engine (all prompt rows) as the before/after of fast prefill
                ("float32", PAIR, dict(SHORT_CPU, repeats=3, **ALL_VANILLA)),
                ("float32", ["vanilla_31", "block_main_b4_5", "block_main_b4_19"],
                 dict(SHORT_CPU, **ALL_VANILLA, **FAST_ONLY)),
                ("bfloat16", PAIR, dict(SHORT_CPU, hf=False, **GPTJ, **FAST_ONLY))],
    ),
    "paper": dict(
        table=PAPER, hf_requests=0, max_num_batched_tokens=16384, repeats=1,
        workloads=[("prefill-heavy", 2048, 128, 256), ("decode-heavy", 128, 2048, 256)],
        kv_budget=24 << 30,
        # up to three engines share the GPU: each may claim 30% of it at start-up
        engine_kwargs=dict(gpu_memory_utilization=0.3),
        # the block model in its throughput setting only (engines share the GPU)
        groups=[("bfloat16", ["vanilla_70", "block_main_b4_85"], FAST_ONLY),
                ("bfloat16", ["vanilla_160", "block_main_b4_300"], FAST_ONLY),
                ("bfloat16", ["vanilla_410", "block_main_b4_1.2b"], FAST_ONLY)],
    ),
    "tiny": dict(
        hf_requests=1, max_num_batched_tokens=256, repeats=1,
        # every table's code path and every column but NeoX, six engines: the
        # paper regime with more requests than vanilla's budget holds (3 pages
        # of 128 tokens), the short one with the eager and default columns,
        # the batch-maximised one under the paper regime's budget
        groups=[("float32", ["tiny_vanilla", "tiny_block"],
                 paper_regime(32, 8, prefill_requests=3, decode_requests=4,
                              kv_budget=3 * 128 * 1024, hf_max_new=16, **GPTJ, **FAST_ONLY)),
                ("float32", ["tiny_vanilla", "tiny_block"],
                 dict(table=SHORT, workloads=[("prefill-heavy", 16, 4, 1),
                                              ("decode-heavy", 4, 16, 1)],
                      kv_budget=8 << 20, hf=False, block_columns=["block"],
                      vanilla_columns=["vanilla-gptj-eager"])),
                # batch maximised: as many requests as each KV budget holds
                ("float32", ["tiny_vanilla", "tiny_block"],
                 paper_regime(32, 8, prefill_requests=KV, decode_requests=KV,
                              kv_budget=3 * 128 * 1024, max_num_seqs=16, hf=False,
                              table=BATCH_MAX, **GPTJ, **FAST_ONLY))],
    ),
}


def setting(scale: dict, opts: dict) -> dict:
    """One group's settings: the scale's defaults, overridden by the group's."""
    return {"table": SHORT, **scale, **opts}


def describe(settings: dict) -> dict:
    """What the JSON records of each group's settings."""
    return {gi: {"table": cfg["table"], "kv_budget_bytes": cfg["kv_budget"],
                 "repeats": cfg["repeats"],
                 "workloads": [dict(zip(("name", "prompt", "new", "requests"), w))
                               for w in cfg["workloads"]]}
            for gi, cfg in settings.items()}


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
def engine_setting(config) -> str:
    """The graph / compile mode the engine ended up with (the plugin's config
    hook may have forced eager mode)."""
    comp = config.compilation_config
    if config.model_config.enforce_eager:
        return "eager"
    graphs = comp.cudagraph_mode.name if comp.cudagraph_mode is not None else "NONE"
    return f"torch.compile {comp.mode.name}" + (f", CUDA graphs {graphs}"
                                                 if graphs != "NONE" else "")


class Engine:
    """One vLLM engine (its own engine-core process) for one column."""

    def __init__(self, name: str, column: str, path: Path, dtype: str, cfg: dict, max_len: int):
        from vllm import LLM

        self.name, self.column = name, column
        kwargs = dict(model=str(path), skip_tokenizer_init=True, dtype=dtype,
                      max_model_len=max_len, kv_cache_memory_bytes=cfg["kv_budget"],
                      max_num_seqs=cfg.get("max_num_seqs")
                      or max(w[3] for w in cfg["workloads"]),
                      max_num_batched_tokens=cfg["max_num_batched_tokens"],
                      enable_prefix_caching=False, disable_log_stats=False, seed=0,
                      **cfg.get("engine_kwargs", {}), **COLUMN_ARGS[column])
        t = time.perf_counter()
        self.llm = LLM(**kwargs)
        self.start_s = time.perf_counter() - t
        config = self.llm.llm_engine.vllm_config
        cache = config.cache_config
        self.block_size = cache.block_size
        self.capacity_tokens = cache.num_gpu_blocks * cache.block_size
        self.setting = engine_setting(config)
        self.max_num_seqs = config.scheduler_config.max_num_seqs
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

    def holds(self, length: int) -> int:
        """Requests of `length` tokens whose pages fit the KV budget at once
        (vLLM admits more and preempts them as they grow)."""
        return min(requests_held(MODELS[self.name], length,
                                 self.capacity_tokens // self.block_size, self.block_size),
                   self.max_num_seqs)

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


def columns_for(name: str, args, gi: int, cfg: dict) -> list[str]:
    kind = MODELS[name].kind
    if kind == "block":
        cols = list(cfg.get("block_columns", ["block", "block-fast"]))
    else:
        neox = not args.no_neox and (args.neox_groups is None or gi in args.neox_groups)
        cols = [c for c in cfg.get("vanilla_columns", ["vanilla-gptj", "vanilla-neox"])
                if (neox or c != "vanilla-neox") and not (args.no_eager and c.endswith("-eager"))]
    hf = cfg.get("hf", True)
    return cols + (["hf"] if args.hf_requests and hf in (True, kind) else [])


# Each vLLM column: its checkpoint (block | gptj | neox) and engine arguments
# beyond the shared ones. Only the -eager column forces eager mode: the others
# get vLLM's defaults, or what the plugin's config hook sets for the block model.
IMPL = {"block": "block", "block-fast": "block", "vanilla-gptj": "gptj",
        "vanilla-gptj-eager": "gptj", "vanilla-neox": "neox"}
COLUMN_ARGS = {"block": {}, "block-fast": dict(kv_sharing_fast_prefill=True),
               "vanilla-gptj": {}, "vanilla-gptj-eager": dict(enforce_eager=True),
               "vanilla-neox": dict(model_impl="transformers")}


def hf_batch(requests: int, cfg: dict, args) -> int:
    """The reference column's batch: all requests (the paper regime: the same
    batch as the vLLM runs) or the scale's / --hf-requests cap."""
    if cfg.get("hf_requests") == "same" and args.hf_requests_cli is None:
        return requests
    return min(requests, args.hf_requests)


# ---------------------------------------------------------------------------
# one group: engines alive together, runs interleaved and repeated
# ---------------------------------------------------------------------------
def run_group(gi: int, dtype: str, names: list[str], cfg: dict, args, runs: list,
              engines_info: list, log) -> None:
    import torch

    max_len = max(p + n for _, p, n, _ in cfg["workloads"]) + 16
    runners = []
    for name in names:
        for col in columns_for(name, args, gi, cfg):
            impl = IMPL.get(col, "block" if MODELS[name].kind == "block" else "neox")
            path = make_checkpoint(name, impl, dtype, args.cache)
            if col == "hf":
                runners.append(HFRunner(name, path, dtype, args.hf_device))
                continue
            info = {"group": gi, "table": cfg["table"], "model": name, "column": col,
                    "dtype": dtype}
            try:
                eng = Engine(name, col, path, dtype, cfg, max_len)
            except Exception as exc:  # noqa: BLE001  (recorded, the run goes on)
                log(f"  {name} {col}: engine failed: {type(exc).__name__}: {exc}")
                engines_info.append({**info, "error": f"{type(exc).__name__}: {exc}"[:500]})
                continue
            log(f"  {name} {col}: engine up in {eng.start_s:.0f} s ({eng.setting}), KV "
                f"capacity {eng.capacity_tokens} tokens (block_size {eng.block_size})")
            engines_info.append({**info, "kv_budget_bytes": cfg["kv_budget"],
                                 "kv_capacity_tokens": eng.capacity_tokens,
                                 "block_size": eng.block_size, "setting": eng.setting,
                                 "start_seconds": round(eng.start_s, 1)})
            runners.append(eng)
    rng = random.Random(0)
    vocab = MODELS[names[0]].vocab
    try:
        for w_name, prompt, new, requests in cfg["workloads"]:
            asked = {r: r.holds(prompt + new) if requests == KV else requests for r in runners}
            prompts = [[rng.randrange(vocab) for _ in range(prompt)]
                       for _ in range(max(asked.values()))]
            for r in runners:  # warm-up: one short request each
                r.run(prompts[:1], 2)
            for rep in range(cfg["repeats"]):
                order = runners if rep % 2 == 0 else runners[::-1]
                for r in order:
                    if r.column == "hf" and rep >= args.hf_repeats:
                        continue
                    n_req, n_new = asked[r], new
                    if r.column == "hf":
                        n_req = hf_batch(requests, cfg, args)
                        n_new = min(new, cfg.get("hf_max_new") or new)
                        torch.set_num_threads(args.hf_threads)
                    res = r.run(prompts[:n_req], n_new)
                    tps = res["generated"] / res["seconds"]
                    log(f"  [{dtype} {w_name} rep {rep}] {r.name:20s} {r.column:13s} "
                        f"{tps:9.1f} tok/s  ({res['generated']} tokens in "
                        f"{res['seconds']:.2f} s, max running {res['max_running']})")
                    runs.append({"group": gi, "table": cfg["table"], "dtype": dtype,
                                 "workload": w_name, "prompt": prompt, "new": n_new,
                                 "requests": n_req, "model": r.name,
                                 "column": r.column, "repeat": rep, "tokens_per_s": tps,
                                 **res})
    finally:
        for r in runners:
            r.close()


# ---------------------------------------------------------------------------
# summary
# ---------------------------------------------------------------------------
def engine_of(m: dict, engines_info: list) -> dict:
    """The vLLM engine a median was measured on: its KV capacity, setting and
    how many requests of the workload's length its pages hold."""
    for e in engines_info:
        if (e["group"], e["model"], e["column"]) == (m["group"], m["model"], m["column"]) \
                and "kv_capacity_tokens" in e:
            pages = e["kv_capacity_tokens"] // e["block_size"]
            return {k: e[k] for k in ("kv_capacity_tokens", "block_size", "setting")} | {
                "kv_pages": pages,
                "fits_requests": requests_held(MODELS[m["model"]], m["prompt"] + m["new"],
                                               pages, e["block_size"])}
    return {}


def summarise(runs: list, engines_info: list, peaks: dict) -> dict:
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
                    "new": rs[0]["new"], "group": rs[0]["group"],
                    "table": rs[0].get("table", PAPER)}
        med[key] |= engine_of(med[key], engines_info)
    # ratios: every block model vs every vanilla model of the same group
    paper = {(v, b): (p, d) for v, b, p, d in PAPER_PAIRS}
    ratios, reference = [], []
    for (_, dtype, wl, bname, bcol), bm in sorted(med.items()):
        if MODELS[bname].kind != "block":
            continue
        for (_, dtype2, wl2, vname, vcol), vm in sorted(med.items()):
            if (dtype2, wl2) != (dtype, wl) or bm["group"] != vm["group"]:
                continue  # compare like with like, measured side by side
            if vname == bname and vcol == "hf" and bcol != "hf":
                # what the original code gives: the plugin / the reference model
                reference.append({"table": bm["table"], "dtype": dtype, "workload": wl,
                                  "model": bname, "column": bcol,
                                  "plugin_tokens_per_s": round(bm["median_tokens_per_s"], 2),
                                  "plugin_max_running": bm["max_running"],
                                  "reference_tokens_per_s": round(vm["median_tokens_per_s"], 2),
                                  "reference_batch": vm["requests"],
                                  "plugin_new": bm["new"], "reference_new": vm["new"],
                                  "ratio": round(bm["median_tokens_per_s"]
                                                 / vm["median_tokens_per_s"], 3)})
            if MODELS[vname].kind != "vanilla" or (bcol == "hf") != (vcol == "hf"):
                continue
            pp = paper.get((vname, bname))
            ratios.append({"table": bm["table"], "dtype": dtype, "workload": wl,
                           "block": bname, "vanilla": vname,
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
        roof.append({k: m[k] for k in ("table", "dtype", "workload", "model", "column")}
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
    return {"medians": sorted(med.values(), key=lambda m: (m["table"], m["dtype"],
                                                          m["workload"], m["params"],
                                                          m["column"])),
            "ratios": ratios, "plugin_vs_reference": reference, "roofline": roof,
            "memory": memory}


# each column's label (README, report, plots) and plot style
LABELS = {"block": "block (vLLM plugin)",
          "block-fast": "block (vLLM plugin, fast prefill)",
          "vanilla-gptj": "vanilla (vLLM GPT-J, vLLM defaults)",
          "vanilla-gptj-eager": "vanilla (vLLM GPT-J, enforce_eager)",
          "vanilla-neox": "vanilla (vLLM GPT-NeoX, Transformers backend, vLLM defaults)",
          "hf": "reference generate, static batch"}
STYLE = {"block": ("o-", None), "block-fast": ("D-", "C3"), "vanilla-gptj": ("s--", None),
         "vanilla-gptj-eager": ("v--", "C4"), "vanilla-neox": ("^:", "C2"),
         "hf": ("x-.", None)}
TABLE_TAGS = {PAPER: "paper_regime", BATCH_MAX: "batch_maximised", SHORT: "short"}


def plot(summary: dict, out: Path, tag: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    meds = summary["medians"]
    for table, dtype in sorted({(m["table"], m["dtype"]) for m in meds}):
        wls = sorted({m["workload"] for m in meds if (m["table"], m["dtype"]) == (table, dtype)},
                     reverse=True)
        fig, axes = plt.subplots(1, len(wls), figsize=(5.5 * len(wls), 4.2), squeeze=False)
        for ax, wl in zip(axes[0], wls):
            sel = [m for m in meds if (m["table"], m["dtype"], m["workload"]) ==
                   (table, dtype, wl)]
            for col, (style, color) in STYLE.items():
                for kind in ("block", "vanilla"):
                    pts = sorted((m["params"], m["median_tokens_per_s"]) for m in sel
                                 if m["column"] == col and MODELS[m["model"]].kind == kind)
                    if not pts:
                        continue
                    label = f"{kind} ({LABELS[col]})" if col == "hf" else LABELS[col]
                    ax.plot([p / 1e6 for p, _ in pts], [t for _, t in pts], style,
                            label=label, color=color or ("C0" if kind == "block" else "C1"),
                            alpha=1 if col != "hf" else .5)
            ax.set_xscale("log")
            ax.set_yscale("log")
            p, n, req = sel[0]["prompt"], sel[0]["new"], sel[0]["requests"]
            ax.set_title(f"{table}: {wl} ({req} x {p} -> {n}), {dtype}", fontsize=9)
            ax.set_xlabel("parameters (M)")
            ax.set_ylabel("generated tokens / s")
            ax.grid(alpha=.3, which="both")
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        f = out / f"throughput_{tag}_{TABLE_TAGS[table]}_{dtype}.png"
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
    ap.add_argument("--no-eager", action="store_true",
                    help="skip the secondary vanilla GPT-J column with enforce_eager")
    ap.add_argument("--hf-requests", type=int, default=None,
                    help="batch of the HF reference column (0: skip it; default: the "
                         "scale's, or the vLLM runs' batch in the paper regime)")
    ap.add_argument("--hf-repeats", type=int, default=1,
                    help="repeats of the (slow) HF reference column")
    ap.add_argument("--hf-threads", type=int, default=os.cpu_count())
    ap.add_argument("--hf-device", default=None)
    args = ap.parse_args(argv)
    scale = SCALES[args.scale]
    args.hf_requests_cli = args.hf_requests
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
    settings = {gi: setting(scale, opts[0] if opts else {}) | (
        {"repeats": args.repeats} if args.repeats else {}) for gi, (_, _, *opts) in groups}
    for gi, (dtype, names, *_) in groups:
        cfg = settings[gi]
        log(f"group {gi} {dtype} ({cfg['table']}): {', '.join(names)}")
        run_group(gi, dtype, names, cfg, args, runs, engines_info, log)
    summary = summarise(runs, engines_info, peaks)
    tag = args.scale
    result = {
        "command": "python benchmarks/throughput.py " + " ".join(sys.argv[1:] if argv is None
                                                                else argv),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "wall_seconds": round(time.time() - t0, 1),
        "machine": machine(), "peaks": peaks, "scale": args.scale,
        # other work on the machine during the run (1-minute load average)
        "load_average_start_end": [round(load_start[0], 2), round(os.getloadavg()[0], 2)],
        "groups": describe(settings),
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
