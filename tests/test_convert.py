"""The converter: original checkpoints -> Hugging Face directories."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from helpers import make_tokenizer, run_cli
from vllm_block import BlockTransformerConfig, BlockTransformerForCausalLM
from vllm_block.convert import config_from_yaml, convert

# original key -> converted key, for keys whose values must carry over unchanged
RENAMED = {
    "embedder.embeddings.weight": "embedder.weight",
    "token_decoder.gpt_neox.embed_in.weight": "token_embed.weight",
    "token_decoder.embed_out.weight": "lm_head.weight",
    "token_decoder.expansion_layer.bias": "expansion.bias",
    "block_decoder.gpt_neox.layers.1.attention.query_key_value.weight":
        "block_decoder.layers.1.attention.query_key_value.weight",
    "token_decoder.gpt_neox.final_layer_norm.bias": "token_decoder.final_layer_norm.bias",
}


def original_weights(src: Path) -> dict[str, torch.Tensor]:
    return load_file(str(src / "model.safetensors"))


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_convert_writes_a_hugging_face_directory(tiny_b4_dir):
    assert {p.name for p in tiny_b4_dir.iterdir()} == {
        "config.json", "model.safetensors", "generation_config.json"}
    cfg = json.loads((tiny_b4_dir / "config.json").read_text())
    assert cfg["architectures"] == ["BlockTransformerForCausalLM"]
    assert cfg["model_type"] == "block_transformer"
    assert (cfg["block_length"], cfg["prefix_length"], cfg["vocab_size"]) == (4, 2, 512)
    assert (cfg["block_hidden_size"], cfg["token_hidden_size"],
            cfg["embedder_hidden_size"]) == (64, 64, 16)
    gen = json.loads((tiny_b4_dir / "generation_config.json").read_text())
    assert gen == {"bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0}


def test_converted_weights_keep_the_original_values(tiny_b4_dir, tiny_b4_original):
    orig = original_weights(tiny_b4_original)
    conv = load_file(str(tiny_b4_dir / "model.safetensors"))
    for old, new in RENAMED.items():
        assert torch.equal(conv[new], orig[old]), old
    # Conv1d(kernel 1) [out, in, 1] -> Linear [out, in]
    assert torch.equal(conv["expansion.weight"],
                       orig["token_decoder.expansion_layer.weight"][..., 0])
    # everything but the unused block-decoder input embedding is kept
    assert "block_decoder.gpt_neox.embed_in.weight" in orig
    assert len(conv) == len(orig) - 1
    assert sum(t.numel() for t in conv.values()) == sum(
        t.numel() for k, t in orig.items() if k != "block_decoder.gpt_neox.embed_in.weight")


def test_converted_model_loads_with_auto_classes(tiny_b4_dir):
    from transformers import AutoConfig, AutoModelForCausalLM

    assert isinstance(AutoConfig.from_pretrained(tiny_b4_dir), BlockTransformerConfig)
    model = AutoModelForCausalLM.from_pretrained(tiny_b4_dir)
    assert isinstance(model, BlockTransformerForCausalLM)
    assert model.lm_head.weight.dtype == torch.float32
    logits = model(torch.tensor([[1, 2, 3]])).logits
    assert logits.shape == (1, 3, 512)


def test_convert_copies_tokenizer_files(tmp_path, tiny_b4_original):
    from transformers import AutoTokenizer

    tok_dir = make_tokenizer(tmp_path / "tok")
    (tok_dir / "README.md").write_text("not a tokenizer file")
    out = convert(tiny_b4_original, tmp_path / "out", tokenizer=tok_dir)
    assert (out / "tokenizer.json").read_bytes() == (tok_dir / "tokenizer.json").read_bytes()
    assert not (out / "README.md").exists()
    tok = AutoTokenizer.from_pretrained(out)
    assert tok("the cat sat", add_special_tokens=False)["input_ids"] == [1, 2, 3]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_convert_writes_requested_dtype(tmp_path, tiny_b4_original, dtype):
    out = convert(tiny_b4_original, tmp_path / "out", dtype=dtype)
    conv = load_file(str(out / "model.safetensors"))
    orig = original_weights(tiny_b4_original)
    assert {t.dtype for t in conv.values()} == {getattr(torch, dtype)}
    for old, new in RENAMED.items():
        assert torch.equal(conv[new], orig[old].to(getattr(torch, dtype))), old
    assert json.loads((out / "config.json").read_text())["dtype"] == dtype


def test_convert_with_separate_config_and_checkpoint_dirs(tmp_path, tiny_b4_dir,
                                                          tiny_b4_original):
    """The published layout: conf/trainer/<name>.yaml + results/<name>/checkpoint-N/."""
    ckpt = tmp_path / "results" / "tiny" / "checkpoint-100"
    ckpt.mkdir(parents=True)
    shutil.copy(tiny_b4_original / "model.safetensors", ckpt)
    original = yaml.safe_load((tiny_b4_original / "config.yaml").read_text())
    # like conf/trainer/block_main_*.yaml: training-only keys, sizes derived by default
    original.update(wandb=True, learning_rate=2.0e-4, deepspeed="ds.config",
                    total_batch_size=512, token_decoding_loss={"enable": True},
                    zero_shot_eval={"enable": True, "tasks": "lambada_openai"})
    for dec in ("block_decoder", "token_decoder"):
        del original[dec]["config"]["num_attention_heads"]  # default: 64 / 32 = 2
        del original[dec]["config"]["vocab_size"]  # given by the embedder only
        original[dec]["config"].update(attention_dropout=0.1, rope_scaling=None,
                                       initializer_range=0.02)  # no effect on inference
    conf = tmp_path / "conf" / "trainer" / "tiny.yaml"
    conf.parent.mkdir(parents=True)
    conf.write_text(yaml.safe_dump(original))
    code, out, err = run_cli("convert", ckpt, tmp_path / "out", "--config", conf)
    assert (code, err) == (0, "")
    assert_same_weights(tmp_path / "out", tiny_b4_dir)
    assert json.loads((tmp_path / "out" / "config.json").read_text()) == \
        json.loads((tiny_b4_dir / "config.json").read_text())


def test_convert_accepts_a_weights_file_as_src(tmp_path, tiny_b4_dir, tiny_b4_original):
    out = convert(tiny_b4_original / "model.safetensors", tmp_path / "out")
    assert_same_weights(out, tiny_b4_dir)


def test_convert_reads_pytorch_model_bin(tmp_path, tiny_b4_dir, tiny_b4_original):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(tiny_b4_original / "config.yaml", src)
    torch.save(original_weights(tiny_b4_original), src / "pytorch_model.bin")
    out = convert(src, tmp_path / "out")
    assert_same_weights(out, tiny_b4_dir)


def test_convert_into_an_existing_empty_dir(tmp_path, tiny_b4_original):
    (tmp_path / "out").mkdir()
    out = convert(tiny_b4_original, tmp_path / "out")
    assert (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp dirs left


def test_published_1_2b_config_maps_to_the_right_sizes():
    """conf/trainer/block_main_b4_1.2b.yaml (training keys trimmed)."""
    original = yaml.safe_load("""
