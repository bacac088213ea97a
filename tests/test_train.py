"""`vllm-block train` and the shipped demo model `models/kjv-block-tiny`."""
from __future__ import annotations

import json
import re

import pytest
import torch

from helpers import REPO_ROOT, run_cli
import vllm_block  # noqa: F401  (registers the Auto classes)
from vllm_block.tools import data as D
from vllm_block.tools.train import (BASELINE_NAME, LOG_NAME, TrainConfig, build_model,
                              evaluate, run_training, train)

DEMO = REPO_ROOT / "models" / "kjv-block-tiny"
MAX_BYTES = 40_000_000

CORPUS = [
    "In the beginning God created the heaven and the earth.\n"
    "And the earth was without form, and void; and darkness was upon the face of the deep.",
    "And God said, Let there be light: and there was light.\n"
    "And God saw the light, that it was good: and God divided the light from the darkness.",
    "And God called the light Day, and the darkness he called Night.\n"
    "And the evening and the morning were the first day.",
] * 4


def tiny_config(arch: str = "block", **kw) -> TrainConfig:
    base = dict(arch=arch, steps=30, minutes=None, batch_size=4, seq_len=32, lr=5e-3,
                warmup_steps=3, eval_every=10, eval_windows=4, vocab_size=300,
                hidden_size=32, num_heads=2, num_layers=1, vanilla_layers=2,
                max_position_embeddings=64)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("arch", ["block", "vanilla"])
def test_a_few_steps_on_a_tiny_corpus_reduce_the_loss(arch):
    cfg = tiny_config(arch)
    tok = D.train_tokenizer(CORPUS, cfg.vocab_size)
    assert tok.token_to_id(D.EOT) == 0
    ids = D.encode_stream(tok, CORPUS)
    torch.manual_seed(0)
    model = build_model(cfg, tok.get_vocab_size())
    before, n = evaluate(model, ids, cfg.seq_len)
    result = run_training(model, ids, ids, cfg, progress=False)
    assert result["steps"] == 30 and result["tokens_seen"] == 30 * 4 * 32
    assert result["final"]["val_tokens"] == n
    assert result["final"]["val_loss"] < before - 1.0, (before, result["final"])
    assert [h["step"] for h in result["history"]] == [10, 20, 30]


def test_a_time_budget_stops_the_run():
    cfg = tiny_config(steps=None, minutes=0.01, eval_every=1000)
    tok = D.train_tokenizer(CORPUS, cfg.vocab_size)
    ids = D.encode_stream(tok, CORPUS)
    torch.manual_seed(0)
    result = run_training(build_model(cfg, tok.get_vocab_size()), ids, ids, cfg,
                          progress=False)
    assert result["stopped_by"] == "minutes" and result["steps"] >= 1
    assert 0.6 <= result["train_seconds"] < 5


def test_validation_loss_is_the_causal_lm_loss_of_each_window():
    cfg = tiny_config()
    torch.manual_seed(0)
    model = build_model(cfg, 300).eval()
    ids = torch.randint(0, 300, (3 * cfg.seq_len + 5,))
    loss, n = evaluate(model, ids, cfg.seq_len, batch_size=2)
    assert n == 3 * (cfg.seq_len - 1)
    windows = ids[:3 * cfg.seq_len].view(3, cfg.seq_len)
    with torch.no_grad():
        expected = model(windows, labels=windows).loss.item()
    assert loss == pytest.approx(expected, rel=1e-5)


