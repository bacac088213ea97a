"""Train the demo models: a tiny Block Transformer and a vanilla GPT-NeoX baseline.

    vllm-block train --out models/kjv-block-tiny --steps 1000
    vllm-block train --arch vanilla --out models/kjv-vanilla-tiny --steps 1000 \\
        --tokenizer models/kjv-block-tiny --card models/kjv-block-tiny

Both archs run the same loop on the same data (King James Bible, see
`data.py`), with the same batches (same seed), AdamW with linear warmup and
cosine decay, and the same validation metric: the mean token cross-entropy
(nats) of `evaluate()` on the held-out chapters, cut into non-overlapping
windows of `seq_len` tokens, every token but each window's first predicted.

The vanilla baseline has 6 layers of the token decoder's width: per token
the block model runs its token decoder on (R + L - 1) / L = 5/4 positions
and its block decoder on 1/L = 1/4, i.e. 4 * 5/4 + 4 * 1/4 = 6 layer passes,
so with the same embedding / LM-head sizes both cost the same training FLOPs
per token, and the two runs see the same tokens (equal-FLOPs comparison).
"""
from __future__ import annotations

import json
import math
import platform
import shlex
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

ARCHS = ("block", "vanilla")
LOG_NAME = "train_log.json"
BASELINE_NAME = "vanilla_baseline.json"
SAMPLE_PROMPTS = ("And God said,", "The LORD is my shepherd;", "Jesus answered and said")


class TrainError(RuntimeError):
    """A user error (bad option, output directory in use)."""


@dataclass
class TrainConfig:
    arch: str = "block"
    steps: int | None = None  # None: run for `minutes`, schedule by elapsed time
    minutes: float | None = 20.0  # wall-clock budget (a cap when steps is set)
    batch_size: int = 8
    seq_len: int = 256
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 100
    eval_windows: int = 48  # validation windows of the periodic checks (all at the end)
    seed: int = 0
    vocab_size: int = 4096
    hidden_size: int = 256
    num_heads: int = 4
    num_layers: int = 4  # each decoder of the block model
    vanilla_layers: int = 6  # equal training FLOPs per token, see the module doc
    block_length: int = 4
    prefix_length: int = 2
    max_position_embeddings: int = 512
    threads: int = 1

    def validate(self) -> None:
        if self.arch not in ARCHS:
            raise TrainError(f"--arch must be one of {', '.join(ARCHS)}, got {self.arch!r}")
        if self.steps is None and self.minutes is None:
            raise TrainError("give --steps or --minutes (or both)")
        if self.steps is not None and self.steps < 1:
            raise TrainError("--steps must be at least 1")
        if self.minutes is not None and not self.minutes > 0:
            raise TrainError("--minutes must be positive")
        for name in ("batch_size", "seq_len", "vocab_size", "hidden_size", "num_heads",
                     "num_layers", "vanilla_layers", "threads", "eval_every"):
            if getattr(self, name) < 1:
                raise TrainError(f"{name} must be at least 1")
        if self.seq_len < 2:
            raise TrainError("--seq-len must be at least 2")
        if self.seq_len > self.max_position_embeddings:
            raise TrainError(f"--seq-len {self.seq_len} exceeds max_position_embeddings "
                             f"{self.max_position_embeddings}")


# ---------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------
def build_model(cfg: TrainConfig, vocab_size: int):
    """A freshly initialised model of `cfg.arch` (seeded by the caller)."""
    if cfg.arch == "block":
        from ..config import BlockTransformerConfig
        from ..reference import BlockTransformerForCausalLM

        dec = {"num_hidden_layers": cfg.num_layers, "hidden_size": cfg.hidden_size,
               "num_attention_heads": cfg.num_heads,
               "intermediate_size": 4 * cfg.hidden_size,
               "max_position_embeddings": cfg.max_position_embeddings}
        config = BlockTransformerConfig(
            block_length=cfg.block_length, prefix_length=cfg.prefix_length,
            vocab_size=vocab_size, max_position_embeddings=cfg.max_position_embeddings,
            **{f"{d}_{k}": v for d in ("block", "token") for k, v in dec.items()})
        config.architectures = ["BlockTransformerForCausalLM"]
        return BlockTransformerForCausalLM(config)
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    config = GPTNeoXConfig(
        vocab_size=vocab_size, hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.vanilla_layers, num_attention_heads=cfg.num_heads,
        intermediate_size=4 * cfg.hidden_size,
        max_position_embeddings=cfg.max_position_embeddings, rotary_pct=0.25,
        use_parallel_residual=True, tie_word_embeddings=False,
        bos_token_id=0, eos_token_id=0, pad_token_id=0)
    config.architectures = ["GPTNeoXForCausalLM"]
    return GPTNeoXForCausalLM(config)


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def training_flops_per_token(model, cfg: TrainConfig) -> float:
    """6 x (weights a token passes through), counting the block model's decoder
    weights by the positions per token each decoder runs (attention scores
    left out; small at this width and context)."""
    import torch.nn as nn

    if cfg.arch == "vanilla":
        matmul = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
        return 6.0 * matmul
    L, R = cfg.block_length, cfg.prefix_length

    def linear(mod) -> int:
        return sum(m.weight.numel() for m in mod.modules() if isinstance(m, nn.Linear))

    per_token = (linear(model.block_decoder) / L + linear(model.expansion) / L
                 + linear(model.token_decoder) * (R + L - 1) / L
                 + linear(model.lm_head))
    return 6.0 * per_token


