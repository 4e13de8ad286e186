"""Configuration the vLLM plugin reads in every engine process (engine core, workers, Ray).

vLLM offers no API to hand options to an attention backend, and its worker processes are
spawned, so the server serialises one :class:`PluginConfig` into the environment variable
``SPARSE_SERVE_PLUGIN`` before it starts the engine; child processes inherit it. Without the
variable the plugin stays inactive and vLLM runs unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

ENV_VAR = "SPARSE_SERVE_PLUGIN"


class PluginConfig(BaseModel):
    """What the sparse-prefill backend needs to know in the engine processes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    profile: Path = Field(description="Validated per-head profile file.")
    threshold: int = Field(ge=1, description="Prefill segments whose context (cached + new tokens) "
                           "is shorter run dense through the wrapped backend.")
    min_segment: int = Field(64, ge=1, description="Segments with fewer new tokens run dense.")
    dense_tail: int = Field(64, ge=0, description="Last query rows of the sparse segment that ends a prompt "
                            "computed dense (the question at the end of a prompt reads the whole context); "
                            "earlier chunks of the prompt have none.")
    executor: Literal["gather", "flex", "triton", "reference"] | None = Field(
        None, description="Sparse executor for every sparse head. Default on CPU: vLLM's own paged kernel "
        "for column-free indices (A-shape, block-sparse, query-aware blocks), gather for the others; "
        "triton on CUDA.")
    kv_policies: bool = Field(False, description="Decode through the profile's compressed KV policies "
                              "(kvcache/); needs the sparse-serve KV connector in the engine.")
    kv_threshold: int = Field(4096, ge=1, description="Decode steps of requests with a shorter context "
                              "read the exact KV through the wrapped backend.")
    stats_path: Path | None = Field(None, description="Shared counters file the server reads.")

    def to_env(self) -> None:
        os.environ[ENV_VAR] = self.model_dump_json()

    @staticmethod
    def clear_env() -> None:
        os.environ.pop(ENV_VAR, None)

    @classmethod
    def from_env(cls) -> PluginConfig | None:
        raw = os.environ.get(ENV_VAR)
        return cls.model_validate_json(raw) if raw else None