def test_train_writes_a_loadable_model_dir(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "m"
    log = train(out, tiny_config(steps=4), docs=CORPUS[:8], val_docs=CORPUS[8:],
                progress=False)
    assert log["complete"] and log["steps"] == 4
    assert json.loads((out / LOG_NAME).read_text())["final"] == log["final"]
    model = AutoModelForCausalLM.from_pretrained(out)
    assert type(model).__name__ == "BlockTransformerForCausalLM"
    tok = AutoTokenizer.from_pretrained(out)
    assert (tok.eos_token_id, tok.bos_token_id, tok.pad_token_id) == (0, 0, 0)
    assert f"{log['final']['val_loss']:.4f}" in (out / "README.md").read_text()
    # a trained dir is not silently overwritten
    code, _, err = run_cli("train", "--out", out, "--steps", "1")
    assert code == 2 and "--overwrite" in err


@pytest.mark.parametrize("argv, message", [
    (["--steps", "0"], "--steps must be at least 1"),
    (["--minutes", "-1"], "--minutes must be positive"),
    (["--seq-len", "1024", "--steps", "1"], "exceeds max_position_embeddings"),
])
def test_train_cli_refuses_bad_options(tmp_path, argv, message):
    code, out, err = run_cli("train", "--out", tmp_path / "m", *argv)
    assert code == 2 and message in err and out == ""
    assert not (tmp_path / "m").exists()


def test_kjv_parsing_and_split():
    raw = "Ge1:1 In the beginning.\nGe1:2 And the earth.\nGe2:1 Thus the heavens.\n" \
          "1Sm1:1 Now there was.\n"
    chapters = D.parse_chapters(raw)
    assert [(c.book, c.number) for c in chapters] == [("Ge", 1), ("Ge", 2), ("1Sm", 1)]
    assert chapters[0].text == "In the beginning.\nAnd the earth."
    train_docs, val_docs = D.split(list(range(45)))
    assert val_docs == [19, 39] and len(train_docs) == 43


# ---------------------------------------------------------------------------
# the shipped model
# ---------------------------------------------------------------------------
def test_shipped_model_config_and_size():
    from vllm_block import BlockTransformerConfig

    config = json.loads((DEMO / "config.json").read_text())
    assert config["architectures"] == ["BlockTransformerForCausalLM"]
    assert config["model_type"] == "block_transformer"
    assert config["dtype"] == "float32"
    assert (config["block_length"], config["prefix_length"]) == (4, 2)
    BlockTransformerConfig.from_pretrained(DEMO).validate()
    gen = json.loads((DEMO / "generation_config.json").read_text())
    assert (gen["eos_token_id"], gen["bos_token_id"], gen["pad_token_id"]) == (0, 0, 0)
    assert (DEMO / "model.safetensors").stat().st_size <= MAX_BYTES
    total = sum(f.stat().st_size for f in DEMO.rglob("*") if f.is_file())
    assert total <= MAX_BYTES


def test_shipped_model_loads_and_writes_text():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(DEMO, dtype=torch.float32).eval()
    assert type(model).__name__ == "BlockTransformerForCausalLM"
    tok = AutoTokenizer.from_pretrained(DEMO)
    assert (tok.eos_token, tok.eos_token_id, tok.pad_token_id) == ("<|endoftext|>", 0, 0)
    assert len(tok) == model.config.vocab_size
    chat = tok.apply_chat_template([{"role": "user", "content": "Who made the earth?"}],
                                   tokenize=False, add_generation_prompt=True)
    assert chat == "User: Who made the earth?\nAssistant:"
    text = ("And God said, Let there be light: and there was light.\n"
            "And the LORD spake unto Moses, saying, Speak unto the children of Israel.")
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    x = torch.tensor([ids])
    with torch.no_grad():
        loss = model(x, labels=x).loss.item()
    assert loss < 5.0  # KJV text is familiar to it (an untrained model: ~8.3)
    out = model.generate(x, max_new_tokens=8)
    assert out.shape == (1, len(ids) + 8)


def _card_numbers(text: str) -> set[str]:
    return set(re.findall(r"\d+\.\d{4}", text))


def test_model_card_states_the_logged_losses():
    log = json.loads((DEMO / LOG_NAME).read_text())
    base = json.loads((DEMO / BASELINE_NAME).read_text())
    assert log["arch"] == "block" and base["arch"] == "vanilla" and log["complete"]
    # both computed on the same held-out tokens
    assert log["final"]["val_tokens"] == base["final"]["val_tokens"]
    card = (DEMO / "README.md").read_text()
    numbers = _card_numbers(card)
    assert f"{log['final']['val_loss']:.4f}" in numbers
    assert f"{base['final']['val_loss']:.4f}" in numbers
    assert log["command"] in card and base["command"] in card
    assert f"{log['steps']} steps" in card