# ---------------------------------------------------------------------------
# loop
# ---------------------------------------------------------------------------
def lr_at(cfg: TrainConfig, step: int, progress: float) -> float:
    """Linear warmup over `warmup_steps`, then cosine from lr to
    lr * min_lr_ratio; `progress` in [0, 1] is the share of the run done."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    p = min(max(progress, 0.0), 1.0)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p)))


def _logits(model, ids):
    return model(ids).logits


def evaluate(model, ids, seq_len: int, max_windows: int | None = None,
             batch_size: int = 8) -> tuple[float, int]:
    """(mean token cross-entropy in nats, number of predicted tokens) over
    the non-overlapping `seq_len` windows of the 1-D stream `ids` (a
    trailing partial window is dropped); in each window every token but the
    first is predicted from the tokens before it. Identical for both archs."""
    import torch
    import torch.nn.functional as F

    n = len(ids) // seq_len
    if max_windows is not None:
        n = min(n, max_windows)
    if n == 0:
        raise TrainError(f"validation stream of {len(ids)} tokens is shorter than "
                         f"one window of {seq_len}")
    windows = ids[: n * seq_len].view(n, seq_len)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, n, batch_size):
            x = windows[i:i + batch_size]
            logits = _logits(model, x)[:, :-1].float()
            total += F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten(),
                                     reduction="sum").item()
            count += x[:, 1:].numel()
    model.train(was_training)
    return total / count, count


def _param_groups(model, weight_decay: float):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def run_training(model, train_ids, val_ids, cfg: TrainConfig, progress: bool = True,
                 on_eval: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Train `model` in place on random `seq_len` windows of `train_ids`.

    Stops after `cfg.steps` steps, or when `cfg.minutes` have passed (the
    cosine schedule then follows the elapsed share of the budget). Returns
    the history and the final numbers (full validation loss at the end).
    """
    import torch
    from tqdm.auto import tqdm

    if len(train_ids) <= cfg.seq_len:
        raise TrainError(f"training stream of {len(train_ids)} tokens is too short for "
                         f"--seq-len {cfg.seq_len}")
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    opt = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr,
                            betas=(0.9, 0.95), eps=1e-8)
    budget = None if cfg.minutes is None else cfg.minutes * 60.0
    history: list[dict[str, Any]] = []
    model.train()
    start = time.perf_counter()
    bar = tqdm(total=cfg.steps if cfg.steps is not None else int(budget),
               unit="step" if cfg.steps is not None else "s", disable=not progress,
               dynamic_ncols=True, mininterval=2.0,
               desc=f"train {cfg.arch}")
    step, tokens, smooth, stopped_by = 0, 0, None, "steps"
    last_val = None
    while True:
        elapsed = time.perf_counter() - start
        if cfg.steps is not None and step >= cfg.steps:
            break
        if budget is not None and elapsed >= budget:
            stopped_by = "minutes"
            break
        progress_share = step / cfg.steps if cfg.steps is not None else elapsed / budget
        lr = lr_at(cfg, step, progress_share)
        for g in opt.param_groups:
            g["lr"] = lr
        starts = torch.randint(0, len(train_ids) - cfg.seq_len, (cfg.batch_size,),
                               generator=gen)
        x = torch.stack([train_ids[s:s + cfg.seq_len] for s in starts.tolist()])
        loss = model(x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        step += 1
        tokens += x.numel()
        value = loss.item()
        smooth = value if smooth is None else 0.95 * smooth + 0.05 * value
        if step % cfg.eval_every == 0 or step == cfg.steps:
            last_val, _ = evaluate(model, val_ids, cfg.seq_len, cfg.eval_windows)
            rec = {"step": step, "tokens": tokens, "lr": lr, "train_loss": value,
                   "train_loss_smooth": smooth, "val_loss_subset": last_val,
                   "elapsed_s": time.perf_counter() - start}
            history.append(rec)
            bar.write(f"step {step:5d}  train {smooth:.4f}  val(subset) {last_val:.4f}  "
                      f"lr {lr:.2e}  {rec['elapsed_s']:.0f}s")
            if on_eval is not None:
                on_eval({"history": history, "steps": step})
        postfix = {"loss": f"{smooth:.3f}", "lr": f"{lr:.1e}"}
        if last_val is not None:
            postfix["val"] = f"{last_val:.3f}"
        bar.set_postfix(postfix, refresh=False)
        if cfg.steps is not None:
            bar.update(1)
        else:
            bar.n = min(int(time.perf_counter() - start), bar.total)
            if step % 10 == 0:
                bar.refresh()
    train_seconds = time.perf_counter() - start
    bar.close()
    val_loss, val_tokens = evaluate(model, val_ids, cfg.seq_len)
    train_eval, _ = evaluate(model, train_ids, cfg.seq_len, max_windows=len(val_ids) // cfg.seq_len)
    return {"history": history, "steps": step, "tokens_seen": tokens,
            "train_seconds": train_seconds, "stopped_by": stopped_by,
            "final": {"val_loss": val_loss, "val_perplexity": math.exp(val_loss),
                      "val_tokens": val_tokens, "train_eval_loss": train_eval,
                      "train_loss_smooth": smooth}}


# ---------------------------------------------------------------------------
# samples, card
# ---------------------------------------------------------------------------
def sample_texts(model, tokenizer, cfg: TrainConfig, prompts=SAMPLE_PROMPTS,
                 max_new_tokens: int = 40, temperature: float = 0.8,
                 top_p: float = 0.95, seed: int = 0) -> list[dict[str, str]]:
    """Sampled continuations (temperature 0.8, top-p 0.95, fixed seed)."""
    import torch

    model.eval()
    out = []
    for i, prompt in enumerate(prompts):
        ids = torch.tensor([tokenizer.encode(prompt).ids])
        gen = torch.Generator().manual_seed(seed + i)
        if cfg.arch == "block":
            new = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=True,
                                 temperature=temperature, top_p=top_p, eos_token_id=0,
                                 generator=gen)[0, ids.shape[1]:]
        else:
            torch.manual_seed(seed + i)
            new = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=True,
                                 temperature=temperature, top_p=top_p, top_k=0,
                                 eos_token_id=0, pad_token_id=0)[0, ids.shape[1]:]
        new = [t for t in new.tolist()]
        if 0 in new:
            new = new[:new.index(0)]
        out.append({"prompt": prompt, "completion": tokenizer.decode(new)})
    return out


