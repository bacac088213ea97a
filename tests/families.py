"""The ground-truth fixtures of `tests/fixtures/` (one per checkpoint family),
made by the original code (see tests/fixtures/README.md)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

FIXTURES = Path(__file__).resolve().parent / "fixtures"
RELEASED = FIXTURES / "released_configs"
FAMILIES = ("nopad_b4", "uptrain_b4", "megabyte_b4", "b1")
TOL = 1e-4  # fp32: max abs error on logits and log-probabilities


def family_dir(name: str) -> Path:
    return FIXTURES / name


def greedy_fixture(name: str) -> dict:
    """greedy.json: alignment and cases (prompt, virtual_pad, greedy, steps,
    prompt_logprobs with None where the original forward() predicts nothing)."""
    return json.loads((family_dir(name) / "greedy.json").read_text())


def cases(name: str) -> list[dict]:
    return greedy_fixture(name)["cases"]


def forward_fixture(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids [B, n*L], logits [B, n-1, L, V]) of the original forward()."""
    f = load_file(str(family_dir(name) / "forward.safetensors"))
    return f["input_ids"], f["logits"]


def copy_family(name: str, dst: Path) -> Path:
    """A writable copy of a fixture's original checkpoint (config.yaml + weights)."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in ("config.yaml", "model.safetensors"):
        shutil.copy(family_dir(name) / f, dst / f)
    return dst


def converted(tmp_path_factory, name: str) -> Path:
    """A fixture's original checkpoint converted into a Hugging Face dir (fp32)."""
    from vllm_block.convert import convert

    root = tmp_path_factory.mktemp(name)
    return convert(copy_family(name, root / "original"), root / "hf")


def case_id(case: dict) -> str:
    return f"prompt_len{len(case['prompt'])}"


def family_cases() -> list[tuple[str, dict]]:
    return [(name, case) for name in FAMILIES for case in cases(name)]
