"""Thin adapter over vLLM's v1 `AsyncLLM`: the only module of the server that touches vLLM's engine API.

It builds the engine from `ServerSettings`, tokenizes prompts (so the HTTP layer can count tokens and
check the context length before anything is queued) and streams `RequestOutput`s.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from vllm import SamplingParams
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.inputs import TokensPrompt
from vllm.outputs import RequestOutput
from vllm.v1.engine.async_llm import AsyncLLM

from kvcache.vllm_connector import DENSE_PREFILL_ARG, kv_transfer_config, wants_dense_prefill
from server.cpu_host import apply_cpu_binding, cpu_flags, resolve_dtype
from server.settings import ServerSettings

logger = logging.getLogger(__name__)


def on_cuda() -> bool:
    return torch.cuda.is_available()


def engine_args(settings: ServerSettings, model_dir: Path,
                overrides: dict[str, Any] | None = None) -> AsyncEngineArgs:
    """vLLM engine arguments for `settings` (model folder already resolved); `overrides` win."""
    eager = settings.enforce_eager if settings.enforce_eager is not None else not on_cuda()
    extra: dict[str, Any] = {"enable_prefix_caching": settings.enable_prefix_caching}
    if settings.max_num_seqs is not None:
        extra["max_num_seqs"] = settings.max_num_seqs
    if settings.kv_cache_memory_bytes is not None:
        extra["kv_cache_memory_bytes"] = settings.kv_cache_memory_bytes
    if settings.max_num_batched_tokens is not None:
        extra["max_num_batched_tokens"] = settings.max_num_batched_tokens
    if settings.block_size is not None:
        extra["block_size"] = settings.block_size
    if settings.sparse:  # names requests, prompts and dense asks to the sparse backend (kvcache.vllm_connector)
        extra["kv_transfer_config"] = kv_transfer_config()
    if settings.distributed_executor_backend is not None:
        extra["distributed_executor_backend"] = settings.distributed_executor_backend
    return AsyncEngineArgs(
        model=str(model_dir),
        served_model_name=[served_name(settings, model_dir)],
        dtype=resolve_dtype(settings.dtype, on_cuda(), cpu_flags()),
        max_model_len=settings.max_model_len,
        gpu_memory_utilization=settings.gpu_memory_utilization,
        enforce_eager=eager,
        tensor_parallel_size=settings.tensor_parallel_size,
        pipeline_parallel_size=settings.pipeline_parallel_size,
        seed=settings.seed,
        disable_log_stats=False,
        **(extra | (overrides or {})),
    )


def served_name(settings: ServerSettings, model_dir: Path) -> str:
    return settings.served_model_name or model_dir.name


@dataclass
class Engine:
    """A started vLLM engine plus what the HTTP layer needs to know about the model."""

    llm: AsyncLLM
    model_id: str
    model_dir: Path
    max_model_len: int
    started_at: int
    sparse: bool = False  # sparse prefill armed (requests may ask for dense prefill)

    @classmethod
    def start(cls, settings: ServerSettings, model_dir: Path,
              stat_loggers: list[Callable[..., Any]] | None = None,
              overrides: dict[str, Any] | None = None) -> "Engine":
        t0 = time.perf_counter()
        if not on_cuda():
            apply_cpu_binding(settings.cpu_bind, settings.world_size)
        llm = AsyncLLM.from_engine_args(engine_args(settings, model_dir, overrides), stat_loggers=stat_loggers)
        max_len = llm.vllm_config.model_config.max_model_len
        logger.info("engine ready in %.1f s: %s (max_model_len %d, dtype %s)",
                    time.perf_counter() - t0, model_dir, max_len, llm.vllm_config.model_config.dtype)
        return cls(llm=llm, model_id=served_name(settings, model_dir), model_dir=model_dir,
                   max_model_len=max_len, started_at=int(time.time()), sparse=settings.sparse)

    @property
    def tokenizer(self) -> Any:
        return self.llm.get_tokenizer()

    @property
    def dead(self) -> bool:
        return self.llm.errored

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def render_chat(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of `messages` rendered with the model's chat template, ready for a reply."""
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                  tokenize=False)
        return self.encode(text)

    def decode_token(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])

    async def generate(self, prompt_ids: list[int], params: SamplingParams,
                       request_id: str) -> AsyncIterator[RequestOutput]:
        """Stream outputs; cancelling the iteration aborts the request in the engine (KV freed).

        On a sparse engine, a request that asks for dense prefill gets its own prefix-cache salt: it
        never reuses KV that a sparse prefill computed, nor lends its own to one."""
        prompt = TokensPrompt(prompt_token_ids=prompt_ids)
        if self.sparse and wants_dense_prefill(params):
            prompt["cache_salt"] = DENSE_PREFILL_ARG
        async for out in self.llm.generate(prompt, params, request_id):
            yield out

    async def abort(self, request_id: str) -> None:
        await self.llm.abort(request_id)

    def shutdown(self) -> None:
        self.llm.shutdown()
