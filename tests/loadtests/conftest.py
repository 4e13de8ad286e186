"""Test servers for the load-test harness.

`FaultServer` is a small OpenAI-compatible ASGI app that streams completions
and, by request arrival order, injects faults: a slow first token, HTTP 500,
a connection dropped mid-stream, malformed SSE, an in-stream error event. It
runs under uvicorn on a loopback port in a background thread.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import uvicorn
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from loadtests.tokenizer import PromptTokenizer, load_tokenizer

MODES = ("ok", "slow_first", "http500", "drop", "malformed", "stream_error")


class FaultServer:
    """OpenAI-style streaming server whose i-th request behaves as modes[i % len]."""

    def __init__(self, modes: tuple[str, ...] = ("ok",), token_delay_s: float = 0.005,
                 slow_first_s: float = 0.4, api_key: str | None = None) -> None:
        unknown = set(modes) - set(MODES)
        if unknown:
            raise ValueError(f"unknown modes {unknown}")
        self.modes = modes
        self.token_delay_s = token_delay_s
        self.slow_first_s = slow_first_s
        self.api_key = api_key
        self.requests = 0
        self.bodies: list[dict] = []
        self.registry = CollectorRegistry()
        self.requests_total = Counter("sparse_serve:requests", "requests", registry=self.registry)
        self.prompt_tokens = Counter("sparse_serve:prompt_tokens", "prompt words", registry=self.registry)
        self.ttft = Histogram("sparse_serve:time_to_first_token_seconds", "ttft", registry=self.registry)
        self.app = Starlette(routes=[
            Route("/v1/models", self.models),
            Route("/metrics", self.metrics),
            Route("/v1/completions", self.generate, methods=["POST"]),
            Route("/v1/chat/completions", self.generate, methods=["POST"]),
        ])

    def _authorized(self, request: Request) -> bool:
        return self.api_key is None or request.headers.get("authorization") == f"Bearer {self.api_key}"

    async def models(self, request: Request) -> Response:
        if not self._authorized(request):
            return JSONResponse({"error": {"message": "bad key"}}, status_code=401)
        return JSONResponse({"object": "list", "data": [{"id": "fault-model", "max_model_len": 4096}]})

    async def metrics(self, request: Request) -> Response:
        return PlainTextResponse(generate_latest(self.registry).decode())

    async def generate(self, request: Request) -> Response:
        if not self._authorized(request):
            return JSONResponse({"error": {"message": "bad key"}}, status_code=401)
        body = await request.json()
        self.bodies.append(body)
        mode = self.modes[self.requests % len(self.modes)]
        self.requests += 1
        self.requests_total.inc()
        chat = "messages" in body
        prompt = body["messages"][-1]["content"] if chat else body["prompt"]
        self.prompt_tokens.inc(len(prompt.split()))
        if mode == "http500":
            return JSONResponse({"error": {"message": "injected failure"}}, status_code=500)
        stream = self._stream(mode, chat, int(body["max_tokens"]), len(prompt.split()))
        return StreamingResponse(stream, media_type="text/event-stream")

    async def _stream(self, mode: str, chat: bool, max_tokens: int, prompt_words: int) -> AsyncIterator[str]:
        start = time.perf_counter()
        await asyncio.sleep(self.slow_first_s if mode == "slow_first" else self.token_delay_s)
        for i in range(max_tokens):
            if i == 2 and mode == "drop":
                raise ConnectionResetError("injected connection drop")
            if i == 1 and mode == "malformed":
                yield "data: {this is not json\n\n"
            if i == 1 and mode == "stream_error":
                yield "data: " + json.dumps({"error": {"message": "injected stream error"}}) + "\n\n"
            if i == 0:
                self.ttft.observe(time.perf_counter() - start)
            piece = f" tok{i}"
            choice = {"index": 0, "delta": {"content": piece}} if chat else {"index": 0, "text": piece}
            yield "data: " + json.dumps({"choices": [choice]}) + "\n\n"
            await asyncio.sleep(self.token_delay_s)
        usage = {"prompt_tokens": prompt_words, "completion_tokens": max_tokens}
        yield "data: " + json.dumps({"choices": [], "usage": usage}) + "\n\n"
        yield "data: [DONE]\n\n"


@contextmanager
def serve_in_thread(app: Callable) -> Iterator[str]:
    """Run an ASGI app under uvicorn on a free loopback port; yields its URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="critical", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started, "test server did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture
def fault_server() -> Iterator[Callable[..., tuple[FaultServer, str]]]:
    """Factory: fault_server(modes=..., ...) -> (server object, base URL)."""
    with_stack: list = []

    def start(**kwargs) -> tuple[FaultServer, str]:
        server = FaultServer(**kwargs)
        context = serve_in_thread(server.app)
        url = context.__enter__()
        with_stack.append(context)
        return server, url

    yield start
    for context in reversed(with_stack):
        context.__exit__(None, None, None)


@pytest.fixture(scope="session")
def smollm_tokenizer(model_dir: Path) -> PromptTokenizer:
    """The default model's tokenizer (`model_dir` comes from tests/conftest.py)."""
    return load_tokenizer(str(model_dir), None)
