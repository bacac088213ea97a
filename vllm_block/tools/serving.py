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
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _group_stats(pgid: int) -> list[list[str]]:
    """/proc/PID/stat fields (after the command name) of the live processes of
    process group `pgid`; zombies are left out."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":  # process group id, state
                found.append(fields)
    return found


@dataclass
class Server:
    url: str | None  # http://127.0.0.1:PORT; None for a headless node (no HTTP server)
    process: subprocess.Popen
    log: Path | None

    def kill(self) -> None:
        """SIGKILL the server and every process it started (engine, workers)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def rss_bytes(self) -> int:
        """Resident memory of the server's whole process group."""
        return sum(int(f[21]) * os.sysconf("SC_PAGE_SIZE") for f in _group_stats(self.process.pid))

    def group_alive(self) -> int:
        """How many processes of the server's process group are still running."""
        self.process.poll()  # reap the leader if it has exited
        return len(_group_stats(self.process.pid))

    def wait_exit(self, timeout: float) -> bool:
        """Wait until the server and every process it started have exited;
        False if some still run after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while self.group_alive():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)
        return True

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM the server (as Ctrl-C or a service manager would) and wait
        for its whole process group to exit; SIGKILL whatever is left after
        `timeout` seconds. Returns the server's exit status, or None when it
        had to be killed."""
        if self.process.poll() is None:
            self.process.terminate()
        if self.wait_exit(timeout):
            return self.process.wait()
        self.kill()
        return None


def wait_healthy(server: Server, timeout: float, watch: Sequence[Server] = ()) -> None:
    """Wait until `server` answers /health; raise if it, or one of the `watch`
    processes (e.g. headless nodes it waits for), exits first."""
    deadline = time.time() + timeout
    while True:
        for s in (server, *watch):
            if s.process.poll() is not None:
                tail = s.log.read_text()[-4000:] if s.log else ""
                raise RuntimeError(f"vllm serve exited with {s.process.returncode}:\n{tail}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(server.url + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        if time.time() > deadline:
            raise TimeoutError(f"vllm serve did not become healthy in {timeout} s")
        time.sleep(0.5)


@contextlib.contextmanager
def _vllm_process(cmd: list[str], url: str | None, log: Path | None, kv_cache_gib: int,
                  env: Mapping[str, str] | None) -> Iterator[Server]:
    log_file = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115
    full_env = {"VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib), **os.environ, **(env or {})}
    proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=full_env,
                            start_new_session=True)
    server = Server(url, proc, log)
    try:
        yield server
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
        if not server.wait_exit(5):  # orphans of a leader that exited (e.g. killed)
            server.kill()
        if log:
            log_file.close()


def _vllm_command() -> str:
    return str(Path(sys.executable).with_name("vllm"))


@contextlib.contextmanager
def vllm_serve(model: str | Path, *args: str, timeout: float = 240,
               log: Path | None = None, kv_cache_gib: int = 1,
               env: Mapping[str, str] | None = None,
               watch: Sequence[Server] = ()) -> Iterator[Server]:
    """Start `vllm serve MODEL ARGS` on a free loopback port; yield the
    running server once /health answers; stop it (SIGTERM, then SIGKILL) on
    exit.

    The `vllm` command is the one beside this interpreter. `kv_cache_gib`
    sets VLLM_CPU_KVCACHE_SPACE (the CPU build's KV budget) unless the
    environment already does; `env` adds to (and overrides) the environment.
    Start-up fails early if a `watch` process (a headless node this server
    waits for) exits. The server leads its own process group."""
    port = free_port()
    cmd = [_vllm_command(), "serve", str(model), "--host", "127.0.0.1", "--port", str(port),
           *args]
    with _vllm_process(cmd, f"http://127.0.0.1:{port}", log, kv_cache_gib, env) as server:
        wait_healthy(server, timeout, watch)
        yield server


@contextlib.contextmanager
def vllm_serve_headless(model: str | Path, *args: str, log: Path | None = None,
                        kv_cache_gib: int = 1,
                        env: Mapping[str, str] | None = None) -> Iterator[Server]:
    """Start `vllm serve MODEL --headless ARGS`: a node that runs engines or
    workers for a head started elsewhere and serves no HTTP (`url` is None;
    wait for it through the head's /health, e.g. `vllm_serve(..., watch=[node])`).
    Yields at once; stops its process group (SIGTERM, then SIGKILL) on exit."""
    cmd = [_vllm_command(), "serve", str(model), "--headless", *args]
    with _vllm_process(cmd, None, log, kv_cache_gib, env) as server:
        yield server
