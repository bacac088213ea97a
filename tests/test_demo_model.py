"""The shipped demo model (models/kjv-block-tiny) end to end: the README's
demo command, `vllm-block generate`, and greedy outputs that agree between
`vllm serve` over HTTP, `LLM()` and the reference model."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch

from engine import engine
from helpers import REPO_ROOT

pytestmark = pytest.mark.engine  # starts vLLM engines (make test-fast skips it)

MODEL_DIR = REPO_ROOT / "models" / "kjv-block-tiny"
PROMPTS = ["In the beginning God created", "And the LORD spake unto Moses, saying",
           "Blessed are the", "I"]
NEW = 24


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(MODEL_DIR)


@pytest.fixture(scope="module")
def reference_greedy(tokenizer):
    from transformers import AutoModelForCausalLM

    import vllm_block  # noqa: F401  (registers the Auto classes)

    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32).eval()
    out = []
    for prompt in PROMPTS:
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        out.append(model.generate(torch.tensor([ids]), max_new_tokens=NEW)[0, len(ids):].tolist())
    return out


def test_demo_command_serves_and_prints_readable_text():
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "examples" / "demo.py")],
                          capture_output=True, text=True, timeout=400, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert out.count("tokens/s") == 2 and "server stopped" in out
    completion = out.split("completion:", 1)[1].split("tokens in", 1)[0]
    words = completion.split()
    # English words of the King James text, not byte soup
    assert len(words) >= 15
    assert sum(w.strip(",.;:?!").isalpha() for w in words) >= 0.8 * len(words)


def test_llm_greedy_equals_reference(tokenizer, reference_greedy):
    from vllm import SamplingParams

    with engine(MODEL_DIR, skip_tokenizer_init=False) as llm:
        outs = llm.generate(PROMPTS, SamplingParams(temperature=0.0, max_tokens=NEW,
                                                    ignore_eos=True))
    assert [list(o.outputs[0].token_ids) for o in outs] == reference_greedy


def test_http_greedy_equals_reference(reference_greedy, tmp_path):
    from openai import OpenAI

    from vllm_block.tools.serving import vllm_serve

    with vllm_serve(MODEL_DIR, "--dtype", "float32", "--max-model-len", "512",
                    log=tmp_path / "server.log") as server:
        client = OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        model = client.models.list().data[0].id
        got = [client.completions.create(
            model=model, prompt=p, max_tokens=NEW, temperature=0.0,
            extra_body={"ignore_eos": True, "return_token_ids": True}).choices[0].token_ids
            for p in PROMPTS]
    assert got == reference_greedy


def test_vllm_block_generate_batches_prompts(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS * 4))
    proc = subprocess.run([str(sys.executable), "-m", "vllm_block.cli", "generate",
                           str(MODEL_DIR), "--prompts-file", str(prompts), "--max-tokens", "8"],
                          capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert re.search(r"\d+ tokens for 16 prompts in", out)
    assert "Processed prompts: 100%" in out  # vLLM's progress bar
    assert out.count("=== ") == 16
