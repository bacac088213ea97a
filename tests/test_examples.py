"""Every example runs (so none can rot): converting, offline inference with
LLM(), serving with examples/serve.sh and the OpenAI client example."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from helpers import REPO_ROOT, fixture_dir
from vllm_block.serving import free_port

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


def test_offline_inference_example(tiny_b4_tok_dir):
    out = run(sys.executable, str(EXAMPLES / "offline_inference.py"), str(tiny_b4_tok_dir),
              "--num-prompts", "16", "--max-tokens", "8")
    assert "generated 128 tokens for 16 prompts" in out


def test_serve_script_and_openai_client_example(tiny_b4_tok_dir, tmp_path):
    import urllib.request

    port = free_port()
    log = open(tmp_path / "serve.log", "w")
    server = subprocess.Popen(["bash", str(EXAMPLES / "serve.sh"), str(tiny_b4_tok_dir)],
                              env={**ENV, "PORT": str(port)}, stdout=log,
                              stderr=subprocess.STDOUT, cwd=REPO_ROOT)
    try:
        deadline = time.time() + 240
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                assert time.time() < deadline, "server did not become healthy"
                time.sleep(0.5)
        out = run(sys.executable, str(EXAMPLES / "openai_client.py"), "--base-url",
                  f"http://127.0.0.1:{port}/v1", "--prompt", "w1 w2 w3", "--max-tokens", "8")
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    assert out.count("tokens/s") == 2 and "chat (streamed)" in out
