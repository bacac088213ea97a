"""Helpers shared by the tests (import as `from helpers import ...`)."""
from __future__ import annotations

import contextlib
import io
import json
import random
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file

from vllm_block import BlockTransformerConfig, BlockTransformerForCausalLM

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = REPO_ROOT.parent / "shared" / "fixtures"


def fixture_dir(name: str = "original_tiny_b4") -> Path:
    path = FIXTURES / name
    if not path.is_dir():
        raise FileNotFoundError(
            f"fixture {path} not found: the tests expect shared/ beside the repository root")
    return path


def greedy_cases(name: str = "original_tiny_b4") -> list[dict]:
    """greedy.json cases: prompt, greedy, steps[{token, logprob, top5}], prompt_logprobs."""
    return json.loads((fixture_dir(name) / "greedy.json").read_text())["cases"]


def forward_fixture(name: str = "original_tiny_b4") -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids [B, n*L], logits [B, n-1, L, V]) of the original forward()."""
    f = load_file(str(fixture_dir(name) / "forward.safetensors"))
    return f["input_ids"], f["logits"]


def copy_original(dst: Path, name: str = "original_tiny_b4") -> Path:
    """A writable copy of an original checkpoint dir (config.yaml + model.safetensors)."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in ("config.yaml", "model.safetensors"):
        shutil.copy(fixture_dir(name) / f, dst / f)
    return dst


def make_tokenizer(dst: Path, words: tuple[str, ...] = (
        "<|endoftext|>", "the", "cat", "sat", "on", "a", "mat", "dog")) -> Path:
    """Write a tiny word-level tokenizer.json into `dst`; returns `dst`."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)},
                                     unk_token=words[0]))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    dst.mkdir(parents=True, exist_ok=True)
    tok.save(str(dst / "tokenizer.json"))
    return dst


def run_cli(*argv: str) -> tuple[int, str, str]:
    """Run `vllm-block ARGV` in-process: (exit code, stdout, stderr)."""
    from vllm_block.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as e:  # argparse errors
            code = e.code
    return code, out.getvalue(), err.getvalue()


def random_config(seed: int, **overrides) -> BlockTransformerConfig:
    """A small valid config with uneven decoders; `overrides` pin any field.

    Block length 1..8, prefix length 1..4, different widths, head counts,
    layer counts, rotary_pct, rotary bases and residual styles per decoder.
    """
    rng = random.Random(seed)
    L = overrides.pop("block_length", rng.randint(1, 8))
    R = overrides.pop("prefix_length", rng.randint(1, 4))

    def rotary_pct(head_dim: int) -> float:
        even = [p for p in (0.25, 0.5, 1.0) if int(p * head_dim) % 2 == 0]
        return rng.choice(even or [0.0])

    def decoder(name: str, hidden: int, heads: int) -> dict:
        return {
            f"{name}_hidden_size": hidden,
            f"{name}_num_attention_heads": heads,
            f"{name}_num_hidden_layers": rng.randint(1, 3),
            f"{name}_intermediate_size": rng.choice([2, 3, 4]) * hidden + rng.randint(0, 5),
            f"{name}_rotary_pct": rotary_pct(hidden // heads),
            f"{name}_rotary_emb_base": rng.choice([10000.0, 500.0]),
            f"{name}_layer_norm_eps": rng.choice([1e-5, 1e-6]),
            f"{name}_use_parallel_residual": rng.choice([True, False]),
        }

    embed = rng.choice([4, 6, 8])
    block_hidden = L * embed
    block_heads = rng.choice([h for h in (1, 2, 4) if block_hidden % h == 0
                              and block_hidden // h >= 2])
    token_heads = rng.randint(1, 4)
    token_hidden = token_heads * rng.choice([6, 8, 12, 16])
    vocab = rng.randint(40, 96)
    kwargs = {
        "block_length": L, "prefix_length": R, "vocab_size": vocab,
        "max_position_embeddings": 512,
        "pad_token_id": rng.randrange(vocab), "bos_token_id": rng.randrange(vocab),
        "eos_token_id": rng.randrange(vocab),
        **decoder("block", block_hidden, block_heads),
        **decoder("token", token_hidden, token_heads),
    }
    kwargs.update(overrides)
    return BlockTransformerConfig(**kwargs)


def random_model(config: BlockTransformerConfig, seed: int = 0) -> BlockTransformerForCausalLM:
    """fp32 model with weights large enough that outputs depend on the input."""
    torch.manual_seed(seed)
    model = BlockTransformerForCausalLM(config).eval()
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear):  # gain 1 keeps fp32 round-off small
                gain = 2.0 if name == "lm_head" else 1.0
                module.weight.normal_(0.0, gain / module.in_features ** 0.5)
                if module.bias is not None:
                    module.bias.normal_(0.0, 0.1)
            elif isinstance(module, nn.Embedding):
                module.weight.normal_(0.0, 1.0)
            elif isinstance(module, nn.LayerNorm):
                module.weight.normal_(1.0, 0.2)
                module.bias.normal_(0.0, 0.1)
    return model


def http_post(url: str, path: str, body: bytes, timeout: float = 120) -> tuple[int, bytes]:
    """POST raw bytes as JSON to a loopback server; (status, body), 4xx/5xx included."""
    req = urllib.request.Request(url + path, data=body,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def pins_vllm(version: str, issue: str, behaviour: str):
    """Marks a test that asserts `behaviour`, a fault of vLLM `version`
    (upstream `issue`) rather than this package's behaviour: what users see
    today (docs/scaling.md). When it fails after a vLLM upgrade, vLLM changed:
    update docs/scaling.md and the test."""
    return pytest.mark.pins_vllm(version=version, issue=issue, behaviour=behaviour)

