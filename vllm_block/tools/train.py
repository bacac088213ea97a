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
    bar = _progress_bar(cfg, budget, progress)
    step, tokens, smooth, last_val = 0, 0, None, None
    while True:
        elapsed = time.perf_counter() - start
        stopped_by = _stop_reason(cfg, step, elapsed, budget)
        if stopped_by is not None:
            break
        lr = lr_at(cfg, step, step / cfg.steps if cfg.steps is not None else elapsed / budget)
        value, batch_tokens = _train_step(model, opt, train_ids, cfg, gen, lr)
        step += 1
        tokens += batch_tokens
        smooth = value if smooth is None else 0.95 * smooth + 0.05 * value
        if step % cfg.eval_every == 0 or step == cfg.steps:
            last_val = _validation_check(model, val_ids, cfg, bar, history, start, {
                "step": step, "tokens": tokens, "lr": lr, "train_loss": value,
                "train_loss_smooth": smooth})
            if on_eval is not None:
                on_eval({"history": history, "steps": step})
        _show_progress(bar, cfg, step, start, smooth, lr, last_val)
    train_seconds = time.perf_counter() - start
    bar.close()
    return {"history": history, "steps": step, "tokens_seen": tokens,
            "train_seconds": train_seconds, "stopped_by": stopped_by,
            "final": _final_numbers(model, train_ids, val_ids, cfg, smooth)}


def _stop_reason(cfg: TrainConfig, step: int, elapsed: float,
                 budget: float | None) -> str | None:
    """"steps" or "minutes" when the run is over (the step count is checked
    first, so a run given both stops by whichever comes first), else None."""
    if cfg.steps is not None and step >= cfg.steps:
        return "steps"
    if budget is not None and elapsed >= budget:
        return "minutes"
    return None


def _train_step(model, opt, train_ids, cfg: TrainConfig, gen, lr: float) -> tuple[float, int]:
    """One optimiser step at learning rate `lr` on `batch_size` random windows
    (drawn from `gen`, so both archs see the same batches); returns (loss,
    tokens in the batch)."""
    import torch

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
    return loss.item(), x.numel()


def _validation_check(model, val_ids, cfg: TrainConfig, bar, history: list,
                      start: float, rec: dict[str, Any]) -> float:
    """The periodic check on `eval_windows` validation windows (the full set
    is only evaluated at the end, to keep the loop fast): completes `rec`,
    appends it to `history`, prints it, and returns the loss."""
    val_loss, _ = evaluate(model, val_ids, cfg.seq_len, cfg.eval_windows)
    rec.update({"val_loss_subset": val_loss, "elapsed_s": time.perf_counter() - start})
    history.append(rec)
    bar.write(f"step {rec['step']:5d}  train {rec['train_loss_smooth']:.4f}  "
              f"val(subset) {val_loss:.4f}  lr {rec['lr']:.2e}  {rec['elapsed_s']:.0f}s")
    return val_loss


def _progress_bar(cfg: TrainConfig, budget: float | None, progress: bool):
    """A bar counting steps, or seconds of the budget when no step count is set."""
    from tqdm.auto import tqdm

    return tqdm(total=cfg.steps if cfg.steps is not None else int(budget),
                unit="step" if cfg.steps is not None else "s", disable=not progress,
                dynamic_ncols=True, mininterval=2.0,
                desc=f"train {cfg.arch}")


def _show_progress(bar, cfg: TrainConfig, step: int, start: float, smooth: float,
                   lr: float, last_val: float | None) -> None:
    """Advance the bar (by a step, or to the elapsed second, redrawn every 10
    steps so a time-budgeted bar moves) with the smoothed loss and lr."""
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


