"""Every example runs (so none can rot): converting, offline inference with
LLM(), serving with examples/serve.sh and the OpenAI client example."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO_ROOT, fixture_dir
from vllm_block.tools.serving import Server, free_port, wait_healthy

EXAMPLES = REPO_ROOT / "examples"
# the venv's `vllm` and `vllm-block` commands, whatever PATH the test runner has
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def run(*cmd: str, timeout: float = 300) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=timeout,
                          cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


def test_convert_original_example(tmp_path):
    out = run("bash", str(EXAMPLES / "convert_original.sh"), str(fixture_dir()),
              str(tmp_path / "converted"))
    assert (tmp_path / "converted" / "model.safetensors").exists()
    assert "ids:" in out


@pytest.mark.engine
def test_offline_inference_example(tiny_b4_tok_dir):
    out = run(sys.executable, str(EXAMPLES / "offline_inference.py"), str(tiny_b4_tok_dir),
              "--num-prompts", "16", "--max-tokens", "8")
    assert "generated 128 tokens for 16 prompts" in out


@pytest.mark.engine
def test_serve_script_and_openai_client_example(tiny_b4_tok_dir, tmp_path):
    port = free_port()
    log_path = tmp_path / "serve.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(["bash", str(EXAMPLES / "serve.sh"), str(tiny_b4_tok_dir)],
                            env={**ENV, "PORT": str(port)}, stdout=log,
                            stderr=subprocess.STDOUT, cwd=REPO_ROOT)
    server = Server(f"http://127.0.0.1:{port}", proc, log_path)
    try:
        wait_healthy(server, timeout=240)
        out = run(sys.executable, str(EXAMPLES / "openai_client.py"), "--base-url",
                  server.url + "/v1", "--prompt", "w1 w2 w3", "--max-tokens", "8")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    assert out.count("tokens/s") == 2 and "chat (streamed)" in out
