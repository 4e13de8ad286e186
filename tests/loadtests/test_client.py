"""The streaming client against a fault-injecting server: timings and errors."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from loadtests.client import RequestSpec, StreamOptions, request_body, stream_request
from loadtests.target import Target

SPEC = RequestSpec(index=0, prompt="one two three four", input_tokens=4, max_tokens=5, bucket="4")


def send(url: str, endpoint: str = "completions", api_key: str | None = None, timeout_s: float = 10.0,
         dense_prefill: bool = False):
    async def go():
        target = Target(label="t", base_url=url, model="fault-model", api_key=api_key, dense_prefill=dense_prefill)
        async with httpx.AsyncClient(trust_env=False) as client:
            return await stream_request(client, target, SPEC, StreamOptions(endpoint=endpoint, timeout_s=timeout_s), time.perf_counter())
    return asyncio.run(go())


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_successful_stream(fault_server, endpoint: str) -> None:
    server, url = fault_server(modes=("ok",), token_delay_s=0.02)
    result = send(url, endpoint)
    assert result.success, result.error
    assert result.generated_text == " tok0 tok1 tok2 tok3 tok4"
    assert result.output_tokens == 5 and result.input_tokens == 4  # from the usage chunk
    assert len(result.itl_s) == 4 and all(gap >= 0.015 for gap in result.itl_s)
    assert result.e2el_s == pytest.approx(result.ttft_s + sum(result.itl_s))
    body = server.bodies[0]
    assert body["stream"] and body["stream_options"] == {"include_usage": True}
    assert ("messages" in body) == (endpoint == "chat")
    assert "sparse" not in body
    assert send(url, endpoint, dense_prefill=True).success and server.bodies[1]["sparse"] is False


def test_slow_first_token(fault_server) -> None:
    _, url = fault_server(modes=("slow_first",), slow_first_s=0.5)
    result = send(url)
    assert result.success and result.ttft_s >= 0.5 and max(result.itl_s) < 0.4


@pytest.mark.parametrize(
    ("mode", "message"),
    [("http500", "HTTP 500"), ("drop", "RemoteProtocolError"), ("malformed", "not JSON"),
     ("stream_error", "injected stream error")],
)
def test_faults_become_errors(fault_server, mode: str, message: str) -> None:
    _, url = fault_server(modes=(mode,))
    result = send(url)
    assert not result.success and message in result.error
    assert result.ttft_s is None and result.e2el_s is None


def test_timeout_and_auth(fault_server) -> None:
    _, url = fault_server(modes=("slow_first",), slow_first_s=2.0, api_key="sk-test")
    assert "HTTP 401" in send(url).error
    late = send(url, api_key="sk-test", timeout_s=0.3)
    assert not late.success and "timed out" in late.error


def test_connection_refused_is_an_error() -> None:
    result = send("http://127.0.0.1:9")
    assert not result.success and "ConnectError" in result.error


def test_request_body_options() -> None:
    body = request_body("m", SPEC, StreamOptions(endpoint="chat", ignore_eos=True, temperature=0.5))
    assert body["messages"] == [{"role": "user", "content": SPEC.prompt}]
    assert body["ignore_eos"] is True and body["temperature"] == 0.5 and body["max_tokens"] == 5
    assert "sparse" not in body
    assert request_body("m", SPEC, StreamOptions(), dense_prefill=True)["sparse"] is False
