"""Reliability against real servers: fuzzing, concurrency, limits, overload, timeout, SIGTERM, engine
death. The shared live server serves the non-destructive tests; destructive ones get their own."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import threading
import time

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

pytestmark = pytest.mark.slow

FUZZ_EXAMPLES = 1100  # per operation; hypothesis stops early on operations without inputs
_FUZZED: dict[str, int] = {}


def _error_shape(r: httpx.Response) -> None:
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"], r.text


# ---- fuzzing the OpenAPI schema ---------------------------------------------------------------


def _cap_generation(body: object) -> None:
    """Keep generated generations short: CI time, not correctness, is at stake."""
    if not isinstance(body, dict):
        return
    for key in ("max_tokens", "max_completion_tokens"):
        if isinstance(body.get(key), int) and body[key] > 4:
            body[key] = 4
    if "messages" in body and not any(k in body for k in ("max_tokens", "max_completion_tokens")):
        body["max_tokens"] = 4


def test_fuzz_no_5xx_and_openai_error_shape(live_server):
    """Schemathesis cases for every operation of our OpenAPI schema (its pytest plugin does not
    support pytest 9, so hypothesis drives each operation's strategy here)."""
    raw = httpx.get(f"{live_server.url}/openapi.json", timeout=10).json()
    api = schemathesis.openapi.from_dict(raw)
    failures: list[tuple[str, object, int, str]] = []
    for result in api.get_all_operations():
        operation = result.ok()
        examples = FUZZ_EXAMPLES if operation.method.upper() == "POST" else 50

        @given(case=operation.as_strategy())
        @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case) -> None:
            _cap_generation(case.body)
            response = case.call(base_url=live_server.url, headers=live_server.headers,
                                 timeout=120)
            _FUZZED[operation.label] = _FUZZED.get(operation.label, 0) + 1
            bad = response.status_code >= 500
            if not bad and response.status_code >= 400 and case.path.startswith("/v1"):
                err = response.json().get("error", {})
                bad = set(err) != {"message", "type", "param", "code"}
            if bad:
                failures.append((operation.label, case.body, response.status_code,
                                 response.text[:300]))

        check()
    assert not failures, failures[:5]


def test_fuzz_volume_and_engine_still_healthy(live_server):
    total = sum(_FUZZED.values())
    print(f"fuzzed requests: {total} {_FUZZED}")
    assert total >= 2000, _FUZZED
    assert httpx.get(f"{live_server.url}/health", timeout=10).status_code == 200
    r = httpx.post(f"{live_server.url}/v1/chat/completions", headers=live_server.headers,
                   timeout=60, json={"model": live_server.model, "temperature": 0,
                                     "max_tokens": 24, "messages": [
                                         {"role": "user",
                                          "content": "What is the capital of France?"}]})
    assert "Paris" in r.json()["choices"][0]["message"]["content"]


# ---- concurrency: batched greedy == single greedy (float32) -----------------------------------


async def _stream_text(client: httpx.AsyncClient, server, prompt: str, max_tokens: int) -> str:
    body = {"model": server.model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
            "stream": True}
    parts = []
    async with client.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line[6:])
                assert "error" not in chunk, chunk
                parts.append(chunk["choices"][0]["text"] if chunk["choices"] else "")
    return "".join(parts)


def test_64_concurrent_streams_match_single_requests(live_server):
    prompts = [f"Item {i}: the number {i * 7} written in words is" for i in range(64)]

    async def run() -> tuple[list[str], list[str]]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=live_server.url, headers=live_server.headers,
                                     timeout=300, limits=limits) as client:
            single = [await _stream_text(client, live_server, p, 12) for p in prompts]
            together = await asyncio.wait_for(asyncio.gather(
                *[_stream_text(client, live_server, p, 12) for p in prompts]), 300)
        return single, together

    single, together = asyncio.run(run())
    mismatches = [i for i, (a, b) in enumerate(zip(single, together)) if a != b]
    assert not mismatches, [(single[i], together[i]) for i in mismatches]


# ---- request limits on the shared server ------------------------------------------------------


