"""Admission bounds, body limits and the access log (pure pieces, tiny in-test ASGI apps)."""

from __future__ import annotations

import json
import logging

import httpx
import pytest
from fastapi import FastAPI, Request

from server.access_log import AccessLog
from server.admission import Admission
from server.body_limit import BodyLimit
from server.errors import APIError, install_error_handlers


def test_waiting_requests_bound():
    adm = Admission(max_waiting_requests=2, max_queued_prompt_tokens=10_000)
    a, b = adm.admit(1, 10), adm.admit(1, 10)
    with pytest.raises(APIError) as info:
        adm.admit(1, 10)
    assert info.value.status == 429 and info.value.headers == {"Retry-After": "1"}
    assert info.value.code == "server_overloaded"
    a.started()  # streaming now: no longer waiting
    c = adm.admit(1, 10)
    for t in (a, b, c, a, b):  # release is idempotent
        t.release()
    assert (adm.waiting_requests, adm.queued_prompt_tokens) == (0, 0)
    assert adm.rejected == {"requests": 1, "tokens": 0}


def test_n_counts_as_n_slots_and_tokens():
    adm = Admission(max_waiting_requests=3, max_queued_prompt_tokens=100)
    t = adm.admit(2, 30)
    assert (adm.waiting_requests, adm.queued_prompt_tokens) == (2, 60)
    with pytest.raises(APIError):
        adm.admit(2, 1)
    with pytest.raises(APIError):
        adm.admit(1, 41)
    t.release()


def test_one_oversized_request_is_admitted_when_queue_empty():
    adm = Admission(max_waiting_requests=4, max_queued_prompt_tokens=100)
    big = adm.admit(1, 5000)
    with pytest.raises(APIError) as info:
        adm.admit(1, 1)
    assert "5000 prompt tokens" in info.value.message
    big.release()
    adm.admit(1, 1).release()


def _echo_app(max_bytes: int) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/echo")
    async def echo(request: Request) -> dict:
        body = await request.body()
        request.state.prompt_tokens = 7
        return {"len": len(body)}

    app.add_middleware(BodyLimit, max_bytes=max_bytes)
    app.add_middleware(AccessLog)
    return app


async def _post(app: FastAPI, **kwargs) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.post("/echo", **kwargs)


@pytest.mark.anyio
async def test_body_limit_and_encoding():
    app = _echo_app(1024)
    assert (await _post(app, content=b"x" * 1024)).json() == {"len": 1024}
    r = await _post(app, content=b"x" * 1025)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

    async def chunked():
        for _ in range(5):
            yield b"y" * 300

    r = await _post(app, content=chunked())  # no content-length: counted while streaming in
    assert r.status_code == 413
    r = await _post(app, content=b'{"a": "\xff\xfe"}')
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_encoding"


@pytest.mark.anyio
async def test_request_id_echoed_or_generated_and_logged(caplog):
    app = _echo_app(1024)
    with caplog.at_level(logging.INFO, logger="sparse_serve.access"):
        r = await _post(app, content=b"secret prompt", headers={"X-Request-Id": "abc-123",
                                                                 "Authorization": "Bearer k"})
        generated = (await _post(app, content=b"x")).headers["x-request-id"]
        bad = (await _post(app, content=b"x", headers={"X-Request-Id": "no spaces!"}))
    assert r.headers["x-request-id"] == "abc-123"
    assert len(generated) == 32 and bad.headers["x-request-id"] != "no spaces!"
    lines = [json.loads(rec.getMessage()) for rec in caplog.records]
    assert lines[0]["request_id"] == "abc-123" and lines[0]["status"] == 200
    assert lines[0]["prompt_tokens"] == 7 and lines[0]["latency_ms"] >= 0
    assert "secret" not in caplog.text and "Bearer" not in caplog.text


@pytest.fixture
def anyio_backend():
    return "asyncio"
