"""OpenAI request fields -> vLLM `SamplingParams`, with the context-length check done up front."""

from __future__ import annotations

from vllm import SamplingParams
from vllm.exceptions import VLLMValidationError
from vllm.sampling_params import RequestOutputKind

from kvcache.vllm_connector import DENSE_PREFILL_ARG
from server.errors import APIError
from server.schemas import SamplingFields


def resolve_max_tokens(prompt_len: int, requested: int | None, default: int | None,
                       max_model_len: int, param: str = "max_tokens") -> int:
    """Completion budget for a prompt of `prompt_len` tokens.

    `requested` is the client's value; when absent, `default` (None: the rest of the context).
    Raises a 400 `context_length_exceeded` naming both numbers when the request cannot fit.
    """
    if prompt_len >= max_model_len:
        raise APIError(
            400,
            f"This model's maximum context length is {max_model_len} tokens, but the prompt has "
            f"{prompt_len} tokens, which leaves no room for a completion.",
            param="messages" if param == "max_completion_tokens" else "prompt",
            code="context_length_exceeded",
        )
    if requested is None:
        room = max_model_len - prompt_len
        return room if default is None else min(default, room)
    if prompt_len + requested > max_model_len:
        raise APIError(
            400,
            f"This model's maximum context length is {max_model_len} tokens. However, you "
            f"requested {prompt_len + requested} tokens ({prompt_len} in the prompt, {requested} "
            f"for the completion). Please reduce the prompt or {param}.",
            param=param,
            code="context_length_exceeded",
        )
    return requested


def sampling_params(req: SamplingFields, max_tokens: int, logprobs: int | None) -> SamplingParams:
    """vLLM sampling parameters. Outputs always come as deltas, also for non-streaming requests, so
    that the server sees the first token (TTFT metrics, admission) and accumulates the rest."""
    try:
        return _build(req, max_tokens, logprobs, RequestOutputKind.DELTA)
    except VLLMValidationError as exc:
        raise APIError(400, exc.args[0] if exc.args else str(exc), param=exc.parameter,
                       code="invalid_value") from exc
    except ValueError as exc:
        raise APIError(400, str(exc), code="invalid_value") from exc


def _build(req: SamplingFields, max_tokens: int, logprobs: int | None,
           kind: RequestOutputKind) -> SamplingParams:
    return SamplingParams(
        n=req.n,
        max_tokens=max_tokens,
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        top_k=0 if req.top_k in (None, -1) else req.top_k,
        seed=req.seed,
        stop=req.stop_list(),
        ignore_eos=req.ignore_eos,
        presence_penalty=req.presence_penalty or 0.0,
        frequency_penalty=req.frequency_penalty or 0.0,
        logprobs=logprobs,
        output_kind=kind,
        extra_args=None if req.sparse else {DENSE_PREFILL_ARG: True},
    )