def _final_numbers(model, train_ids, val_ids, cfg: TrainConfig,
                   smooth: float | None) -> dict[str, Any]:
    """The numbers a run is judged by: the loss on every validation window,
    and on as many training windows, to show the gap between the two."""
    val_loss, val_tokens = evaluate(model, val_ids, cfg.seq_len)
    train_eval, _ = evaluate(model, train_ids, cfg.seq_len, max_windows=len(val_ids) // cfg.seq_len)
    return {"val_loss": val_loss, "val_perplexity": math.exp(val_loss),
            "val_tokens": val_tokens, "train_eval_loss": train_eval,
            "train_loss_smooth": smooth}


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
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    cfg.validate()
    out = Path(out_dir)
    _check_out_dir(out, overwrite)
    torch.set_num_threads(cfg.threads)
    tok, train_ids, val_ids, data_info = _prepare_data(cfg, docs, val_docs, tokenizer_dir,
                                                       data_dir)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, data_info["vocab_size"])
    log = _new_log(model, cfg, out, command, data_info)
    log_path = _open_out_dir(out, cfg)
    if progress:
        _print_start(log, len(train_ids), len(val_ids))
    result = run_training(model, train_ids, val_ids, cfg, progress=progress,
                          on_eval=lambda update: _write_log(log_path, log, update))
    model.eval()
    if samples:
        result["samples"] = sample_texts(model, tok, cfg, seed=cfg.seed)
    if progress:
        _print_result(cfg, result)
    result["safetensors_bytes"] = _save_model_dir(model, tok, out, cfg) if save_weights else None
    result["complete"] = True
    _write_log(log_path, log, result)
    _write_cards(out, cfg, log, card_dir, save_weights)
    if summary is not None:
        write_summary(summary, log, card_dir)
    return log


def _prepare_data(cfg: TrainConfig, docs: list | None, val_docs: list | None,
                  tokenizer_dir: str | Path | None, data_dir: str | Path):
    """(tokenizer, training ids, validation ids, what the log records of the data)."""
    from . import data as D

    train_docs, val_list, data_info = _documents(docs, val_docs, data_dir)
    tok = _tokenizer(train_docs, tokenizer_dir, cfg.vocab_size)
    train_ids, val_ids = D.encode_stream(tok, train_docs), D.encode_stream(tok, val_list)
    data_info.update({"train_chapters": len(train_docs), "val_chapters": len(val_list),
                      "train_tokens": len(train_ids), "val_tokens": len(val_ids),
                      "vocab_size": tok.get_vocab_size()})
    return tok, train_ids, val_ids, data_info


def _documents(docs: list | None, val_docs: list | None, data_dir: str | Path):
    """(training docs, validation docs, their source for the log): the KJV's
    chapters split by `data.split`, or the given documents (validated on
    themselves when no `val_docs` are given, as the tests do)."""
    from . import data as D

    if docs is None:
        chapters = D.kjv_chapters(data_dir)
        train_docs, val_list = D.split(chapters)
        return train_docs, val_list, {
            "source": "King James Bible", "package": "bible-kjv",
            "source_command": f"bible -f {D.KJV_RANGE}",
            "chapters": len(chapters), "val_every": D.VAL_EVERY}
    train_docs = list(docs)
    val_list = list(val_docs) if val_docs is not None else list(docs)
    return train_docs, val_list, {
        "source": "given documents", "package": None,
        "source_command": None, "chapters": len(train_docs) + len(val_list),
        "val_every": None}


def _tokenizer(train_docs: list, tokenizer_dir: str | Path | None, vocab_size: int):
    """The tokenizer in `tokenizer_dir` (so a baseline shares the block
    model's), else one trained on the training docs; either way its
    end-of-text token must be id 0, the models' pad/bos/eos."""
    from tokenizers import Tokenizer

    from . import data as D

    if tokenizer_dir is None:
        return D.train_tokenizer(train_docs, vocab_size)
    tok_file = Path(tokenizer_dir) / "tokenizer.json"
    if not tok_file.is_file():
        raise TrainError(f"--tokenizer {tokenizer_dir} has no tokenizer.json")
    tok = Tokenizer.from_file(str(tok_file))
    if tok.token_to_id(D.EOT) != 0:
        raise TrainError(f"--tokenizer {tokenizer_dir}: {D.EOT} is not id 0")
    return tok


