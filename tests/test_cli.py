"""`vllm-block reference-generate` and the installed package metadata."""
from __future__ import annotations

from importlib import metadata

from helpers import greedy_cases, make_tokenizer, random_config, random_model, run_cli
import vllm_block
from vllm_block.convert import convert


def test_reference_generate_prints_the_original_greedy_ids(tiny_b4_dir):
    case = greedy_cases()[-1]
    code, out, err = run_cli("reference-generate", tiny_b4_dir,
                             "--prompt-ids", ",".join(map(str, case["prompt"])),
                             "--max-new-tokens", str(len(case["greedy"])))
    assert (code, err) == (0, "")
    assert out == "ids: " + ",".join(map(str, case["greedy"])) + "\n"


def test_reference_generate_stops_at_eos_unless_ignored(tmp_path):
    model = random_model(random_config(5))
    model.save_pretrained(tmp_path / "m")
    args = ("reference-generate", tmp_path / "m", "--prompt-ids", "1,2,3",
            "--max-new-tokens", "12")
    _, out, _ = run_cli(*args, "--ignore-eos")
    ids = out.strip().removeprefix("ids: ").split(",")
    assert len(ids) == 12
    eos = ids[5]  # make the 6th generated token EOS
    model.config.eos_token_id = int(eos)
    model.save_pretrained(tmp_path / "m")
    _, out, _ = run_cli(*args)
    assert out.strip().removeprefix("ids: ").split(",") == ids[:ids.index(eos) + 1]


def test_reference_generate_with_text_prompt(tmp_path, tiny_b4_original):
    from transformers import AutoTokenizer

    model_dir = convert(tiny_b4_original, tmp_path / "m",
                        tokenizer=make_tokenizer(tmp_path / "tok"))
    code, out, err = run_cli("reference-generate", model_dir, "--prompt", "the cat sat",
                             "--max-new-tokens", "6", "--ignore-eos")
    assert (code, err) == (0, "")
    ids_line, text_line = out.splitlines()
    _, same, _ = run_cli("reference-generate", model_dir, "--prompt-ids", "1,2,3",
                         "--max-new-tokens", "6", "--ignore-eos")
    assert same.splitlines()[0] == ids_line  # "the cat sat" -> 1,2,3
    ids = [int(t) for t in ids_line.removeprefix("ids: ").split(",")]
    tok = AutoTokenizer.from_pretrained(model_dir)
    assert text_line == "text: " + tok.decode(ids)


def test_installed_distribution_matches_the_package():
    dist = metadata.distribution("vllm-block")
    assert dist.version == vllm_block.__version__
    eps = {(ep.group, ep.name): ep.value for ep in dist.entry_points}
    assert eps[("vllm.general_plugins", "block_transformer")] == \
        "vllm_block.registration:register"
    assert eps[("console_scripts", "vllm-block")] == "vllm_block.cli:main"
