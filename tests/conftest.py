from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import FIXTURES, fixture_dir  # noqa: F401  (re-exported for tests)

# The reference model runs tiny ops in this process while vLLM's engine runs
# in its own; one intra-op thread avoids OpenMP spin contention on 2 cores
# (measured: 0.8 ms vs 57 ms per cached decoding step).
torch.set_num_threads(1)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "engine: starts a vLLM engine (LLM() or a `vllm serve` process); "
                   "`make test-fast` runs every test without it")
    config.addinivalue_line(
        "markers", "pins_vllm(version, issue, behaviour): asserts a fault of that vLLM "
                   "version (upstream issue named), not this package's behaviour")


@pytest.fixture(autouse=True)
def no_engine_unless_marked(request, monkeypatch):
    """A test not marked `engine` cannot start a vLLM engine on a Block
    Transformer: `engine()` refuses, and vLLM processes it starts (LLM() in a
    script, `vllm serve`) load no plugin, so the model is unknown to them.
    This keeps `make test-fast` (-m "not engine") free of engines."""
    if request.node.get_closest_marker("engine") is None:
        monkeypatch.setenv("VLLM_BLOCK_TESTS_NO_ENGINE", "1")
        monkeypatch.setenv("VLLM_PLUGINS", "none-outside-engine-tests")


@pytest.fixture
def one_core_per_rank(monkeypatch):
    """Binds each rank of a 2-way parallel engine on CPU to its own core."""
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0|1")


@pytest.fixture(scope="session")
def tiny_b4_original() -> Path:
    """The original-format checkpoint dir of the tiny fixture (read-only)."""
    return fixture_dir("original_tiny_b4")


@pytest.fixture(scope="session")
def tiny_b4_dir(tmp_path_factory, tiny_b4_original) -> Path:
    """`original_tiny_b4` converted into a Hugging Face dir (fp32)."""
    from vllm_block.convert import convert

    return convert(tiny_b4_original, tmp_path_factory.mktemp("converted") / "tiny_b4")


@pytest.fixture(scope="session")
def tiny_b4_model(tiny_b4_dir):
    """The converted tiny fixture loaded as the reference model (fp32, eval)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_b4_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def tiny_b4_tok_dir(tmp_path_factory, tiny_b4_original) -> Path:
    """`original_tiny_b4` converted with a 512-entry word-level tokenizer, so
    vLLM runs with its tokenizer (and validates token ids) on it."""
    from helpers import make_tokenizer
    from vllm_block.convert import convert

    root = tmp_path_factory.mktemp("converted_tok")
    words = ("<|endoftext|>",) + tuple(f"w{i}" for i in range(1, 512))
    tok = make_tokenizer(root / "tokenizer", words)
    (tok / "chat_template.jinja").write_text(
        "{% for m in messages %}{{ m['content'] }} {% endfor %}")
    return convert(tiny_b4_original, root / "tiny_b4", tokenizer=tok)
