"""Run `vllm serve` as a child process on a loopback port (demo, tests, load tests)."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str  # http://127.0.0.1:PORT
    process: subprocess.Popen
    log: Path | None

    def kill(self) -> None:
        """SIGKILL the server and every process it started (engine, workers)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def rss_bytes(self) -> int:
        """Resident memory of the server's whole process group."""
        total = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[2]) == self.process.pid:  # process group id
                    total += int(fields[21]) * os.sysconf("SC_PAGE_SIZE")  # rss pages
        return total


def wait_healthy(server: Server, timeout: float) -> None:
    deadline = time.time() + timeout
    while True:
        if server.process.poll() is not None:
            tail = server.log.read_text()[-4000:] if server.log else ""
            raise RuntimeError(f"vllm serve exited with {server.process.returncode}:\n{tail}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(server.url + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        if time.time() > deadline:
            raise TimeoutError(f"vllm serve did not become healthy in {timeout} s")
        time.sleep(0.5)


@contextlib.contextmanager
def vllm_serve(model: str | Path, *args: str, timeout: float = 240,
               log: Path | None = None, kv_cache_gib: int = 1) -> Iterator[Server]:
    """Start `vllm serve MODEL ARGS` on a free loopback port; yield the
    running server once /health answers; stop it (SIGTERM, then SIGKILL) on
    exit.

    The `vllm` command is the one beside this interpreter. `kv_cache_gib`
    sets VLLM_CPU_KVCACHE_SPACE (the CPU build's KV budget) unless the
    environment already does. The server leads its own process group."""
    port = free_port()
    vllm = Path(sys.executable).with_name("vllm")
    cmd = [str(vllm), "serve", str(model), "--host", "127.0.0.1", "--port", str(port), *args]
    log_file = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115
    env = {"VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib), **os.environ}
    proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    server = Server(f"http://127.0.0.1:{port}", proc, log)
    try:
        wait_healthy(server, timeout)
        yield server
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
        if log:
            log_file.close()