# ---------------------------------------------------------------------------
# the whole pipeline
# ---------------------------------------------------------------------------
def _check_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise TrainError(f"--out {out} exists and is not a directory")
    if not overwrite and any((out / f).exists() for f in (LOG_NAME, "config.json")):
        raise TrainError(f"--out {out} already holds a trained model: pass --overwrite")


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return cpu


def train(out_dir: str | Path, cfg: TrainConfig, *, docs: list | None = None,
          val_docs: list | None = None, tokenizer_dir: str | Path | None = None,
          data_dir: str | Path = "out/data", card_dir: str | Path | None = None,
          summary: str | Path | None = None, command: str | None = None,
          overwrite: bool = False, progress: bool = True, samples: bool = True,
          save_weights: bool = True) -> dict[str, Any]:
    """Train `cfg.arch` and write a Hugging Face directory to `out_dir`.

    Data: the KJV (`data.kjv_chapters`, split by `data.split`) unless `docs`
    (and `val_docs`) are given as lists of strings. The tokenizer is trained
    on the training docs unless `tokenizer_dir` holds one to reuse.
    `card_dir`: a block model dir whose model card gets this run as its
    vanilla baseline. `summary`: a JSON file comparing the two runs.
    Returns the training log (also written to `out_dir/train_log.json`).
    """
    import torch
    from tokenizers import Tokenizer
    from transformers import GenerationConfig
    from transformers.utils import logging as hf_logging

    from . import data as D
    from .model_card import write_model_card

    hf_logging.disable_progress_bar()
    cfg.validate()
    out = Path(out_dir)
    _check_out_dir(out, overwrite)
    torch.set_num_threads(cfg.threads)

    if docs is None:
        chapters = D.kjv_chapters(data_dir)
        train_docs, val_list = D.split(chapters)
        data_info = {"source": "King James Bible", "package": "bible-kjv",
                     "source_command": f"bible -f {D.KJV_RANGE}",
                     "chapters": len(chapters), "val_every": D.VAL_EVERY}
    else:
        train_docs = list(docs)
        val_list = list(val_docs) if val_docs is not None else list(docs)
        data_info = {"source": "given documents", "package": None,
                     "source_command": None, "chapters": len(train_docs) + len(val_list),
                     "val_every": None}
    if tokenizer_dir is not None:
        tok_file = Path(tokenizer_dir) / "tokenizer.json"
        if not tok_file.is_file():
            raise TrainError(f"--tokenizer {tokenizer_dir} has no tokenizer.json")
        tok = Tokenizer.from_file(str(tok_file))
        if tok.token_to_id(D.EOT) != 0:
            raise TrainError(f"--tokenizer {tokenizer_dir}: {D.EOT} is not id 0")
    else:
        tok = D.train_tokenizer(train_docs, cfg.vocab_size)
    vocab = tok.get_vocab_size()
    train_ids, val_ids = D.encode_stream(tok, train_docs), D.encode_stream(tok, val_list)
    data_info.update({"train_chapters": len(train_docs), "val_chapters": len(val_list),
                      "train_tokens": len(train_ids), "val_tokens": len(val_ids),
                      "vocab_size": vocab})

    torch.manual_seed(cfg.seed)
    model = build_model(cfg, vocab)
    params = count_params(model)
    flops = training_flops_per_token(model, cfg)
    if command is None:
        command = "vllm-block train " + " ".join(
            shlex.quote(a) for a in ["--arch", cfg.arch, "--out", str(out)])
    log: dict[str, Any] = {
        "arch": cfg.arch, "command": command, "train_config": asdict(cfg),
        "data": data_info, "params": params, "train_flops_per_token": flops,
        "machine": _machine(), "torch": torch.__version__, "complete": False}
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / LOG_NAME
    if cfg.arch == "block":  # a baseline recorded for an earlier model is stale
        (out / BASELINE_NAME).unlink(missing_ok=True)

    def write_log(update: dict) -> None:
        log.update(update)
        tmp = log_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(log, indent=1) + "\n")
        tmp.replace(log_path)

    if progress:
        print(f"{cfg.arch}: {params:,} parameters, {flops / 1e6:.1f} MFLOPs/token "
              f"(training), train {len(train_ids):,} tokens, val {len(val_ids):,} tokens, "
              f"vocab {vocab}", flush=True)
    result = run_training(model, train_ids, val_ids, cfg, progress=progress,
                          on_eval=write_log)
    model.eval()
    if samples:
        result["samples"] = sample_texts(model, tok, cfg, seed=cfg.seed)
    if progress:
        print(f"{cfg.arch}: {result['steps']} steps in {result['train_seconds'] / 60:.1f} "
              f"min, final validation loss {result['final']['val_loss']:.4f} "
              f"({result['final']['val_tokens']:,} tokens)", flush=True)
        for s in result.get("samples", []):
            print(f"  [{s['prompt']}]{s['completion']!r}", flush=True)

    if save_weights:
        model.config.dtype = torch.float32
        model.save_pretrained(out, safe_serialization=True)
        GenerationConfig(bos_token_id=0, eos_token_id=0, pad_token_id=0, do_sample=True,
                         temperature=0.8, top_p=0.95, max_new_tokens=64
                         ).save_pretrained(out)
        D.save_tokenizer(tok, out, cfg.max_position_embeddings)
        weights = out / "model.safetensors"
        result["safetensors_bytes"] = weights.stat().st_size if weights.is_file() else None
    else:
        result["safetensors_bytes"] = None
    result["complete"] = True
    write_log(result)
    if cfg.arch == "block" and save_weights:
        write_model_card(out)
    if card_dir is not None:
        card = Path(card_dir)
        if not (card / LOG_NAME).is_file():
            raise TrainError(f"--card {card} has no {LOG_NAME}: train the block model first")
        if cfg.arch != "vanilla":
            raise TrainError("--card takes the vanilla run's results: use it with --arch vanilla")
        (card / BASELINE_NAME).write_text(json.dumps(
            {k: v for k, v in log.items() if k != "history"}, indent=1) + "\n")
        write_model_card(card)
    if summary is not None:
        write_summary(summary, log, card_dir)
    return log


def write_summary(path: str | Path, log: dict, block_dir: str | Path | None) -> Path:
    """A small JSON comparing this run with the block run in `block_dir`."""
    runs = {}
    if block_dir is not None and (Path(block_dir) / LOG_NAME).is_file():
        runs["block"] = json.loads((Path(block_dir) / LOG_NAME).read_text())
    runs[log["arch"]] = log
    keep = ("command", "params", "train_flops_per_token", "steps", "tokens_seen",
            "train_seconds", "safetensors_bytes", "final", "machine", "torch")
    out = {"metric": "validation loss = mean token cross-entropy (nats) on the held-out "
                     "KJV chapters (every 20th), non-overlapping 256-token windows",
           "comparison": "equal training FLOPs per token and equal tokens",
           "runs": {a: {k: r.get(k) for k in keep} | {"train_config": r["train_config"]}
                    for a, r in runs.items()}}
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(out, indent=1) + "\n")
    return p
