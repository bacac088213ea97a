"""Bad input: one clear error naming the key or option, non-zero exit, no partial output."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from helpers import copy_original, random_config, random_model, run_cli
from vllm_block import BlockTransformerConfig


def set_key(tree: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    for p in parents:
        tree = tree[p]
    tree[last] = value


def edit_yaml(src: Path, **dotted_values) -> None:
    cfg = yaml.safe_load((src / "config.yaml").read_text())
    for dotted, value in dotted_values.items():
        set_key(cfg, dotted.replace("__", "."), value)
    (src / "config.yaml").write_text(yaml.safe_dump(cfg))


def edit_weights(src: Path, edit) -> None:
    weights = load_file(str(src / "model.safetensors"))
    edit(weights)
    save_file(weights, str(src / "model.safetensors"))


def assert_convert_fails(tmp_path: Path, src: Path, expected: str, *extra: str) -> str:
    """Run `vllm-block convert`; it must exit 2 with one `error:` line containing
    `expected`, and leave neither OUT nor temporary dirs behind."""
    out_parent = tmp_path / "outputs"
    out = out_parent / "model"
    code, stdout, stderr = run_cli("convert", src, out, *extra)
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert expected in lines[0], lines[0]
    assert "Traceback" not in stderr and stdout == ""
    assert not out.exists()
    assert not out_parent.exists() or list(out_parent.iterdir()) == []
    return lines[0]


@pytest.fixture
def src(tmp_path) -> Path:
    return copy_original(tmp_path / "src")


# -- weights ----------------------------------------------------------------
def test_missing_key_is_named(tmp_path, src):
    edit_weights(src, lambda w: w.pop("token_decoder.embed_out.weight"))
    assert_convert_fails(tmp_path, src, "missing key in checkpoint: "
                                        "token_decoder.embed_out.weight")


def test_unexpected_key_is_named(tmp_path, src):
    edit_weights(src, lambda w: w.update({"token_decoder.extra.weight": torch.zeros(2)}))
    assert_convert_fails(tmp_path, src, "unexpected key in checkpoint: "
                                        "token_decoder.extra.weight")


def test_shape_mismatch_is_named(tmp_path, src):
    key = "block_decoder.gpt_neox.layers.0.mlp.dense_h_to_4h.weight"
    edit_weights(src, lambda w: w.update({key: torch.zeros(100, 64)}))
    msg = assert_convert_fails(tmp_path, src, f"shape mismatch for {key}")
    assert "(100, 64)" in msg and "(256, 64)" in msg


def test_truncated_safetensors(tmp_path, src):
    data = (src / "model.safetensors").read_bytes()
    (src / "model.safetensors").write_bytes(data[:len(data) // 2])
    assert_convert_fails(tmp_path, src, "cannot read checkpoint")


def test_corrupted_safetensors_header(tmp_path, src):
    data = bytearray((src / "model.safetensors").read_bytes())
    data[8:40] = b"#" * 32  # the JSON header starts at byte 8
    (src / "model.safetensors").write_bytes(bytes(data))
    assert_convert_fails(tmp_path, src, "cannot read checkpoint")


@pytest.mark.parametrize("content", [b"not a pickle", b"junk\n", b"PK\x03\x04" + b"0" * 100])
def test_corrupted_pytorch_model_bin(tmp_path, src, content):
    (src / "model.safetensors").unlink()
    (src / "pytorch_model.bin").write_bytes(content)
    assert_convert_fails(tmp_path, src, "cannot read checkpoint")


def test_bin_holding_more_than_tensors(tmp_path, src):
    (src / "model.safetensors").unlink()
    torch.save({"step": 3, "weights": {}}, src / "pytorch_model.bin")
    assert_convert_fails(tmp_path, src, "does not hold a state dict of tensors")


def test_missing_src(tmp_path):
    assert_convert_fails(tmp_path, tmp_path / "nowhere", "nowhere does not exist")


def test_missing_weights_file(tmp_path, src):
    (src / "model.safetensors").unlink()
    assert_convert_fails(tmp_path, src, "no model.safetensors or pytorch_model.bin")


# -- original options -------------------------------------------------------
@pytest.mark.parametrize("option,value", [
    ("token_decoder.decoding_strategy", "summary"),
    ("embedder.cls", "roberta"),
    ("block_split.distribution", "uniform"),
    ("token_decoder.decoding_strategy", "cross_attention"),
    ("token_decoder.expansion_method", "cross_attention"),
    ("block_decoder.cls", "llama"),
    ("block_decoder.model_name_or_path", "EleutherAI/pythia-1b"),
    ("token_decoder.config.rope_theta", 5000),
    ("block_decoder.config.rope_scaling", {"type": "linear", "factor": 2.0}),
])
def test_unsupported_option_is_named(tmp_path, src, option, value):
    edit_yaml(src, **{option.replace(".", "__"): value})
    assert_convert_fails(tmp_path, src, f"unsupported option {option}")


@pytest.mark.parametrize("option,value,field", [
    ("token_decoder.config.hidden_size", "64", "token_hidden_size"),
    ("block_decoder.config.num_hidden_layers", 2.5, "block_num_hidden_layers"),
    ("token_decoder.expansion_ratio", "two", "prefix_length"),
    ("token_decoder.config.use_parallel_residual", "yes", "token_use_parallel_residual"),
    ("block_decoder.config.num_attention_heads", 3, "block_num_attention_heads"),
    ("embedder.config.hidden_size", 32, "embedder_hidden_size"),
    ("max_length", "long", "max_position_embeddings"),
])
def test_yaml_with_wrong_types_names_the_field(tmp_path, src, option, value, field):
    edit_yaml(src, **{option.replace(".", "__"): value})
    assert_convert_fails(tmp_path, src, f"BlockTransformerConfig.{field}")


def test_block_length_disagreeing_with_block_split(tmp_path, src):
    edit_yaml(src, block_length=8)
    assert_convert_fails(tmp_path, src, "block_split.distribution_kwargs.length")


def test_missing_section(tmp_path, src):
    cfg = yaml.safe_load((src / "config.yaml").read_text())
    del cfg["token_decoder"]
    (src / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert_convert_fails(tmp_path, src, "token_decoder")


def test_unparsable_yaml(tmp_path, src):
    (src / "config.yaml").write_text("block_length: [4\n")
    assert_convert_fails(tmp_path, src, "cannot parse")


def test_missing_config_yaml(tmp_path, src):
    (src / "config.yaml").unlink()
    assert_convert_fails(tmp_path, src, "--config")


def test_missing_config_path(tmp_path, src):
    assert_convert_fails(tmp_path, src, "nope.yaml", "--config", str(tmp_path / "nope.yaml"))


# -- options and OUT ----------------------------------------------------------
def test_unsupported_dtype(tmp_path, src):
    assert_convert_fails(tmp_path, src, "unsupported dtype 'int8'", "--dtype", "int8")


def test_tokenizer_dir_without_tokenizer_json(tmp_path, src):
    (tmp_path / "tok").mkdir()
    assert_convert_fails(tmp_path, src, "no tokenizer.json", "--tokenizer",
                         str(tmp_path / "tok"))


def test_non_empty_out_is_left_untouched(tmp_path, src):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, stderr = run_cli("convert", src, out)
    assert code == 2 and stderr.startswith("error: ") and str(out) in stderr
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_console_script_error_has_no_traceback(tmp_path, src):
    edit_weights(src, lambda w: w.pop("embedder.embeddings.weight"))
    exe = Path(sys.executable).parent / "vllm-block"
    proc = subprocess.run([str(exe), "convert", str(src), str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: missing key in checkpoint: embedder.embeddings.weight"
    assert not (tmp_path / "out").exists()


# -- config validation --------------------------------------------------------
BASE = dict(block_length=4, prefix_length=2, vocab_size=512,
            block_num_hidden_layers=2, block_hidden_size=64, block_num_attention_heads=2,
            token_num_hidden_layers=2, token_hidden_size=64, token_num_attention_heads=2)


@pytest.mark.parametrize("overrides,field", [
    (dict(block_length=3), "block_hidden_size"),  # 64 % 3
    (dict(block_num_attention_heads=5), "block_num_attention_heads"),
    (dict(token_num_attention_heads=3), "token_num_attention_heads"),
    (dict(block_length=0), "block_length"),
    (dict(prefix_length=-1), "prefix_length"),
    (dict(vocab_size="512"), "vocab_size"),
    (dict(token_num_hidden_layers=True), "token_num_hidden_layers"),
    (dict(block_hidden_size=None), "block_hidden_size"),
    (dict(token_rotary_pct=1.5), "token_rotary_pct"),
    (dict(token_rotary_pct=0.1), "token_rotary_pct"),  # odd rotary dim: int(3.2)
    (dict(block_hidden_act="relu"), "block_hidden_act"),
    (dict(block_use_parallel_residual="yes"), "block_use_parallel_residual"),
    (dict(token_layer_norm_eps=0), "token_layer_norm_eps"),
    (dict(block_rotary_emb_base=-1.0), "block_rotary_emb_base"),
    (dict(embedder_hidden_size=8), "embedder_hidden_size"),
    (dict(token_max_position_embeddings=4), "token_max_position_embeddings"),
    (dict(block_max_position_embeddings=100), "block_max_position_embeddings"),
    (dict(pad_token_id=512), "pad_token_id"),
    (dict(bos_token_id=-1), "bos_token_id"),
])
def test_config_validation_names_the_field(overrides, field):
    with pytest.raises(ValueError, match=re.escape(f"BlockTransformerConfig.{field}")):
        BlockTransformerConfig(**{**BASE, **overrides})


def test_base_validation_config_is_valid_so_each_case_fails_on_its_own_field():
    config = BlockTransformerConfig(**BASE)
    assert {k: getattr(config, k) for k in BASE} == BASE
    # derived from BASE: the embedder splits the block vector over L tokens,
    # the MLPs are 4x wide
    assert config.embedder_hidden_size == 64 // 4
    assert (config.block_intermediate_size, config.token_intermediate_size) == (256, 256)
    # and it survives config.json
    assert BlockTransformerConfig.from_dict(config.to_dict()).to_dict() == config.to_dict()


# -- token ids ---------------------------------------------------------------
@pytest.mark.parametrize("bad", [-1, 64, 10_000])
def test_token_ids_outside_the_vocabulary(bad):
    model = random_model(random_config(0, vocab_size=64, block_length=2, pad_token_id=0,
                                       bos_token_id=0, eos_token_id=0))
    ids = torch.tensor([[1, bad, 2, 3]])
    message = re.escape(f"token id {bad} is outside the vocabulary [0, 64)")
    with pytest.raises(ValueError, match=message):
        model(ids)
    with pytest.raises(ValueError, match=message):
        model.raw_forward(ids)
    with pytest.raises(ValueError, match=message):
        model.generate(ids)
    state = model.prefill(torch.tensor([[1, 2]]))
    with pytest.raises(ValueError, match=message):
        model.step(state, torch.tensor([bad]))


def test_cli_reference_generate_rejects_out_of_vocab_ids(tiny_b4_dir):
    code, _, stderr = run_cli("reference-generate", tiny_b4_dir, "--prompt-ids", "1,512")
    assert code == 2
    assert stderr.strip() == "error: token id 512 is outside the vocabulary [0, 512)"


@pytest.mark.parametrize("argv,expected", [
    (["--prompt-ids", "1,x"], "--prompt-ids must be comma-separated integers"),
    (["--prompt-ids", ","], "--prompt-ids is empty"),
    (["--prompt", "the cat"], "has no tokenizer.json"),
    (["--prompt-ids", "1", "--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
])
def test_cli_reference_generate_bad_arguments(tiny_b4_dir, argv, expected):
    code, _, stderr = run_cli("reference-generate", tiny_b4_dir, *argv)
    assert code == 2 and stderr.startswith("error: ") and expected in stderr, stderr


def test_cli_reference_generate_needs_a_model_dir(tmp_path):
    code, _, stderr = run_cli("reference-generate", tmp_path, "--prompt-ids", "1")
    assert code == 2 and "no config.json" in stderr