def test_size_limits_and_request_id(live_server):
    url = f"{live_server.url}/v1/chat/completions"
    huge = b'{"model": "x", "messages": [{"role": "user", "content": "' + b"a" * (9 << 20) + b'"}]}'
    r = httpx.post(url, content=huge, headers=live_server.headers, timeout=60)
    assert r.status_code == 413
    _error_shape(r)
    r = httpx.post(url, content=b'{"model": "\xff"}', timeout=10,
                   headers={**live_server.headers, "content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_encoding"
    many = [{"role": "user", "content": "hi"}] * 1025
    r = httpx.post(url, json={"model": live_server.model, "messages": many}, timeout=10,
                   headers={**live_server.headers, "X-Request-Id": "req-42"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    assert r.headers["x-request-id"] == "req-42"


# ---- overload, timeout, SIGTERM: a server with small limits ----------------------------------


@pytest.fixture(scope="module")
def small_server(launch_server):
    with launch_server("--max-waiting-requests", "2", "--request-timeout-s", "4",
                       "--shutdown-grace-s", "3", "--max-num-seqs", "2") as (proc, server):
        yield proc, server


def test_overload_gets_fast_429_and_accepted_requests_complete(small_server):
    _, server = small_server

    async def one(client: httpx.AsyncClient, i: int) -> tuple[int, float, dict]:
        t0 = time.perf_counter()
        r = await client.post("/v1/completions", json={
            "model": server.model, "prompt": f"Story {i}: once upon a time", "max_tokens": 6,
            "temperature": 0})
        return r.status_code, time.perf_counter() - t0, r.json() | {"headers": dict(r.headers)}

    async def run():
        async with httpx.AsyncClient(base_url=server.url, headers=server.headers,
                                     timeout=120) as client:
            return await asyncio.gather(*[one(client, i) for i in range(12)])

    results = asyncio.run(run())
    accepted = [r for r in results if r[0] == 200]
    rejected = [r for r in results if r[0] == 429]
    assert len(accepted) + len(rejected) == 12, [r[0] for r in results]
    assert accepted and rejected
    assert all(r[2]["choices"][0]["finish_reason"] == "length" for r in accepted)
    assert all(r[2]["usage"]["completion_tokens"] == 6 for r in accepted)
    assert all(r[1] < 2.0 for r in rejected)  # immediate, not queued
    assert all(r[2]["headers"]["retry-after"] == "1" and
               r[2]["error"]["type"] == "rate_limit_error" for r in rejected)


def test_request_timeout_aborts_with_504(small_server):
    _, server = small_server
    body = {"model": server.model, "prompt": "Once upon a time,", "max_tokens": 4000,
            "temperature": 0}
    t0 = time.perf_counter()
    r = httpx.post(f"{server.url}/v1/completions", json=body, headers=server.headers, timeout=60)
    assert r.status_code == 504 and r.json()["error"]["code"] == "request_timeout"
    assert time.perf_counter() - t0 < 30
    stream = httpx.post(f"{server.url}/v1/completions", json=body | {"stream": True},
                        headers=server.headers, timeout=60)
    events = [e for e in stream.text.split("\n\n") if e]
    assert '"request_timeout"' in events[-2] and events[-1] == "data: [DONE]"
    assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200


def test_sigterm_drains_streams_and_exits_0(small_server):
    proc, server = small_server
    body = {"model": server.model, "prompt": "Once upon a time,", "max_tokens": 3000,
            "temperature": 0, "stream": True}
    events: list[str] = []

    def stream() -> None:
        with httpx.stream("POST", f"{server.url}/v1/completions", json=body,
                          headers=server.headers, timeout=60) as r:
            events.extend(line for line in r.iter_lines() if line)

    reader = threading.Thread(target=stream)
    reader.start()
    deadline = time.monotonic() + 30
    while not events and time.monotonic() < deadline:
        time.sleep(0.1)
    assert events, "stream never started"
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert httpx.get(f"{server.url}/ready", timeout=5).status_code == 503
    assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200
    r = httpx.post(f"{server.url}/v1/completions", headers=server.headers, timeout=5,
                   json={"model": server.model, "prompt": "hi", "max_tokens": 2})
    assert r.status_code == 503 and r.json()["error"]["code"] == "shutting_down"
    reader.join(60)
    assert not reader.is_alive()
    assert events[-1] == "data: [DONE]" and '"shutting_down"' in events[-2]
    assert proc.wait(60) == 0


# ---- engine death -----------------------------------------------------------------------------


def _worker_pids(root_pid: int) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid,pgid,args"], capture_output=True, text=True).stdout
    pgid = os.getpgid(root_pid)
    return [int(line.split()[0]) for line in out.splitlines()[1:]
            if int(line.split()[1]) == pgid and "VLLM::Worker" in line]


def test_killed_worker_makes_health_503_and_requests_fail_fast(launch_server):
    with launch_server() as (proc, server):
        pids = _worker_pids(proc.pid)
        assert pids, "no VLLM::Worker process found"
        os.kill(pids[0], signal.SIGKILL)
        deadline = time.monotonic() + 30
        status = 200
        while time.monotonic() < deadline:
            status = httpx.get(f"{server.url}/health", timeout=5).status_code
            if status == 503:
                break
            time.sleep(0.2)
        assert status == 503
        t0 = time.perf_counter()
        r = httpx.post(f"{server.url}/v1/completions", headers=server.headers, timeout=10,
                       json={"model": server.model, "prompt": "hi", "max_tokens": 2})
        assert r.status_code == 503 and r.json()["error"]["code"] == "engine_dead"
        assert time.perf_counter() - t0 < 2
