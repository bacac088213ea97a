"""The converter on every checkpoint family and on every released config
(`conf/trainer/*.yaml` of the original code, copied in tests/fixtures/released_configs)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from families import FAMILIES, RELEASED, copy_family, family_dir
from helpers import fixture_dir, run_cli
from vllm_block import BlockTransformerConfig
from vllm_block.convert import ConversionError, config_from_yaml, convert

# family fixture -> (alignment, decoding_strategy, embedder_projection, prefix_length)
EXPECTED_CONFIG = {
    "nopad_b4": ("nopad", "prefix", "concat", 2),
    "uptrain_b4": ("pad", "prefix", "projection_layer", 2),
    "megabyte_b4": ("pad", "summation", "concat", 4),
    "b1": ("pad", "prefix", "concat", 1),
}

# released config -> (alignment, decoding_strategy, embedder_projection), or the
# option named in the refusal
RELEASED_STATUS = {
    "block_main_b4_5": ("pad", "prefix", "concat"),
    "block_main_b4_19": ("pad", "prefix", "concat"),
    "block_main_b4_85": ("pad", "prefix", "concat"),
    "block_main_b4_85_flop_v70": ("pad", "prefix", "concat"),
    "block_main_b4_300": ("nopad", "prefix", "concat"),
    "block_main_b4_300_flop_v70": ("nopad", "prefix", "concat"),
    "block_main_b4_800": ("nopad", "prefix", "concat"),
    "block_main_b4_800_flop_v70": ("nopad", "prefix", "concat"),
    "block_main_b4_1.2b": ("nopad", "prefix", "concat"),
    "block_main_b4_1.2b_flop_v70.yaml": ("nopad", "prefix", "concat"),  # sic: .yaml.yaml
    "block_uptrain_b4_85_10": ("pad", "prefix", "projection_layer"),
    "block_uptrain_b4_300_10": ("pad", "prefix", "projection_layer"),
    "block_uptrain_b4_800_10": ("pad", "prefix", "projection_layer"),
    "block_megabyte_b4_5": ("pad", "summation", "concat"),
    "block_megabyte_b4_19": ("pad", "summation", "concat"),
    "block_megabyte_b4_85": ("pad", "summation", "concat"),
    "block_vanilla_ablation_b1_85": ("pad", "prefix", "concat"),
    "block_ablation_b4_85_lookup_prefix": ("pad", "prefix", "concat"),
    "block_ablation_b4_85_roberta_prefix": "embedder.cls: 'roberta'",
    "block_ablation_b4_85_cls_sum": "embedder.cls: 'roberta_cls'",
    "block_ablation_b4_85_cls_cross_attn": "embedder.cls: 'roberta_cls'",
    "vanilla_31": "no block_length",
    "vanilla_70": "no block_length",
    "vanilla_160": "no block_length",
    "vanilla_410": "no block_length",
}


def released(name: str) -> dict:
    return yaml.safe_load((RELEASED / f"{name}.yaml").read_text())


def test_every_released_config_has_a_status():
    assert {p.name[:-len(".yaml")] for p in RELEASED.glob("*.yaml")} == set(RELEASED_STATUS)


@pytest.mark.parametrize("name", [n for n, s in RELEASED_STATUS.items() if isinstance(s, tuple)])
def test_released_config_converts_to_its_family_and_alignment(name):
    cfg = config_from_yaml(released(name))
    assert (cfg.alignment, cfg.decoding_strategy, cfg.embedder_projection) == \
        RELEASED_STATUS[name]


@pytest.mark.parametrize("name", [n for n, s in RELEASED_STATUS.items() if isinstance(s, str)])
def test_released_config_outside_the_families_is_refused_naming_the_option(name):
    with pytest.raises(ConversionError, match=RELEASED_STATUS[name].replace(".", r"\.")):
        config_from_yaml(released(name))


@pytest.mark.parametrize("name,sizes", [
    ("block_megabyte_b4_85", (768, 12, 512, 8, 4)),
    ("block_uptrain_b4_300_10", (1024, 16, 1024, 16, 2)),
    ("block_vanilla_ablation_b1_85", (768, 12, 768, 12, 1)),
])
def test_released_config_maps_to_the_right_sizes(name, sizes):
    cfg = config_from_yaml(released(name))
    assert (cfg.block_hidden_size, cfg.block_num_attention_heads, cfg.token_hidden_size,
            cfg.token_num_attention_heads, cfg.prefix_length) == sizes


def test_alignment_argument_overrides_the_trained_layout():
    assert config_from_yaml(released("block_main_b4_1.2b"), "pad").alignment == "pad"
    assert config_from_yaml(released("block_main_b4_85"), "nopad").alignment == "nopad"


def test_absent_random_pad_first_block_follows_the_model_size():
    """Left out: pad below 300M decoder parameters (the code's default), no-pad
    at or above (the released 300M+ checkpoints); an explicit value decides."""
    cfg = released("block_main_b4_300")
    assert config_from_yaml(cfg).alignment == "nopad"
    cfg["random_pad_first_block"] = True
    assert config_from_yaml(cfg).alignment == "pad"
    small = released("block_main_b4_85")
    del small["random_pad_first_block"]
    assert config_from_yaml(small).alignment == "pad"
    small["random_pad_first_block"] = False
    assert config_from_yaml(small).alignment == "nopad"


@pytest.mark.parametrize("name", FAMILIES)
def test_family_fixture_converts_with_its_options_in_config_json(tmp_path, name):
    out = convert(family_dir(name), tmp_path / name)
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["alignment"], cfg["decoding_strategy"], cfg["embedder_projection"],
            cfg["prefix_length"]) == EXPECTED_CONFIG[name]


def test_cli_alignment_flag_is_written_to_config_json(tmp_path):
    code, _, err = run_cli("convert", family_dir("nopad_b4"), tmp_path / "out",
                           "--alignment", "pad")
    assert code == 0, err
    assert json.loads((tmp_path / "out" / "config.json").read_text())["alignment"] == "pad"


def test_cli_alignment_flag_rejects_other_values(tmp_path):
    code, _, err = run_cli("convert", family_dir("nopad_b4"), tmp_path / "out",
                           "--alignment", "left")
    assert code == 2 and "--alignment" in err
    assert not (tmp_path / "out").exists()


def test_converted_dir_without_the_new_keys_is_the_pad_prefix_concat_model(tmp_path):
    """config.json written before these options existed keeps today's layout."""
    out = convert(fixture_dir("original_tiny_b4"), tmp_path / "old")
    cfg = json.loads((out / "config.json").read_text())
    for key in ("alignment", "decoding_strategy", "embedder_projection"):
        del cfg[key]
    (out / "config.json").write_text(json.dumps(cfg))
    loaded = BlockTransformerConfig.from_pretrained(out)
    assert (loaded.alignment, loaded.decoding_strategy, loaded.embedder_projection) == \
        ("pad", "prefix", "concat")
    assert loaded.virtual_pad(1) == loaded.virtual_pad(9) == loaded.block_length - 1


def test_projection_layer_conversion_equals_the_original_conv1d(tmp_path):
    """Conv1d(E, D, kernel = stride = L) on [E, L] == Linear on the joined [L*E]."""
    out = convert(family_dir("uptrain_b4"), tmp_path / "up")
    orig = load_file(str(family_dir("uptrain_b4") / "model.safetensors"))
    conv_w = orig["embedder.projection_layer.weight"]  # [D, E, L]
    D, E, L = conv_w.shape
    conv = torch.nn.Conv1d(E, D, kernel_size=L, stride=L)
    conv.weight.data, conv.bias.data = conv_w, orig["embedder.projection_layer.bias"]
    w = load_file(str(out / "model.safetensors"))
    pieces = torch.randn(3, L, E)  # 3 blocks of L token embeddings
    expected = conv(pieces.transpose(1, 2))[..., 0]
    got = pieces.flatten(1) @ w["embed_projection.weight"].T + w["embed_projection.bias"]
    assert (got - expected).abs().max().item() <= 1e-5


def test_summation_uses_the_token_decoders_start_token():
    cfg = released("block_megabyte_b4_5")
    assert config_from_yaml(cfg).bos_token_id == 0  # pythia's bos
    cfg["token_decoder"]["config"]["bos_token_id"] = 7
    assert config_from_yaml(cfg).bos_token_id == 7


def test_block_length_1_serves_one_token_fewer_than_trained():
    """The open block needs a block-decoder position too: 2047 of 2048."""
    cfg = config_from_yaml(released("block_vanilla_ablation_b1_85"))
    assert cfg.max_position_embeddings == 2047
    assert config_from_yaml(released("block_main_b4_85")).max_position_embeddings == 2048


# -- mixed families in unsupported ways: one error line naming the key, nothing written
def _set(tree: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    for p in parents:
        tree = tree.setdefault(p, {})
    tree[last] = value


def assert_cli_refuses(tmp_path: Path, src: Path, expected: str) -> None:
    out = tmp_path / "outputs" / "model"
    code, stdout, stderr = run_cli("convert", src, out)
    lines = stderr.strip().splitlines()
    assert code == 2 and stdout == ""
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], stderr
    assert not out.exists()
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


@pytest.mark.parametrize("family,key,value,expected", [
    ("megabyte_b4", "token_decoder.expansion_ratio", 2, "token_decoder.expansion_ratio"),
    ("megabyte_b4", "token_decoder.expansion_method", None,
     "token_decoder.expansion_method: None"),
    ("nopad_b4", "random_pad_first_block", "yes", "random_pad_first_block"),
    ("uptrain_b4", "embedder.n_embedding_tokens", 2, "embedder.n_embedding_tokens"),
    ("uptrain_b4", "embedder.projection_method", "concat", "embedder_hidden_size"),
    ("nopad_b4", "embedder.projection_method", "projection_layer",
     "missing key in checkpoint: embedder.projection_layer"),
    ("nopad_b4", "token_decoder.decoding_strategy", "summation",
     "token_decoder.expansion_ratio"),
    ("nopad_b4", "token_decoder.decoding_strategy", "cross_attention",
     "token_decoder.decoding_strategy: 'cross_attention'"),
    ("megabyte_b4", "token_decoder.cls", "t5", "token_decoder.cls: 't5'"),
    ("uptrain_b4", "embedder.cls", "roberta_cls", "embedder.cls: 'roberta_cls'"),
])
def test_yaml_mixing_families_is_refused_naming_the_key(tmp_path, family, key, value,
                                                        expected):
    src = copy_family(family, tmp_path / "src")
    cfg = yaml.safe_load((src / "config.yaml").read_text())
    _set(cfg, key, value)
    (src / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert_cli_refuses(tmp_path, src, expected)


def test_summation_yaml_on_a_prefix_checkpoint_names_the_expansion_layer(tmp_path):
    """A megabyte yaml over prefix (R=2) weights: the expansion has the wrong shape."""
    src = copy_family("megabyte_b4", tmp_path / "src")
    weights = load_file(str(src / "model.safetensors"))
    w = weights["token_decoder.expansion_layer.weight"]
    weights["token_decoder.expansion_layer.weight"] = w[: w.shape[0] // 2].contiguous()
    save_file(weights, str(src / "model.safetensors"))
    assert_cli_refuses(tmp_path, src, "token_decoder.expansion_layer.weight")


def test_projection_layer_with_a_wrong_kernel_is_named(tmp_path):
    src = copy_family("uptrain_b4", tmp_path / "src")
    weights = load_file(str(src / "model.safetensors"))
    w = weights["embedder.projection_layer.weight"]
    weights["embedder.projection_layer.weight"] = w[..., :2].contiguous()
    save_file(weights, str(src / "model.safetensors"))
    assert_cli_refuses(tmp_path, src, "embedder.projection_layer.weight")
