"""Request ids and the structured access log (pure ASGI, so streaming is untouched).

Every response carries ``X-Request-Id`` (the client's, echoed, or a new one). One JSON line per
request: id, method, path, status, latency, prompt/completion tokens. Never the API key, never the
prompt text.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger("sparse_serve.access")

_VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class AccessLog:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _VALID_ID.match(given) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        start = time.perf_counter()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []),
                                      (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            logger.info(json.dumps({
                "request_id": request_id,
                "method": scope.get("method"),
                "path": scope.get("path"),
                "status": status or 499,  # 499: client went away before a response started
                "latency_ms": round((time.perf_counter() - start) * 1000, 1),
                "prompt_tokens": state.get("prompt_tokens"),
                "completion_tokens": state.get("completion_tokens"),
            }))
