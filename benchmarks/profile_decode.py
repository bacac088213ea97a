"""Where one decode step of the Block Transformer goes inside vLLM.

Runs an in-process engine on a randomly initialised model with the
dimensions of the original `block_main_b4_19` config (3+3 layers x 512,
vocabulary 50304, L=4, R=2), decodes a full batch, and times the parts of
every all-decode step: the step plan (index maths, built on the host by the
token-state metadata builder), the block decoder, the
token decoder, the LM head (compute_logits), and the rest of the engine step
(scheduler, input preparation, sampling, output processing).

    python benchmarks/profile_decode.py [--batch 64] [--dtype float32]

Writes benchmarks/results/decode_profile_<dtype>.json.
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

from models import MODELS  # noqa: E402

B4_19 = {**MODELS["block_main_b4_19"].block_config(), "max_position_embeddings": 2048}


def make_model(path: Path, dtype: str) -> Path:
    import torch

    from vllm_block import BlockTransformerConfig, BlockTransformerForCausalLM

    if not (path / "config.json").exists():
        torch.manual_seed(0)
        cfg = BlockTransformerConfig(architectures=["BlockTransformerForCausalLM"], **B4_19)
        BlockTransformerForCausalLM(cfg).to(getattr(torch, dtype)).save_pretrained(path)
    return path


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--model-dir", default="/tmp/vllm_block_b4_19")
    args = ap.parse_args()

    from vllm import LLM, SamplingParams

    from vllm_block import cache as block_cache

    path = make_model(Path(args.model_dir + "_" + args.dtype), args.dtype)
    llm = LLM(model=str(path), skip_tokenizer_init=True, dtype=args.dtype, enforce_eager=True,
              max_model_len=args.prompt_len + args.new_tokens + 8,
              max_num_seqs=args.batch, max_num_batched_tokens=max(2048, args.batch),
              kv_cache_memory_bytes=1 << 30, enable_prefix_caching=False, seed=0)
    core = llm.llm_engine.engine_core.engine_core
    runner = core.model_executor.driver_worker.worker.model_runner
    model = runner.model
    timers = Timers()
    timers.wrap(block_cache, "device_step_plan", "step_plan")  # built on the host
    timers.wrap(model.block_decoder, "forward", "block_decoder")
    timers.wrap(model.token_decoder, "forward", "token_decoder")
    timers.wrap(model, "forward", "model_forward")
    timers.wrap(model, "compute_logits", "lm_head")
    num_tokens = []
    step_fn = core.step_fn

    def timed_step():
        timers.step.clear()
        t = time.perf_counter()
        out = step_fn()
        timers.step["engine_step"] = time.perf_counter() - t
        sched = getattr(core.scheduler, "_last_num_scheduled", None)
        timers.steps.append(dict(timers.step))
        num_tokens.append(sched)
        return out

    core.step_fn = timed_step
    rng = random.Random(0)
    prompts = [{"prompt_token_ids": [rng.randrange(50000) for _ in range(args.prompt_len)]}
               for _ in range(args.batch)]
    sp = SamplingParams(temperature=0.0, max_tokens=args.new_tokens, ignore_eos=True,
                        detokenize=False)
    llm.generate(prompts[:2], sp)  # warm-up
    timers.steps.clear()
    t = time.perf_counter()
    llm.generate(prompts, sp)
    wall = time.perf_counter() - t
    # all-decode steps: the block decoder ran on <= batch entries and the
    # forward was short; take the middle of the run, past the prefill steps
    steps = [s for s in timers.steps if "model_forward" in s]
    decode = steps[len(steps) // 3: -3]
    parts = ["step_plan", "block_decoder", "token_decoder", "lm_head"]
    med = {p: statistics.median(s.get(p, 0.0) for s in decode) * 1e3 for p in parts}
    med["model_forward"] = statistics.median(s["model_forward"] for s in decode) * 1e3
    med["engine_step"] = statistics.median(s["engine_step"] for s in decode) * 1e3
    # the step plan is built by the metadata builder, before the forward
    med["forward_other"] = med["model_forward"] - med["block_decoder"] - med["token_decoder"]
    med["engine_other"] = med["engine_step"] - med["model_forward"] - med["lm_head"] \
        - med["step_plan"]
    # block-closing steps (1 in L) vs the others
    with_block = [s["engine_step"] for s in decode if s.get("block_decoder")]
    without = [s["engine_step"] for s in decode if not s.get("block_decoder")]
    result = {
        "config": "block_main_b4_19 dimensions, random weights", "batch": args.batch,
        "dtype": args.dtype, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
        "median_ms_per_decode_step": {k: round(v, 3) for k, v in med.items()},
        "median_step_ms_block_closing": round(statistics.median(with_block) * 1e3, 3)
        if with_block else None,
        "median_step_ms_within_block": round(statistics.median(without) * 1e3, 3)
        if without else None,
        "decode_steps_measured": len(decode),
        "generated_tokens_per_s": round(args.batch * args.new_tokens / wall, 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d"),
    }
    out = HERE / "results" / f"decode_profile_{args.dtype}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
