"""One streaming request against an OpenAI-compatible server, timed per token.

Records what `vllm bench serve` records: time to first token (first chunk
with generated text), inter-token latencies (gaps between later text
chunks), end-to-end latency (request start to the last text chunk), token
counts from `stream_options.include_usage` and the error text of a failure.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field

from loadtests.sse import DONE, MalformedStream, event_error, event_text, parse_sse_line
from loadtests.target import Target

Endpoint = Literal["completions", "chat"]
ENDPOINT_PATHS: dict[str, str] = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}


class RequestSpec(BaseModel):
    """One request of a workload, generated offline."""

    model_config = ConfigDict(frozen=True)

    index: int = Field(ge=0)
    prompt: str
    input_tokens: int = Field(ge=0, description="prompt tokens as sent (client-side count)")
    max_tokens: int = Field(ge=1)
    bucket: str = Field(description="input-length bucket label for breakdowns")


class RequestResult(BaseModel):
    """What happened to one request (times in seconds)."""

    index: int
    target: str
    bucket: str
    success: bool
    error: str = ""
    start_s: float = Field(description="send time, relative to the run start")
    ttft_s: float | None = None
    itl_s: list[float] = Field(default_factory=list)
    e2el_s: float | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    generated_text: str = ""


class StreamOptions(BaseModel):
    """Request-body settings shared by every request of a run."""

    endpoint: Endpoint = "completions"
    temperature: float = 0.0
    ignore_eos: bool = False
    timeout_s: float = Field(default=600.0, gt=0)


def request_body(model: str, spec: RequestSpec, options: StreamOptions, dense_prefill: bool = False) -> dict[str, Any]:
    """The JSON body for `spec` on the configured endpoint (`dense_prefill`: sparse-serve's `sparse: false`)."""
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": spec.max_tokens,
        "temperature": options.temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if options.endpoint == "chat":
        body["messages"] = [{"role": "user", "content": spec.prompt}]
    else:
        body["prompt"] = spec.prompt
    if options.ignore_eos:
        body["ignore_eos"] = True  # vLLM extension: always generate max_tokens
    if dense_prefill:
        body["sparse"] = False  # sparse-serve extension: this request's prefill runs dense
    return body


class _Timing:
    """Mutable per-request accumulator for chunk timestamps and text."""

    def __init__(self, start: float) -> None:
        self.start = start
        self.last = start
        self.ttft: float | None = None
        self.itl: list[float] = []
        self.pieces: list[str] = []
        self.usage: dict[str, Any] = {}

    def add_text(self, text: str, now: float) -> None:
        if self.ttft is None:
            self.ttft = now - self.start
        else:
            self.itl.append(now - self.last)
        self.last = now
        self.pieces.append(text)


async def stream_request(
    client: httpx.AsyncClient,
    target: Target,
    spec: RequestSpec,
    options: StreamOptions,
    run_start: float,
    count_tokens: Callable[[str], int] | None = None,
) -> RequestResult:
    """Send `spec` to `target`, consume the SSE stream and time it.

    Never raises for server-side faults: HTTP errors, dropped connections,
    malformed SSE, in-stream errors and timeouts become `success=False` with
    the error text. Output tokens come from the usage chunk, else from
    `count_tokens(generated_text)`, else the number of text chunks.
    """
    if target.model is None:
        raise ValueError(f"target {target.label!r} has no model id")
    start = time.perf_counter()
    timing = _Timing(start)
    result = RequestResult(
        index=spec.index,
        target=target.label,
        bucket=spec.bucket,
        success=False,
        start_s=start - run_start,
        input_tokens=spec.input_tokens,
    )
    try:
        async with asyncio.timeout(options.timeout_s):
            await _consume(client, target, spec, options, timing)
    except TimeoutError:
        result.error = f"timed out after {options.timeout_s:.0f}s"
    except MalformedStream as exc:
        result.error = f"malformed stream: {exc}"
    except _ServerError as exc:
        result.error = str(exc)
    except httpx.HTTPError as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    else:
        result.success = True
    result.generated_text = "".join(timing.pieces)
    if not result.success:
        return result
    result.ttft_s = timing.ttft if timing.ttft is not None else timing.last - start
    result.itl_s = timing.itl
    result.e2el_s = max(timing.last - start, result.ttft_s)
    prompt_tokens = timing.usage.get("prompt_tokens")
    if isinstance(prompt_tokens, int):
        result.input_tokens = prompt_tokens
    result.output_tokens = _output_tokens(timing, result.generated_text, count_tokens)
    return result


class _ServerError(Exception):
    """An HTTP error status or an in-stream error event."""


async def _consume(
    client: httpx.AsyncClient,
    target: Target,
    spec: RequestSpec,
    options: StreamOptions,
    timing: _Timing,
) -> None:
    assert target.model is not None
    body = request_body(target.model, spec, options, target.dense_prefill)
    url = target.url(ENDPOINT_PATHS[options.endpoint])
    max_events = 8 * spec.max_tokens + 64  # bound the loop even for chatty servers
    async with client.stream("POST", url, json=body, headers=target.headers()) as response:
        if response.status_code != 200:
            detail = (await response.aread()).decode(errors="replace")[:300]
            raise _ServerError(f"HTTP {response.status_code}: {detail}")
        events = 0
        async for line in response.aiter_lines():
            event = parse_sse_line(line)
            if event is None:
                continue
            if event == DONE:
                return
            events += 1
            if events > max_events:
                raise MalformedStream(f"more than {max_events} events for max_tokens={spec.max_tokens}")
            assert isinstance(event, dict)
            if (message := event_error(event)) is not None:
                raise _ServerError(f"server error in stream: {message}")
            if isinstance(event.get("usage"), dict):
                timing.usage = event["usage"]
            text = event_text(event, options.endpoint)
            if text:
                timing.add_text(text, time.perf_counter())
    raise MalformedStream("stream ended without [DONE]")


def _output_tokens(
    timing: _Timing, text: str, count_tokens: Callable[[str], int] | None
) -> int:
    completion_tokens = timing.usage.get("completion_tokens")
    if isinstance(completion_tokens, int):
        return completion_tokens
    if count_tokens is not None:
        return count_tokens(text)
    return len(timing.pieces)
