"""Tensor parallelism on CPU: TP=1 vs TP=2 throughput and output agreement.

    python benchmarks/tp_throughput.py [--requests 64] [--new-tokens 64]

Runs the same greedy batch (random prompts, ignore_eos) through `LLM()` with
tensor_parallel_size 1 and 2 (one core per rank) on a randomly initialised
model with the dimensions of the original `block_main_b4_19` config, and
reports generated tokens/s for both, whether the greedy tokens agree, and
the largest logprob difference. Writes benchmarks/results/tp_throughput.json.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

from throughput import make_checkpoint

# the engine core in this process, as when this script took its model from
# profile_decode (which sets it)
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
HERE = Path(__file__).resolve().parent


def run(path: Path, tp: int, prompts: list[dict], new_tokens: int) -> tuple[float, list, list]:
    import gc

    from vllm import LLM, SamplingParams
    from vllm.distributed import cleanup_dist_env_and_memory

    # both runs use cores 0 and 1: TP=1 as two threads, TP=2 one core per rank
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "0-1" if tp == 1 else "0|1"
    llm = LLM(model=str(path), skip_tokenizer_init=True, dtype="float32",
              tensor_parallel_size=tp, distributed_executor_backend="mp",
              max_model_len=256, kv_cache_memory_bytes=1 << 30, enable_prefix_caching=False,
              seed=0)
    sp = SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True,
                        detokenize=False, logprobs=1)
    llm.generate(prompts[:2], sp, use_tqdm=False)  # warm-up
    start = time.perf_counter()
    outs = llm.generate(prompts, sp, use_tqdm=False)
    elapsed = time.perf_counter() - start
    tokens = [list(o.outputs[0].token_ids) for o in outs]
    logprobs = [[lp[t].logprob for t, lp in zip(o.outputs[0].token_ids, o.outputs[0].logprobs)]
                for o in outs]
    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()
    cleanup_dist_env_and_memory()
    return len(prompts) * new_tokens / elapsed, tokens, logprobs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/vllm_block_bench"),
                    help="where the random-weight checkpoint is written")
    args = ap.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    path = make_checkpoint("block_main_b4_19", "block", "float32", args.cache)
    rng = random.Random(0)
    prompts = [{"prompt_token_ids": [rng.randrange(50000) for _ in range(args.prompt_len)]}
               for _ in range(args.requests)]
    tps1, tok1, lp1 = run(path, 1, prompts, args.new_tokens)
    tps2, tok2, lp2 = run(path, 2, prompts, args.new_tokens)
    same = [a == b for a, b in zip(tok1, tok2)]
    # logprobs are comparable while the greedy paths agree
    diffs = [abs(x - y) for a, b, ta, tb in zip(lp1, lp2, tok1, tok2) if ta == tb
             for x, y in zip(a, b)]
    result = {
        "config": "block_main_b4_19 dimensions, random weights, fp32",
        "requests": args.requests, "prompt_len": args.prompt_len,
        "new_tokens": args.new_tokens, "cpu_bind": {"tp1": "0-1", "tp2": "0|1"},
        "tokens_per_s": {"tp1": round(tps1, 1), "tp2": round(tps2, 1)},
        "speedup_tp2_over_tp1": round(tps2 / tps1, 3),
        "greedy_identical_requests": f"{sum(same)}/{len(same)}",
        "max_logprob_diff": max(diffs) if diffs else None,
        "date": time.strftime("%Y-%m-%d"),
        "command": f"python benchmarks/tp_throughput.py --requests {args.requests} "
                   f"--prompt-len {args.prompt_len} --new-tokens {args.new_tokens}",
    }
    out = HERE / "results" / "tp_throughput.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
