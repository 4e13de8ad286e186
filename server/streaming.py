"""Server-sent events exactly as OpenAI clients parse them: ``data: {chunk}`` events, an error event if
the engine fails mid-stream, and always a closing ``data: [DONE]``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from starlette.types import Receive, Scope, Send

from server.errors import APIError
from server.generation import engine_error


def sse_event(payload: BaseModel | str) -> str:
    data = payload if isinstance(payload, str) else payload.model_dump_json(exclude_none=False)
    return f"data: {data}\n\n"


async def _events(chunks: AsyncIterator[BaseModel]) -> AsyncIterator[str]:
    try:
        async for chunk in chunks:
            yield sse_event(chunk)
    except APIError as err:
        yield sse_event(err.body())
    except Exception as exc:  # noqa: BLE001 - anything else still ends the stream cleanly
        yield sse_event(engine_error(exc).body())
    yield sse_event("[DONE]")


class _SSEResponse(StreamingResponse):
    """Runs `on_close` however the response ends, even if the body was never started (a client
    gone before the headers): the admission ticket must never leak."""

    def __init__(self, chunks: AsyncIterator[BaseModel], on_close: Callable[[], None]) -> None:
        super().__init__(_events(chunks), media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


def sse_response(chunks: AsyncIterator[BaseModel], on_close: Callable[[], None]) -> StreamingResponse:
    return _SSEResponse(chunks, on_close)
