"""One engine request from start to finish: metrics, engine-error mapping, client-disconnect abort.

Both endpoints (completions, chat) and both modes (streaming, not) run through `run_generation`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import Request
from vllm import SamplingParams
from vllm.exceptions import VLLMClientError
from vllm.outputs import RequestOutput
from vllm.v1.engine.exceptions import EngineDeadError

from server.engine import Engine
from server.admission import Ticket
from server.errors import APIError
from server.metrics import RequestClock
from server.state import ServerState

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


def admit(state: ServerState, params: SamplingParams, prompt_ids: list[int]) -> Ticket:
    """Checks before a request is accepted, in order: draining (503), engine alive (503), admission
    bounds (429). Called by the route before any response starts, so the status is the real one."""
    if state.lifecycle.draining:
        raise APIError(503, "the server is shutting down", code="shutting_down")
    if state.engine.dead:
        raise engine_error(EngineDeadError())
    return state.admission.admit(params.n, len(prompt_ids))


async def run_generation(state: ServerState, ticket: Ticket, prompt_ids: list[int],
                         params: SamplingParams, request_id: str, http_request: Request,
                         watch_disconnect: bool) -> AsyncIterator[RequestOutput]:
    """Yield the engine's outputs (deltas) for one admitted request.

    Streams under the per-request timeout (504) and the shutdown abort (503); every exit path
    releases `ticket` and aborts the engine request if it is still running. Errors are raised as
    `APIError`. With `watch_disconnect`, a watcher aborts the request as soon as the client
    disconnects (non-streaming endpoints; streaming responses are cancelled by the ASGI server
    itself, which aborts through the same path). Token counts go to `http_request.state` for the
    access log.
    """
    engine, metrics = state.engine, state.metrics
    clock = RequestClock(metrics)
    generated: dict[int, int] = {}
    reasons: dict[int, str] = {}
    metrics.in_flight.inc()
    state.lifecycle.in_flight += 1
    watcher = (asyncio.create_task(_abort_on_disconnect(engine, http_request, request_id))
               if watch_disconnect else None)
    outputs = engine.generate(prompt_ids, params, request_id)
    deadline = asyncio.get_running_loop().time() + state.request_timeout_s
    finished = False
    try:
        while True:
            out = await _next_output(outputs, deadline, state.lifecycle.abort_all, request_id)
            if out is None:
                break
            ticket.started()
            new = 0
            for choice in out.outputs:  # outputs are deltas (see sampling.py)
                new += len(choice.token_ids)
                generated[choice.index] = generated.get(choice.index, 0) + len(choice.token_ids)
                if choice.finish_reason is not None:
                    reasons[choice.index] = choice.finish_reason
            clock.tokens(new)
            yield out
        finished = True
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
        http_request.state.prompt_tokens = len(prompt_ids)
        http_request.state.completion_tokens = sum(generated.values())
        ticket.release()
        metrics.in_flight.dec()
        state.lifecycle.in_flight -= 1
        if watcher is not None:
            watcher.cancel()
        if not finished:
            await outputs.aclose()
            with contextlib.suppress(Exception):  # a dead engine cannot abort; nothing to free
                await engine.abort(request_id)


async def _next_output(outputs: AsyncIterator[RequestOutput], deadline: float,
                       abort_all: asyncio.Event, request_id: str) -> RequestOutput | None:
    """The next output, None at the end; 504 past `deadline`, 503 once `abort_all` is set."""
    loop = asyncio.get_running_loop()
    step = asyncio.ensure_future(anext(outputs, None))
    stop = asyncio.ensure_future(abort_all.wait())
    try:
        done, _ = await asyncio.wait({step, stop}, timeout=max(0.0, deadline - loop.time()),
                                     return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # we were cancelled (client gone): stop the engine iterator first
        await _cancel(step)
        raise
    finally:
        stop.cancel()
    if step in done:
        return step.result()
    await _cancel(step)
    if stop in done:
        raise APIError(503, "the server is shutting down; this request was aborted",
                       code="shutting_down")
    raise APIError(504, f"request {request_id} exceeded the server's time limit",
                   code="request_timeout")


async def _cancel(task: asyncio.Future) -> None:
    """Cancel `task` and wait until it has unwound (the engine iterator aborts its request)."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration, Exception):
        await task


async def _abort_on_disconnect(engine: Engine, request: Request, request_id: str) -> None:
    while True:
        if await request.is_disconnected():
            logger.info("client disconnected; aborting %s", request_id)
            await engine.abort(request_id)
            return
        await asyncio.sleep(_DISCONNECT_POLL_S)
