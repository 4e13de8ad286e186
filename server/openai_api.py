"""The OpenAI-compatible routes: /v1/models, /v1/completions, /v1/chat/completions.

A request is validated (schema, model id, context length) before anything reaches the engine, then
runs through `run_generation` and is rendered as one JSON response or as an SSE stream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fastapi import APIRouter, Request
from vllm.outputs import RequestOutput

from server.engine import Engine
from server.errors import APIError
from server.generation import admit, run_generation
from server.state import ServerState
from server.logprobs import chat_logprobs, completion_logprobs
from server.sampling import resolve_max_tokens, sampling_params
from server.schemas import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    ModelCard,
    ModelList,
    SamplingFields,
    Usage,
    new_id,
    now,
)
from server.streaming import sse_response

DEFAULT_COMPLETION_MAX_TOKENS = 16  # OpenAI's default for the legacy completions endpoint

router = APIRouter(prefix="/v1")


@dataclass
class Choice:
    """One choice accumulated from streamed deltas (same attribute names as vLLM's output)."""

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list | None = None
    finish_reason: str | None = None


async def _collect(stream: AsyncIterator[RequestOutput]) -> list[Choice]:
    choices: dict[int, Choice] = {}
    async for out in stream:
        for c in out.outputs:
            acc = choices.setdefault(c.index, Choice(c.index))
            acc.text += c.text
            acc.token_ids.extend(c.token_ids)
            if c.logprobs is not None:
                acc.logprobs = (acc.logprobs or []) + list(c.logprobs)
            acc.finish_reason = c.finish_reason or acc.finish_reason
    return [choices[i] for i in sorted(choices)]


def _state(request: Request) -> ServerState:
    return request.app.state.server


def _check_model(state: ServerState, req: SamplingFields) -> None:
    if req.model != state.engine.model_id:
        raise APIError(404, f"The model '{req.model}' does not exist; this server serves "
                       f"'{state.engine.model_id}'.", param="model", code="model_not_found")


def _usage(prompt_tokens: int, choices: list[Choice]) -> Usage:
    return Usage.of(prompt_tokens, sum(len(c.token_ids) for c in choices))


@router.get("/models")
async def list_models(request: Request) -> ModelList:
    engine = _state(request).engine
    return ModelList(data=[ModelCard(id=engine.model_id, created=engine.started_at,
                                     max_model_len=engine.max_model_len)])


def _prompt_ids(engine: Engine, prompt: str | list[int]) -> list[int]:
    if isinstance(prompt, str):
        return engine.encode(prompt)
    vocab = len(engine.tokenizer)
    bad = [t for t in prompt if not 0 <= t < vocab]
    if bad:
        raise APIError(400, f"prompt token ids must be in [0, {vocab}); got {bad[0]}",
                       param="prompt", code="invalid_value")
    return list(prompt)


@router.post("/completions", response_model=None)
async def completions(req: CompletionRequest, request: Request):
    state = _state(request)
    engine = state.engine
    _check_model(state, req)
    prompt_ids = _prompt_ids(engine, req.prompt)
    max_tokens = resolve_max_tokens(len(prompt_ids), req.max_tokens, DEFAULT_COMPLETION_MAX_TOKENS,
                                    engine.max_model_len)
    params = sampling_params(req, max_tokens, req.logprobs)
    ticket = admit(state, params, prompt_ids)
    rid, created = new_id("cmpl"), now()
    top = req.logprobs or 0

    def choice(c, offset: int = 0) -> CompletionChoice:
        lps = (completion_logprobs(c.token_ids, c.logprobs, top, engine.decode_token, offset)
               if req.logprobs is not None and c.logprobs is not None else None)
        return CompletionChoice(index=c.index, text=c.text, logprobs=lps,
                                finish_reason=c.finish_reason)

    if req.stream:
        gen = run_generation(state, ticket, prompt_ids, params, rid, request, False)

        async def chunks() -> AsyncIterator[CompletionResponse]:
            completion_tokens = 0
            offsets: dict[int, int] = {}
            async for out in gen:
                for c in out.outputs:
                    completion_tokens += len(c.token_ids)
                    yield CompletionResponse(id=rid, created=created, model=engine.model_id,
                                             choices=[choice(c, offsets.get(c.index, 0))])
                    offsets[c.index] = offsets.get(c.index, 0) + len(c.text)
            if req.stream_options and req.stream_options.include_usage:
                yield CompletionResponse(id=rid, created=created, model=engine.model_id, choices=[],
                                         usage=Usage.of(len(prompt_ids), completion_tokens))

        return sse_response(chunks(), ticket.release)

    final = await _collect(run_generation(state, ticket, prompt_ids, params, rid, request, True))
    return CompletionResponse(id=rid, created=created, model=engine.model_id,
                              choices=[choice(c) for c in final],
                              usage=_usage(len(prompt_ids), final))


@router.post("/chat/completions", response_model=None)
async def chat_completions(req: ChatCompletionRequest, request: Request):
    state = _state(request)
    engine = state.engine
    _check_model(state, req)
    if len(req.messages) > state.max_messages:
        raise APIError(400, f"too many messages: {len(req.messages)} (limit {state.max_messages})",
                       param="messages", code="invalid_value")
    try:
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
    except ValueError as exc:
        raise APIError(400, str(exc), param="messages", code="invalid_value") from exc
    prompt_ids = engine.render_chat(messages)
    limit_param = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
    max_tokens = resolve_max_tokens(len(prompt_ids), req.completion_limit(), None,
                                    engine.max_model_len, limit_param)
    top = req.top_logprobs or 0
    params = sampling_params(req, max_tokens, top if req.logprobs else None)
    ticket = admit(state, params, prompt_ids)
    rid, created = new_id("chatcmpl"), now()

    def lps(c):
        if not req.logprobs or c.logprobs is None:
            return None
        return chat_logprobs(c.token_ids, c.logprobs, top, engine.decode_token)

    if req.stream:
        gen = run_generation(state, ticket, prompt_ids, params, rid, request, False)

        def chunk(choices: list[ChatChunkChoice], usage: Usage | None = None) -> ChatCompletionChunk:
            return ChatCompletionChunk(id=rid, created=created, model=engine.model_id,
                                       choices=choices, usage=usage)

        async def chunks() -> AsyncIterator[ChatCompletionChunk]:
            for i in range(req.n):
                yield chunk([ChatChunkChoice(index=i, delta=ChatDelta(role="assistant", content=""))])
            completion_tokens = 0
            async for out in gen:
                for c in out.outputs:
                    completion_tokens += len(c.token_ids)
                    if c.text or c.finish_reason is not None:
                        yield chunk([ChatChunkChoice(index=c.index,
                                                     delta=ChatDelta(content=c.text or None),
                                                     logprobs=lps(c),
                                                     finish_reason=c.finish_reason)])
            if req.stream_options and req.stream_options.include_usage:
                yield chunk([], Usage.of(len(prompt_ids), completion_tokens))

        return sse_response(chunks(), ticket.release)

    final = await _collect(run_generation(state, ticket, prompt_ids, params, rid, request, True))
    return ChatCompletionResponse(
        id=rid, created=created, model=engine.model_id,
        choices=[ChatChoice(index=c.index, message=AssistantMessage(content=c.text),
                            logprobs=lps(c), finish_reason=c.finish_reason)
                 for c in final],
        usage=_usage(len(prompt_ids), final))
