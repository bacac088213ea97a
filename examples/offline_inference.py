"""Offline batch generation with vLLM's `LLM()` on a Block Transformer.

    python examples/offline_inference.py MODEL_DIR [--num-prompts 64] [--max-tokens 48]

With a tokenizer in MODEL_DIR the prompts are text; without one, token ids.
vLLM shows its progress bar; the script prints a few completions and the
generated tokens per second.
"""
import argparse
import random
import time

PROMPTS = ["In the beginning", "And God said", "The LORD is my shepherd",
           "Blessed are the", "And it came to pass", "For God so loved"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--num-prompts", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--kv-cache-gib", type=float, default=1.0,
                    help="KV-cache memory (on CPU vLLM otherwise reserves a fraction of RAM)")
    args = ap.parse_args()

    from pathlib import Path

    from vllm import LLM, SamplingParams

    has_tokenizer = (Path(args.model) / "tokenizer.json").exists()
    llm = LLM(model=args.model, dtype=args.dtype, skip_tokenizer_init=not has_tokenizer,
              max_model_len=512, kv_cache_memory_bytes=int(args.kv_cache_gib * 2**30), seed=0)
    if has_tokenizer:
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.num_prompts)]
    else:
        vocab = llm.llm_engine.model_config.get_vocab_size()
        rng = random.Random(0)
        prompts = [{"prompt_token_ids": [rng.randrange(vocab) for _ in range(rng.randint(1, 24))]}
                   for _ in range(args.num_prompts)]
    params = SamplingParams(temperature=args.temperature, top_p=0.95, seed=0,
                            max_tokens=args.max_tokens, ignore_eos=True,
                            detokenize=has_tokenizer)
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=True)
    elapsed = time.perf_counter() - start
    generated = sum(len(o.outputs[0].token_ids) for o in outputs)
    for out in outputs[:3]:
        shown = out.outputs[0].text if has_tokenizer else out.outputs[0].token_ids
        print(f"--- {out.prompt if has_tokenizer else out.prompt_token_ids}\n{shown}")
    print(f"generated {generated} tokens for {len(outputs)} prompts in {elapsed:.1f} s "
          f"({generated / elapsed:.1f} tokens/s)")


if __name__ == "__main__":  # vLLM's CPU engine spawns worker processes
    main()