def _new_log(model, cfg: TrainConfig, out: Path, command: str | None,
             data_info: dict) -> dict[str, Any]:
    """The log's head: what was run, on what, at what size; marked incomplete
    until the weights are written."""
    import torch

    if command is None:
        command = "vllm-block train " + " ".join(
            shlex.quote(a) for a in ["--arch", cfg.arch, "--out", str(out)])
    return {
        "arch": cfg.arch, "command": command, "train_config": asdict(cfg),
        "data": data_info, "params": count_params(model),
        "train_flops_per_token": training_flops_per_token(model, cfg),
        "machine": _machine(), "torch": torch.__version__, "complete": False}


def _open_out_dir(out: Path, cfg: TrainConfig) -> Path:
    """Create `out` and return its log's path; a new block model drops the
    baseline recorded for the one it replaces, which would be stale."""
    out.mkdir(parents=True, exist_ok=True)
    if cfg.arch == "block":
        (out / BASELINE_NAME).unlink(missing_ok=True)
    return out / LOG_NAME


def _write_log(log_path: Path, log: dict, update: dict) -> None:
    """Merge `update` into `log` and rewrite the file atomically, so a run
    cut short leaves a readable log of the checks so far."""
    log.update(update)
    tmp = log_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(log, indent=1) + "\n")
    tmp.replace(log_path)


def _print_start(log: dict, train_tokens: int, val_tokens: int) -> None:
    """The run's size and data, before the first step, for the terminal."""
    print(f"{log['arch']}: {log['params']:,} parameters, "
          f"{log['train_flops_per_token'] / 1e6:.1f} MFLOPs/token "
          f"(training), train {train_tokens:,} tokens, val {val_tokens:,} tokens, "
          f"vocab {log['data']['vocab_size']}", flush=True)


def _print_result(cfg: TrainConfig, result: dict) -> None:
    """The run's final line and its samples, for the terminal."""
    print(f"{cfg.arch}: {result['steps']} steps in {result['train_seconds'] / 60:.1f} "
          f"min, final validation loss {result['final']['val_loss']:.4f} "
          f"({result['final']['val_tokens']:,} tokens)", flush=True)
    for s in result.get("samples", []):
        print(f"  [{s['prompt']}]{s['completion']!r}", flush=True)


def _save_model_dir(model, tok, out: Path, cfg: TrainConfig) -> int | None:
    """Weights (float32 safetensors), sampling defaults and tokenizer: a
    directory `from_pretrained` and `vllm serve` load. Returns the weights'
    size in bytes."""
    import torch
    from transformers import GenerationConfig

    from . import data as D

    model.config.dtype = torch.float32
    model.save_pretrained(out, safe_serialization=True)
    GenerationConfig(bos_token_id=0, eos_token_id=0, pad_token_id=0, do_sample=True,
                     temperature=0.8, top_p=0.95, max_new_tokens=64
                     ).save_pretrained(out)
    D.save_tokenizer(tok, out, cfg.max_position_embeddings)
    weights = out / "model.safetensors"
    return weights.stat().st_size if weights.is_file() else None


def _write_cards(out: Path, cfg: TrainConfig, log: dict, card_dir: str | Path | None,
                 save_weights: bool) -> None:
    """A saved block model gets its card; a vanilla run given `--card` is
    recorded beside that block model as its baseline, and its card rewritten."""
    from .model_card import write_model_card

    if cfg.arch == "block" and save_weights:
        write_model_card(out)
    if card_dir is None:
        return
    card = Path(card_dir)
    if not (card / LOG_NAME).is_file():
        raise TrainError(f"--card {card} has no {LOG_NAME}: train the block model first")
    if cfg.arch != "vanilla":
        raise TrainError("--card takes the vanilla run's results: use it with --arch vanilla")
    (card / BASELINE_NAME).write_text(json.dumps(
        {k: v for k, v in log.items() if k != "history"}, indent=1) + "\n")
    write_model_card(card)


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
