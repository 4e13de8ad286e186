"""The FastAPI application: OpenAI routes, API-key guard on /v1/*, /health and /metrics."""

from __future__ import annotations

import hmac

from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from server.errors import APIError, install_error_handlers
from server.access_log import AccessLog
from server.body_limit import BodyLimit
from server.openai_api import router
from server.state import ServerState

_BEARER = "bearer "


def _authorized(header: str | None, api_key: str) -> bool:
    if not header or not header.lower().startswith(_BEARER):
        return False
    given = header[len(_BEARER):].strip().encode()
    return hmac.compare_digest(given, api_key.encode())


class APIKeyGuard:
    """Pure ASGI middleware (keeps streaming and disconnect detection intact): /v1/* needs the key."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.api_key = api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            headers = dict(scope.get("headers") or [])
            header = headers.get(b"authorization", b"").decode("latin-1")
            if not _authorized(header, self.api_key):
                response = APIError(401, "Invalid or missing API key. Send 'Authorization: "
                                    "Bearer <key>'.", code="invalid_api_key",
                                    headers={"WWW-Authenticate": "Bearer"}).response()
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(state: ServerState, api_key: str | None = None,
               max_body_bytes: int = 8 * 1024 * 1024) -> FastAPI:
    """Build the app around a started engine; `api_key` guards /v1/* when set.

    Middleware, outermost first: access log (request id) -> API key -> body limit -> routes.
    """
    app = FastAPI(title="sparse-serve", version="0.1.0",
                  description="OpenAI-compatible long-context inference with sparse attention.")
    app.state.server = state
    install_error_handlers(app)
    app.include_router(router)

    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    if api_key:
        app.add_middleware(APIKeyGuard, api_key=api_key)
    app.add_middleware(AccessLog)

    @app.get("/health")
    async def health() -> JSONResponse:
        if state.engine.dead:
            return APIError(503, "the inference engine has stopped", code="engine_dead").response()
        return JSONResponse({"status": "ok"})

    @app.get("/ready")
    async def ready() -> JSONResponse:
        """Readiness: fails while draining for shutdown (load balancers stop sending), or when dead."""
        if state.lifecycle.draining:
            return APIError(503, "the server is shutting down", code="shutting_down").response()
        return await health()

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")

    return app
