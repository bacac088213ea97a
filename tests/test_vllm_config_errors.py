"""Engine configurations the model cannot run are refused at start-up with a
message that says what to change, never turned into wrong output."""
from __future__ import annotations

import json
import re
import shutil

import pytest

from engine import engine, engine_config


@pytest.mark.engine
def test_block_size_the_kernels_cannot_page_is_refused(tiny_b4_dir):
    # block_length 4: pages must hold a multiple of 16 block entries (64 tokens)
    with pytest.raises(Exception, match=r"block_size 96 .* multiple of 64"):
        with engine(tiny_b4_dir, block_size=96):
            pass


def test_default_block_size_is_chosen_for_the_block_length(tiny_b4_dir):
    cfg = engine_config(tiny_b4_dir)
    assert cfg.cache_config.block_size == 128  # 32 block entries of 4 tokens


def test_speculative_decoding_is_refused(tiny_b4_dir):
    with pytest.raises(Exception, match="speculative decoding is not supported"):
        engine_config(tiny_b4_dir, speculative_config={
            "method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_max": 3})


@pytest.mark.engine
def test_broken_config_is_refused_naming_the_field(tiny_b4_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_b4_dir, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["block_hidden_size"] = 66  # not divisible by block_length 4
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(Exception, match=r"block_hidden_size \(66\) must be divisible by "
                                        r"block_length \(4\)"):
        with engine(bad):
            pass


# vLLM reports a failed start as "Engine core initialization failed. See root
# cause above."; the root cause is the worker's log line, read here from the
# inherited stderr.
@pytest.mark.engine
def test_truncated_weights_are_refused_with_a_clear_error(tiny_b4_dir, tmp_path, capfd):
    bad = tmp_path / "truncated"
    shutil.copytree(tiny_b4_dir, bad)
    weights = bad / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(Exception, match="Engine core initialization failed"):
        with engine(bad):
            pass
    assert "Error while deserializing header" in "".join(capfd.readouterr())


@pytest.mark.engine
def test_config_that_disagrees_with_the_weights_is_refused_naming_the_weight(
        tiny_b4_dir, tmp_path, capfd):
    bad = tmp_path / "mismatch"
    shutil.copytree(tiny_b4_dir, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["token_intermediate_size"] = 320  # the weights have 256
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(Exception, match="Engine core initialization failed"):
        with engine(bad):
            pass
    assert re.search(r"shape mismatch for token_decoder\.layers\.\d\.mlp\.dense_\w+\.weight: "
                     r"the checkpoint has \(\d+, \d+\), config\.json implies",
                     "".join(capfd.readouterr()))


def test_lora_is_refused_at_once_by_the_config_hook(tiny_b4_dir):
    with pytest.raises(Exception, match="LoRA is not supported for Block Transformer"):
        engine_config(tiny_b4_dir, enable_lora=True)


@pytest.mark.engine
@pytest.mark.parametrize("flag", [("--enable-lora",), ("--quantization", "fp8")])
def test_vllm_serve_refuses_an_unsupported_option_before_starting_an_engine(
        tiny_b4_tok_dir, tmp_path, flag):
    from vllm_block.tools.serving import vllm_serve

    what = "LoRA" if flag[0] == "--enable-lora" else "quantization method 'fp8'"
    log = tmp_path / "server.log"
    with pytest.raises(RuntimeError, match="vllm serve exited"):
        with vllm_serve(tiny_b4_tok_dir, "--dtype", "bfloat16", *flag, log=log, timeout=120):
            pass
    text = log.read_text()
    assert what in text and "not supported" in text, text[-3000:]
    assert "Initializing a V1 LLM engine" not in text
