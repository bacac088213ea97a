"""`vllm-block` command line.

    vllm-block convert SRC OUT [--config YAML] [--tokenizer DIR] [--dtype D]
                       [--alignment pad|nopad]
    vllm-block reference-generate MODEL (--prompt-ids 1,2,3 | --prompt TEXT)
    vllm-block train --out DIR [--arch block|vanilla] [--steps N] [--minutes M] ...
    vllm-block generate MODEL [--prompt TEXT ...] [--prompts-file F] [--max-tokens N]

Heavy modules (torch, transformers) are imported inside the subcommands.
Expected failures print `error: <message>` to stderr and exit with 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


class CLIError(Exception):
    """A user error found by the CLI itself (bad argument values)."""


def _convert(args: argparse.Namespace) -> None:
    from .convert import ConversionError, convert

    try:
        out = convert(args.src, args.out, config=args.config, tokenizer=args.tokenizer,
                      dtype=args.dtype, alignment=args.alignment)
    except ConversionError as e:
        raise CLIError(str(e)) from None
    print(f"wrote {out}")


def _parse_ids(text: str) -> list[int]:
    try:
        ids = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise CLIError(f"--prompt-ids must be comma-separated integers, got {text!r}")
    if not ids:
        raise CLIError("--prompt-ids is empty: at least one token is needed")
    return ids


def _reference_generate(args: argparse.Namespace) -> None:
    import torch
    from transformers.utils import logging

    from .reference import BlockTransformerForCausalLM

    logging.disable_progress_bar()

    model_dir = Path(args.model)
    if not (model_dir / "config.json").is_file():
        raise CLIError(f"{model_dir} is not a converted model directory (no config.json)")
    if args.max_new_tokens < 1:
        raise CLIError("--max-new-tokens must be at least 1")
    tokenizer = None
    if (model_dir / "tokenizer.json").is_file():
        from transformers import AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if args.prompt is not None:
        if tokenizer is None:
            raise CLIError(f"{model_dir} has no tokenizer.json: use --prompt-ids")
        ids = tokenizer(args.prompt, add_special_tokens=False)["input_ids"]
        if not ids:
            raise CLIError("--prompt gives no tokens")
    else:
        ids = _parse_ids(args.prompt_ids)
    model = BlockTransformerForCausalLM.from_pretrained(
        model_dir, dtype=getattr(torch, args.dtype)).eval()
    eos = None if args.ignore_eos else model.config.eos_token_id
    try:
        out = model.generate(torch.tensor([ids]), max_new_tokens=args.max_new_tokens,
                             eos_token_id=eos)
    except ValueError as e:  # e.g. token ids outside the vocabulary
        raise CLIError(str(e)) from None
    new = out[0, len(ids):].tolist()
    print("ids: " + ",".join(map(str, new)))
    if tokenizer is not None:
        print("text: " + tokenizer.decode(new))


def _train(args: argparse.Namespace) -> None:
    import shlex

    from .tools.train import TrainConfig, TrainError, train

    minutes = args.minutes if args.minutes is not None or args.steps else 20.0
    cfg = TrainConfig(arch=args.arch, steps=args.steps, minutes=minutes,
                      batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr,
                      eval_every=args.eval_every, seed=args.seed,
                      vocab_size=args.vocab_size, threads=args.threads)
    command = "vllm-block " + " ".join(shlex.quote(a) for a in args.argv)
    try:
        train(args.out, cfg, tokenizer_dir=args.tokenizer, data_dir=args.data_dir,
              card_dir=args.card, summary=args.summary, command=command,
              overwrite=args.overwrite)
    except TrainError as e:
        raise CLIError(str(e)) from None


def _generate(args: argparse.Namespace) -> None:
    """Batch generation through vLLM's `LLM()` (with its progress bar)."""
    prompts = list(args.prompt or [])
    if args.prompts_file:
        prompts += [line for line in Path(args.prompts_file).read_text().splitlines()
                    if line.strip()]
    if not prompts:
        raise CLIError("give at least one --prompt or a --prompts-file")
    if not (Path(args.model) / "tokenizer.json").is_file():
        raise CLIError(f"{args.model} has no tokenizer.json: text prompts need one")
    import time

    from vllm import LLM, SamplingParams

    llm = LLM(model=args.model, dtype=args.dtype, max_model_len=args.max_model_len,
              kv_cache_memory_bytes=int(args.kv_cache_gib * 2**30), seed=args.seed)
    params = SamplingParams(temperature=args.temperature, top_p=args.top_p,
                            max_tokens=args.max_tokens)
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=True)
    elapsed = time.perf_counter() - start
    for out in outputs:
        print(f"=== {out.prompt!r}\n{out.prompt}{out.outputs[0].text}")
    generated = sum(len(o.outputs[0].token_ids) for o in outputs)
    print(f"{generated} tokens for {len(outputs)} prompts in {elapsed:.1f} s "
          f"({generated / elapsed:.1f} tokens/s)")


