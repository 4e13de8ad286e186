"""Shared fixtures: the default model folder and ONE live `sparse-serve serve` for the whole session.

The live server is the real console script in a subprocess, bound to 127.0.0.1 on a free port, in
float32 (exactness tests compare outputs bit for bit; bf16 batching alone changes some greedy outputs)
and with an API key, so every test also exercises auth.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from server.model_prep import ensure_model

LIVE_API_KEY = "test-key-0123456789"
_START_TIMEOUT_S = 420
TEST_KV_BYTES = 1 << 30
"""KV pool of a test server (1 GiB: 2.8 requests of 8192 float32 tokens): fixed, since vLLM on CPU sizes
the pool from the NUMA node's memory, which some VMs report smaller than the machine's."""


@dataclass(frozen=True)
class LiveServer:
    url: str  # e.g. http://127.0.0.1:38123 (no /v1)
    api_key: str | None
    model: str
    model_dir: Path
    log_path: Path

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def model_dir() -> Path:
    return ensure_model(progress=False)


def start_server(model_dir: Path, log_path: Path, *extra: str,
                 api_key: str | None = LIVE_API_KEY) -> tuple[subprocess.Popen, LiveServer]:
    """Start `sparse-serve serve` and wait until /health answers (bounded)."""
    port = free_port()
    cmd = [sys.executable, "-m", "server.cli", "serve", "--model", str(model_dir),
           "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
           "--max-model-len", "8192", "--kv-cache-memory-bytes", str(TEST_KV_BYTES), *extra]
    env = dict(os.environ)
    env.pop("SPARSE_SERVE_API_KEY", None)
    if api_key:
        env["SPARSE_SERVE_API_KEY"] = api_key
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    server = LiveServer(url=f"http://127.0.0.1:{port}", api_key=api_key,
                        model=model_dir.name, model_dir=model_dir, log_path=log_path)
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{server.log_tail()}")
        try:
            if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                return proc, server
        except httpx.HTTPError:
            pass
        time.sleep(1)
    stop_server(proc)
    raise RuntimeError(f"server not healthy after {_START_TIMEOUT_S} s:\n{server.log_tail()}")


def stop_server(proc: subprocess.Popen, timeout: float = 60) -> int | None:
    """SIGTERM (graceful), then SIGKILL the whole process group so no engine process outlives it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(10)
    return proc.returncode


@pytest.fixture(scope="session")
def launch_server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """A context-manager factory for extra servers with other flags (stopped on exit from `with`)."""

    @contextlib.contextmanager
    def launch(*extra: str, api_key: str | None = LIVE_API_KEY):
        log_path = tmp_path_factory.mktemp("server") / "server.log"
        proc, server = start_server(model_dir, log_path, *extra, api_key=api_key)
        try:
            yield proc, server
        finally:
            stop_server(proc)

    return launch


@pytest.fixture(scope="session")
def live_server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    log_path = tmp_path_factory.mktemp("live-server") / "server.log"
    proc, server = start_server(model_dir, log_path)
    try:
        yield server
    finally:
        stop_server(proc)
