"""The model card (README.md) of a demo model directory, written from the
training log `train.py` leaves there (and the vanilla baseline's, when
`vllm-block train --card` put it beside it).

Each section is its own function returning its lines, so a reader (or a
change) finds one section's wording without scrolling past the others."""
from __future__ import annotations

import json
from pathlib import Path

from .train import BASELINE_NAME, LOG_NAME


def _fmt_size(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def write_model_card(model_dir: str | Path) -> Path:
    """README.md of a block model dir from its train_log.json (and the
    vanilla_baseline.json that `--card` puts beside it, when present)."""
    d = Path(model_dir)
    log = json.loads((d / LOG_NAME).read_text())
    base_path = d / BASELINE_NAME
    base = json.loads(base_path.read_text()) if base_path.is_file() else None
    lines = (_front_matter(d.name) + _model_section(log) + _data_section(log["data"])
             + _training_section(log) + _results_section(log, base)
             + _samples_section(log, base) + _use_section(d.name)
             + _reproduce_section(log, base))
    path = d / "README.md"
    path.write_text("\n".join(lines))
    return path


def _front_matter(name: str) -> list[str]:
    """Hugging Face's YAML header (license, tags) and the one-paragraph intro."""
    return [
        "---",
        "license: cc0-1.0",
        "language: en",
        "library_name: vllm-block",
        "tags: [block-transformer, vllm, tiny, demo]",
        "---",
        "",
        f"# {name}",
        "",
        "A tiny **Block Transformer** (Ho et al., 2024) trained from scratch on one CPU core by "
        "`vllm-block train`, shipped with `vllm-block` as its demo model. It writes "
        "King-James-Bible-like English; it knows nothing else.",
        "",
    ]


def _model_section(log: dict) -> list[str]:
    """The architecture table: sizes as trained, read from the log, not restated."""
    tc, data = log["train_config"], log["data"]
    return [
        "## Model",
        "",
        "| | |",
        "| --- | --- |",
        f"| architecture | `BlockTransformerForCausalLM`, block length {tc['block_length']}, "
        f"prefix length {tc['prefix_length']} |",
        f"| block decoder | {tc['num_layers']} GPT-NeoX layers x {tc['hidden_size']} hidden, "
        f"{tc['num_heads']} heads (embedder {tc['hidden_size'] // tc['block_length']} per token) |",
        f"| token decoder | {tc['num_layers']} GPT-NeoX layers x {tc['hidden_size']} hidden, "
        f"{tc['num_heads']} heads |",
        f"| parameters | {log['params']:,} |",
        f"| weights | `model.safetensors`, float32, {_fmt_size(log['safetensors_bytes'])} |",
        f"| vocabulary | {data['vocab_size']} (byte-level BPE, `<\\|endoftext\\|>` = 0 = pad/bos/eos) |",
        f"| max_position_embeddings | {tc['max_position_embeddings']} (trained on "
        f"{tc['seq_len']}-token windows) |",
        "",
    ]


def _data_section(data: dict) -> list[str]:
    """Where the text comes from and how it was split, so the numbers can be rebuilt."""
    return [
        "## Data",
        "",
        f"The King James Bible (public domain), from Debian's `{data['package']}` package: "
        f"`{data['source_command']}` prints one verse a line; each of the "
        f"{data['chapters']} chapters becomes a document (verses joined by newlines, verse "
        f"numbers dropped), `<|endoftext|>` before each. Validation: every "
        f"{data['val_every']}th chapter ({data['val_chapters']} chapters, "
        f"{data['val_tokens']:,} tokens); training: the other {data['train_chapters']} "
        f"({data['train_tokens']:,} tokens). The tokenizer was trained on the training "
        f"chapters only.",
        "",
    ]


def _training_section(log: dict) -> list[str]:
    """The optimiser, schedule and cost of the run, in one paragraph."""
    tc, data = log["train_config"], log["data"]
    return [
        "## Training",
        "",
        f"{log['steps']} steps of {tc['batch_size']} x {tc['seq_len']} tokens "
        f"({log['tokens_seen']:,} tokens, {log['tokens_seen'] / data['train_tokens']:.1f} "
        f"epochs), AdamW (lr {tc['lr']:g}, betas 0.9/0.95, weight decay {tc['weight_decay']:g}), "
        f"{tc['warmup_steps']} warmup steps then cosine to {tc['min_lr_ratio']:g} x lr, "
        f"gradient clipping {tc['grad_clip']:g}, seed {tc['seed']}, float32, "
        f"{tc['threads']} CPU thread: **{log['train_seconds'] / 60:.1f} minutes** on "
        f"{log['machine']}.",
        "",
    ]


def _results_section(log: dict, base: dict | None) -> list[str]:
    """The validation-loss table; with a baseline, its row and what the
    comparison means (equal training FLOPs), else a note that it is missing."""
    tc, fin = log["train_config"], log["final"]
    lines = [
        "## Results",
        "",
        "Validation loss: mean token cross-entropy (nats) over the held-out chapters, cut into "
        f"non-overlapping {tc['seq_len']}-token windows ({fin['val_tokens']:,} predicted "
        "tokens), computed by the same function for both models.",
        "",
        "| model | params | steps | tokens | train time | training FLOPs/token | val loss | val ppl |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| **this model** (block, 2 x {tc['num_layers']} layers) | {log['params'] / 1e6:.2f} M | "
        f"{log['steps']} | {log['tokens_seen']:,} | {log['train_seconds'] / 60:.1f} min | "
        f"{log['train_flops_per_token'] / 1e6:.1f} M | **{fin['val_loss']:.4f}** | "
        f"{fin['val_perplexity']:.1f} |",
    ]
    if base is None:
        return lines + ["", "(No vanilla baseline recorded yet: run the second command below.)"]
    return lines + _baseline_comparison(fin, base)


def _baseline_comparison(fin: dict, base: dict) -> list[str]:
    """The baseline's table row, why the comparison is fair, and the loss gap."""
    bf = base["final"]
    return [
        f"| vanilla GPT-NeoX ({base['train_config']['vanilla_layers']} layers x "
        f"{base['train_config']['hidden_size']}) | {base['params'] / 1e6:.2f} M | "
        f"{base['steps']} | {base['tokens_seen']:,} | {base['train_seconds'] / 60:.1f} min | "
        f"{base['train_flops_per_token'] / 1e6:.1f} M | **{bf['val_loss']:.4f}** | "
        f"{bf['val_perplexity']:.1f} |",
        "",
        "The baseline is a plain GPT-NeoX with the same tokenizer, data, batches, optimiser "
        "and schedule. It has as many layers as the block model runs per token (the "
        "token decoder on 5/4 positions per token, the block decoder on 1/4: 4 x 5/4 + "
        "4 x 1/4 = 6), so both cost about the same **training FLOPs** per token and see "
        "the same tokens (equal-FLOPs comparison). The wall-clock times above are as "
        "measured, one run after the other on the same machine, and depend on its load "
        "from other jobs at the time.",
        "",
        f"The block model's validation loss is "
        f"{abs(fin['val_loss'] - bf['val_loss']):.2f} nats "
        f"{'higher' if fin['val_loss'] > bf['val_loss'] else 'lower'} than the baseline's. "
        "The paper likewise finds that a Block Transformer needs more parameters (and "
        "training compute) than a vanilla model for the same perplexity; what it buys is "
        "inference throughput (a KV cache L times shorter in the block decoder and a "
        "constant-size one in the token decoder).",
    ]


def _samples_section(log: dict, base: dict | None) -> list[str]:
    """The logged samples of this model, then the baseline's on the same
    prompts and seeds, so a reader can judge the text side by side."""
    lines = ["", "## Samples", "",
             "From the reference model (`model.generate(..., do_sample=True, temperature=0.8, "
             "top_p=0.95)`, seeds 0, 1, ...); the prompt is in bold:", ""]
    lines += _quoted_samples(log.get("samples", []))
    if base is not None and base.get("samples"):
        lines += ["The vanilla baseline, same prompts and seeds:", ""]
        lines += _quoted_samples(base["samples"])
    return lines


def _quoted_samples(samples: list[dict]) -> list[str]:
    """One Markdown quote per sample (prompt in bold, newlines as " / "), each
    followed by a blank line."""
    lines = []
    for s in samples:
        text = s["completion"].replace("\n", " / ")
        lines.append(f"> **{s['prompt']}**{text}")
        lines.append("")
    return lines


def _use_section(name: str) -> list[str]:
    """The two commands that run the model: served by vLLM, and the reference."""
    return [
        "## Use",
        "",
        "```bash",
        f"vllm serve models/{name}            # OpenAI API; the chat template is "
        "\"User: ...\\nAssistant:\"",
        f"vllm-block reference-generate models/{name} --prompt \"And God said,\" "
        "--max-new-tokens 32",
        "```",
        "",
        "`generation_config.json` sets sampling defaults (temperature 0.8, top-p 0.95, 64 new "
        "tokens).",
        "",
    ]


def _reproduce_section(log: dict, base: dict | None) -> list[str]:
    """The exact commands the logs recorded, so the card can be rebuilt."""
    lines = [
        "## Reproduce",
        "",
        "`make demo-model` (needs `apt-get install bible-kjv`) retrains both models with "
        "these commands (plus `--overwrite`); the runs recorded here were:",
        "",
        "```bash",
        log["command"],
    ]
    if base is not None:
        lines.append(base["command"])
    return lines + [
        "```",
        "",
        "Training is seeded (same batches for both runs); on another CPU or torch version the "
        "losses may differ slightly.",
        "",
    ]
