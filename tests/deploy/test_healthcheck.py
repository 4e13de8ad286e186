"""deploy/docker/healthcheck.py against a real HTTP server on loopback."""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from deploy_checks import DEPLOY, load_deploy_module

healthcheck = load_deploy_module("healthcheck", "docker/healthcheck.py")


def serve_status(status: int) -> tuple[http.server.HTTPServer, int]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            code = status if self.path == "/health" else 404
            self.send_response(code)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


@pytest.fixture(params=[200, 503])
def status_server(request: pytest.FixtureRequest) -> Iterator[tuple[int, int]]:
    server, port = serve_status(request.param)
    yield request.param, port
    server.shutdown()
    server.server_close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_probe_is_healthy_only_on_200(status_server: tuple[int, int]) -> None:
    status, port = status_server
    healthy, reason = healthcheck.probe(f"http://127.0.0.1:{port}/health", timeout_s=5)
    assert healthy is (status == 200)
    assert reason == f"HTTP {status}"


def test_probe_of_a_closed_port_is_unhealthy() -> None:
    healthy, reason = healthcheck.probe(f"http://127.0.0.1:{closed_port()}/health", timeout_s=2)
    assert not healthy and reason.startswith("unreachable")


def test_url_uses_the_server_port_and_loopback() -> None:
    assert healthcheck.health_url({}) == "http://127.0.0.1:8000/health"
    assert healthcheck.health_url({"SPARSE_SERVE_PORT": "9123"}) == "http://127.0.0.1:9123/health"
    for bad in ("", "http", "0", "70000", "-1"):
        with pytest.raises(ValueError, match="SPARSE_SERVE_PORT"):
            healthcheck.health_url({"SPARSE_SERVE_PORT": bad})


def test_exit_status_follows_the_server(status_server: tuple[int, int]) -> None:
    status, port = status_server
    done = subprocess.run([sys.executable, str(DEPLOY / "docker" / "healthcheck.py")],
                          env={**os.environ, "SPARSE_SERVE_PORT": str(port)},
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == (0 if status == 200 else 1)
    assert f"HTTP {status}" in done.stdout + done.stderr
