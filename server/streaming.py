"""Server-sent events exactly as OpenAI clients parse them: ``data: {chunk}`` events, an error event if
the engine fails mid-stream, and always a closing ``data: [DONE]``."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi.responses import StreamingResponse
from pydantic import BaseModel

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


def sse_response(chunks: AsyncIterator[BaseModel]) -> StreamingResponse:
    return StreamingResponse(_events(chunks), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
