"""Run `vllm serve` as a child process on a loopback port (demo, tests)."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def vllm_serve(model: str | Path, *args: str, timeout: float = 240,
               log: Path | None = None, kv_cache_gib: int = 1) -> Iterator[str]:
    """Start `vllm serve MODEL ARGS` on a free loopback port; yield its base
    URL once /health answers; stop it (SIGTERM, then SIGKILL) on exit.

    The `vllm` command is the one beside this interpreter. `kv_cache_gib`
    sets VLLM_CPU_KVCACHE_SPACE (the CPU build's KV budget) unless the
    environment already does."""
    port = free_port()
    vllm = Path(sys.executable).with_name("vllm")
    cmd = [str(vllm), "serve", str(model), "--host", "127.0.0.1", "--port", str(port), *args]
    log_file = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115
    env = {"VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib), **os.environ}
    proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                tail = Path(log).read_text()[-4000:] if log else ""
                raise RuntimeError(f"vllm serve exited with {proc.returncode}:\n{tail}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(base + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            if time.time() > deadline:
                raise TimeoutError(f"vllm serve did not become healthy in {timeout} s")
            time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if log:
            log_file.close()
