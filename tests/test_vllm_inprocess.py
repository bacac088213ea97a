"""The plugin as a user installs it: found through its `vllm.general_plugins`
entry point (no manual register()), with vLLM's engine in-process
(VLLM_ENABLE_V1_MULTIPROCESSING=0), in a fresh interpreter."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from helpers import greedy_cases

pytestmark = pytest.mark.engine  # starts vLLM engines (make test-fast skips it)

SCRIPT = """
import json, sys
from vllm import LLM, SamplingParams

if __name__ == "__main__":
    cases = json.loads(sys.argv[2])
    llm = LLM(model=sys.argv[1], skip_tokenizer_init=True, dtype="float32",
              max_model_len=128, kv_cache_memory_bytes=16 << 20, enforce_eager=True)
    sp = SamplingParams(temperature=0.0, max_tokens=14, ignore_eos=True, detokenize=False)
    outs = llm.generate([{"prompt_token_ids": p} for p in cases], sp)
    print("RESULT " + json.dumps([list(o.outputs[0].token_ids) for o in outs]))
"""


def test_entry_point_registers_the_model_in_an_in_process_engine(tiny_b4_dir, tmp_path):
    cases = greedy_cases()
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    proc = subprocess.run([sys.executable, str(script), str(tiny_b4_dir),
                           json.dumps([c["prompt"] for c in cases])],
                          capture_output=True, text=True, env=env, timeout=300)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    assert json.loads(lines[0][7:]) == [c["greedy"] for c in cases]
