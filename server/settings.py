"""One settings object for the whole server.

Every field is a `sparse-serve serve` flag (``--max-model-len``) and an environment variable
(``SPARSE_SERVE_MAX_MODEL_LEN``); flags win over the environment, the environment over defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from server.cpu_host import check_bind

DEFAULT_CACHE_DIR = Path.home() / ".cache" / "sparse-serve"
DEFAULT_SPARSE_THRESHOLD = 4096


def world_size(tensor_parallel_size: int, pipeline_parallel_size: int) -> int:
    """Engine ranks of a deployment: tensor-parallel ranks x pipeline stages."""
    return tensor_parallel_size * pipeline_parallel_size


class ServerSettings(BaseSettings):
    """Configuration of `sparse-serve serve` (engine, HTTP front end, limits)."""

    model_config = SettingsConfigDict(env_prefix="SPARSE_SERVE_", extra="forbid", frozen=True)

    model: Path | None = Field(
        None,
        description="Local Hugging Face model folder. Default: the prepared default model "
        "(SmolLM2-135M-Instruct, built by `sparse-serve prepare-model` on first use).",
    )
    served_model_name: str | None = Field(
        None, description="Model id clients send and /v1/models lists. Default: the folder's name."
    )
    cache_dir: Path = Field(
        DEFAULT_CACHE_DIR, description="Cache folder for prepared models and downloads."
    )
    host: str = Field("127.0.0.1", description="Address to bind the HTTP server to.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0 picks a free one).")
    api_key: SecretStr | None = Field(
        None, description="Bearer token required on /v1/* (env SPARSE_SERVE_API_KEY). Unset: open."
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto",
        description="Weights and activations dtype. auto: the model's on CUDA; on CPU float32 unless "
        "the CPU has native bf16 (measured 3.8x faster than bfloat16 on an AVX2 host). float32 "
        "for bit-exact comparisons.",
    )
    max_model_len: int | None = Field(
        None, ge=16, description="Context length (prompt + completion). Default: the model's."
    )
    gpu_memory_utilization: float = Field(
        0.25,
        gt=0.0,
        le=0.95,
        description="Fraction of accelerator memory for weights + KV pool. On CPU vLLM sizes the KV "
        "pool from host memory with it (0.25 of 24 GiB leaves room for the OS and the test suite).",
    )
    kv_cache_memory_bytes: int | None = Field(
        None, ge=1 << 20, description="KV pool size in bytes per engine rank; replaces the sizing "
        "from --gpu-memory-utilization. On CPU hosts whose NUMA node reports less memory than the "
        "machine has (some VMs), the fraction of the node's memory can leave no room for a pool.")
    enforce_eager: bool | None = Field(
        None,
        description="Disable graph capture / torch.compile. Default: on for CPU (engine start ~25 s "
        "instead of ~3 min), off for CUDA (CUDA graphs speed up decode).",
    )
    max_num_seqs: int | None = Field(None, ge=1, description="Max concurrent sequences per step.")
    max_num_batched_tokens: int | None = Field(
        None, ge=16, description="Token budget per engine step (chunked-prefill chunk size)."
    )
    block_size: int | None = Field(
        None, ge=16, multiple_of=16, description="Tokens per KV-cache block. Default: vLLM's (128 on "
        "CPU). Sparse prefill runs block-sparse heads on vLLM's paged kernel in cache blocks: 64 "
        "matches the patterns' 64-key blocks exactly, larger blocks compute a superset.")
    enable_prefix_caching: bool = Field(True, description="Reuse KV of shared prompt prefixes.")
    tensor_parallel_size: int = Field(1, ge=1, description="Tensor-parallel ranks (GPUs per node).")
    pipeline_parallel_size: int = Field(1, ge=1, description="Pipeline stages (nodes).")
    distributed_executor_backend: Literal["mp", "ray"] | None = Field(
        None, description="Multi-process executor: mp (one node) or ray (multi-node). Default: vLLM's."
    )
    max_waiting_requests: int = Field(
        128, ge=1,
        description="Admission bound: requests accepted but not yet streaming their first token. "
        "Beyond it new requests get 429 with Retry-After at once.")
    max_queued_prompt_tokens: int = Field(
        131072, ge=1,
        description="Admission bound on the prompt tokens of those waiting requests (a single "
        "request larger than this is still admitted when nothing else waits).")
    request_timeout_s: float = Field(
        900.0, gt=0, description="Server-side limit per request; on expiry the engine request is "
        "aborted and the client gets a 504 (or an error event when streaming).")
    shutdown_grace_s: float = Field(
        30.0, ge=0, description="On SIGTERM: new requests get 503 and /ready fails; in-flight "
        "requests may finish for this long, then are aborted with an error event.")
    max_body_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, description="Largest accepted request body (413 beyond).")
    max_messages: int = Field(1024, ge=1, description="Most messages in one chat request.")
    profile: Path | None = Field(
        None, description="Per-head sparse attention profile (JSON, `sparse-serve profile build`). "
        "Default: the shipped profile when the model matches it (SmolLM2-135M-Instruct).")
    sparse_threshold: int = Field(
        DEFAULT_SPARSE_THRESHOLD, ge=1,
        description="Prefill segments whose context (cached + new tokens) is shorter than this "
        "run dense; longer ones run the profile's sparse patterns. Default from the measured "
        "dense/sparse crossover on CPU (README).")
    sparse: bool = Field(True, description="Sparse prefill from the profile; --no-sparse serves "
                         "with plain dense vLLM attention.")
    kv_policies: bool = Field(
        False, description="Decode long requests through the profile's compressed KV policies "
        "(ShadowKV / NOSA / streaming stores per KV head, kvcache/). Experimental: vLLM's pool "
        "still holds every token's KV unless --kv-window-layers. Needs sparse.")
    kv_threshold: int = Field(
        4096, ge=1, description="With --kv-policies: requests whose context is shorter decode "
        "with the exact KV.")
    kv_window_layers: bool = Field(
        False, description="With --kv-policies: layers whose KV heads are all compressed keep only "
        "a sliding window of --kv-threshold tokens in vLLM's pool (vLLM frees older blocks; the "
        "stores hold the compressed history). Turns prefix caching off.")
    cpu_bind: str = Field(
        "auto", description="CPU host only: cores for the engine's OpenMP threads. auto: all of "
        "them on hosts with <= 4 CPUs (2.1x faster prefill measured on 2 cores), else vLLM's own "
        "NUMA-aware binding; all; vllm; or CPU lists, one per engine rank ('0-3', '0-3|4-7'). "
        "An explicit VLLM_CPU_OMP_THREADS_BIND wins.")
    seed: int = Field(0, description="Engine random seed (requests may pass their own `seed`).")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Log level of the server."
    )

    @property
    def world_size(self) -> int:
        """Engine ranks: tensor-parallel ranks x pipeline stages."""
        return world_size(self.tensor_parallel_size, self.pipeline_parallel_size)

    @field_validator("cpu_bind")
    @classmethod
    def _bind_per_rank(cls, value: str, info: ValidationInfo) -> str:
        check_bind(value, world_size(info.data.get("tensor_parallel_size", 1), info.data.get("pipeline_parallel_size", 1)))
        return value

    @field_validator("served_model_name")
    @classmethod
    def _non_empty_name(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be empty")
        return value