def build_parser() -> argparse.ArgumentParser:
    """The `vllm-block` parser: one subcommand per `_add_*` function below,
    each naming its handler, so `main` needs no table of its own."""
    parser = argparse.ArgumentParser(
        prog="vllm-block", description="Block Transformer models for vLLM")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_convert(sub)
    _add_reference_generate(sub)
    _add_train(sub)
    _add_generate(sub)
    return parser


def _add_convert(sub) -> None:
    p = sub.add_parser("convert", help="original research checkpoint -> HF directory")
    p.add_argument("src", help="checkpoint directory (config.yaml + model.safetensors "
                               "or pytorch_model.bin), or a weights file")
    p.add_argument("out", help="output directory (must not exist or be empty)")
    p.add_argument("--config", help="original config yaml (default: SRC/config.yaml)")
    p.add_argument("--tokenizer", help="directory with tokenizer.json to copy into OUT")
    p.add_argument("--dtype", default="float32",
                   help="weight dtype: float32 (default), bfloat16 or float16")
    p.add_argument("--alignment", choices=("pad", "nopad"), default=None,
                   help="first-block layout the checkpoint was trained with (default: "
                        "read off the config: random_pad_first_block, else no-pad for "
                        "models of >= 300M decoder parameters)")
    p.set_defaults(func=_convert)


def _add_reference_generate(sub) -> None:
    p = sub.add_parser("reference-generate",
                       help="greedy generation with the plain-PyTorch reference model")
    p.add_argument("model", help="converted model directory")
    prompt = p.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt-ids", help="comma-separated token ids, e.g. 1,2,3")
    prompt.add_argument("--prompt", help="text prompt (needs tokenizer files in MODEL)")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--ignore-eos", action="store_true", help="do not stop at EOS")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.set_defaults(func=_reference_generate)


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train the demo model (KJV Bible) or its baseline")
    p.add_argument("--out", required=True, help="output model directory")
    p.add_argument("--arch", default="block", choices=["block", "vanilla"],
                   help="block (Block Transformer) or vanilla (GPT-NeoX baseline)")
    p.add_argument("--steps", type=int, help="optimizer steps (cosine over them)")
    p.add_argument("--minutes", type=float,
                   help="wall-clock budget (default 20 without --steps; a cap with it)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--tokenizer", help="reuse DIR/tokenizer.json instead of training one")
    p.add_argument("--data-dir", default="out/data", help="corpus cache directory")
    p.add_argument("--card", help="block model dir whose model card gets this run "
                                  "as its vanilla baseline")
    p.add_argument("--summary", help="write a JSON comparing this run with --card's")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a model already trained in --out")
    p.set_defaults(func=_train)


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="batch generation with vLLM's LLM()")
    p.add_argument("model", help="model directory with tokenizer files")
    p.add_argument("--prompt", action="append", help="a text prompt (repeatable)")
    p.add_argument("--prompts-file", help="one prompt per line")
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--max-model-len", type=int, default=512)
    p.add_argument("--kv-cache-gib", type=float, default=1.0,
                   help="KV-cache memory (on CPU vLLM otherwise reserves a share of RAM)")
    p.set_defaults(func=_generate)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args.func(args)
    except (CLIError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
