"""One engine request from start to finish: metrics, engine-error mapping, client-disconnect abort.

Both endpoints (completions, chat) and both modes (streaming, not) run through `run_generation`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from fastapi import Request
from vllm import SamplingParams
from vllm.exceptions import VLLMClientError
from vllm.outputs import RequestOutput
from vllm.sampling_params import RequestOutputKind
from vllm.v1.engine.exceptions import EngineDeadError

from server.engine import Engine
from server.errors import APIError
from server.metrics import RequestClock, ServerMetrics

logger = logging.getLogger(__name__)

_DISCONNECT_POLL_S = 0.2


def engine_error(exc: BaseException) -> APIError:
    """The API error for an exception raised by the engine for one request."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, EngineDeadError):
        return APIError(503, "the inference engine has stopped; the server must be restarted",
                        code="engine_dead")
    if isinstance(exc, VLLMClientError):
        return APIError(400, str(exc), code="invalid_value")
    return APIError(500, f"the engine failed on this request: {type(exc).__name__}: {exc}",
                    code="engine_error")


async def run_generation(engine: Engine, metrics: ServerMetrics, prompt_ids: list[int],
                         params: SamplingParams, request_id: str,
                         http_request: Request | None) -> AsyncIterator[RequestOutput]:
    """Yield the engine's outputs for one request.

    Errors are re-raised as `APIError`. When `http_request` is given, a watcher aborts the engine
    request as soon as the client disconnects (used by non-streaming endpoints; streaming responses
    are cancelled by the ASGI server itself, which aborts through the same path).
    """
    if engine.dead:
        raise engine_error(EngineDeadError())
    clock = RequestClock(metrics)
    generated: dict[int, int] = {}
    reasons: dict[int, str] = {}
    metrics.in_flight.inc()
    watcher = (asyncio.create_task(_abort_on_disconnect(engine, http_request, request_id))
               if http_request is not None else None)
    try:
        async for out in engine.generate(prompt_ids, params, request_id):
            new = 0
            for choice in out.outputs:
                if params.output_kind == RequestOutputKind.DELTA:
                    new += len(choice.token_ids)
                    generated[choice.index] = generated.get(choice.index, 0) + len(choice.token_ids)
                else:
                    new += len(choice.token_ids) - generated.get(choice.index, 0)
                    generated[choice.index] = len(choice.token_ids)
                if choice.finish_reason is not None:
                    reasons[choice.index] = choice.finish_reason
            clock.tokens(new)
            yield out
        clock.done(len(prompt_ids), sum(generated.values()), list(reasons.values()))
    except (asyncio.CancelledError, GeneratorExit):
        metrics.finished("abort")
        raise
    except Exception as exc:  # engine failure for this request: map it, keep serving the others
        err = engine_error(exc)
        metrics.failed(err.status)
        logger.warning("request %s failed: %s", request_id, err.message)
        raise err from exc
    finally:
        metrics.in_flight.dec()
        if watcher is not None:
            watcher.cancel()


async def _abort_on_disconnect(engine: Engine, request: Request, request_id: str) -> None:
    while True:
        if await request.is_disconnected():
            logger.info("client disconnected; aborting %s", request_id)
            await engine.abort(request_id)
            return
        await asyncio.sleep(_DISCONNECT_POLL_S)