name: block_main_b4_1.2b
wandb: true
block_length: 4
block_split: {distribution: fixed, distribution_kwargs: {length: 4}}
max_length: 2048
embedder: {cls: lookup, n_embedding_tokens: 1, projection_method: concat,
           config: {vocab_size: 50304, hidden_size: 512}}
block_decoder: {cls: gpt-neo-x, model_name_or_path: EleutherAI/pythia-410m-deduped,
                attn_implementation: flash_attention_2,
                config: {num_hidden_layers: 12, hidden_size: 2048}}
token_decoder: {cls: gpt-neo-x, model_name_or_path: EleutherAI/pythia-410m-deduped,
                expansion_method: expansion_layer, expansion_ratio: 2,
                decoding_strategy: prefix,
                config: {num_hidden_layers: 12, hidden_size: 2048}}
learning_rate: 2.0e-4
precision: bf16
""")
    cfg = config_from_yaml(original)
    assert (cfg.block_length, cfg.prefix_length, cfg.vocab_size,
            cfg.embedder_hidden_size) == (4, 2, 50304, 512)
    for dec in ("block", "token"):
        assert cfg.decoder_params(dec) == {
            "num_hidden_layers": 12, "hidden_size": 2048, "num_attention_heads": 16,
            "intermediate_size": 8192, "rotary_pct": 0.25, "rotary_emb_base": 10000.0,
            "layer_norm_eps": 1e-5, "use_parallel_residual": True, "hidden_act": "gelu",
            "max_position_embeddings": 2048}


def test_cli_console_script_converts(tmp_path, tiny_b4_original, tiny_b4_dir):
    exe = Path(sys.executable).parent / "vllm-block"
    proc = subprocess.run([str(exe), "convert", str(tiny_b4_original), str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert_same_weights(tmp_path / "out", tiny_b4_dir)
