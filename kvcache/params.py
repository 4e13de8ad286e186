"""Per-head decode-time KV policies and their parameters (pydantic models).

* ``full``: exact KV in the engine's pool (e.g. retrieval heads).
* ``streaming``: attention sinks + local window only (StreamingLLM; A-shape heads).
* ``shadowkv``: low-rank pre-RoPE keys, chunk landmarks, outlier chunks, sinks and window in the
  pool, values offloaded; sparse decode under a token budget (ShadowKV, Sun et al. 2024).
* ``nosa``: ``shadowkv`` with a locality constraint on the selected chunks and a resident chunk
  cache on the fast tier (NOSA-style). With ``offload_keys`` (the default) the exact post-RoPE
  keys go to the offload tier next to the values (NOSA offloads whole KV) instead of a low-rank
  fit in the pool: no key error, no factors or pending keys in the pool; a miss moves keys and
  values. ``offload_keys=false`` keeps ShadowKV's low-rank keys.

Every model carries a ``policy`` discriminator, so one JSON object names a policy and its
budgets (see :data:`KvPolicyParams`). Defaults: chunk 8 and budget 2048 as ShadowKV; 4 sinks
(StreamingLLM); a 64-token local window; 8 outlier chunks; rank 32 of the layer's concatenated
key width (``Hkv * D`` = 192 for SmolLM2-135M: ShadowKV's 160/1024 ratio); a refit of the keys
every 1024 decoded tokens (bounds the exact keys kept in the pool).
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator


class _KvParams(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FullKvParams(_KvParams):
    """Exact KV, nothing compressed or offloaded."""

    policy: Literal["full"] = "full"


class StreamingKvParams(_KvParams):
    """Sinks + the last ``n_local`` tokens; everything else is dropped."""

    policy: Literal["streaming"] = "streaming"
    n_sink: int = Field(4, ge=0, description="Attention-sink tokens kept at the start.")
    n_local: int = Field(1024, gt=0, description="Most recent tokens kept.")


class ShadowKvParams(_KvParams):
    """Low-rank keys + landmarks on the fast tier, values offloaded, top chunks within ``budget`` per decode step."""

    policy: Literal["shadowkv"] = "shadowkv"
    rank: int = Field(32, gt=0, description="Rank of the per-layer pre-RoPE key factorization (of Hkv * head_dim).")
    chunk: int = Field(8, gt=0, description="Tokens per chunk (one landmark each).")
    budget: int = Field(2048, gt=0, description="Positions read per KV head and decode step, always-kept ones included.")
    n_sink: int = Field(4, ge=0, description="Attention-sink tokens kept exactly.")
    n_local: int = Field(64, ge=0, description="Minimum local window kept exactly (chunk-aligned start).")
    n_outlier_chunks: int = Field(8, ge=0, description="Least self-similar chunks per KV head kept exactly.")
    refit_every: int = Field(1024, ge=0, description="Refit the low-rank keys once this many decoded tokens have "
                             "left the window (their exact pre-RoPE keys wait in the pool until then); 0: never.")

    def max_always_kept(self) -> int:
        """Upper bound of the positions read whatever the query (sinks, window, outliers)."""
        return self.n_sink + self.n_local + self.chunk - 1 + self.n_outlier_chunks * self.chunk

    @model_validator(mode="after")
    def _budget_covers_kept(self) -> ShadowKvParams:
        if self.budget < self.max_always_kept() + self.chunk:
            raise ValueError(
                f"budget {self.budget} leaves no room for one chunk after sinks, window and outliers "
                f"(up to {self.max_always_kept()} positions)"
            )
        return self


class NosaKvParams(ShadowKvParams):
    """``shadowkv`` with at most ``max_change`` newly selected chunks per step and an LRU resident chunk cache."""

    policy: Literal["nosa"] = "nosa"  # type: ignore[assignment]
    max_change: int = Field(8, ge=0, description="Chunks per KV head admitted that were not selected at the previous step.")
    resident_chunks: int = Field(384, gt=0, description="Resident chunk cache capacity per KV head (fast tier).")
    resident_keys: bool = Field(True, description="Resident chunks also keep their rebuilt post-RoPE keys, so a hit "
                                "skips the low-rank rebuild (doubles the resident tier's bytes).")
    offload_keys: bool = Field(True, description="Exact post-RoPE keys on the offload tier with the values (no "
                               "low-rank fit: rank and refit_every are unused); needs resident_keys.")

    @model_validator(mode="after")
    def _offload_keys_need_resident_keys(self) -> NosaKvParams:
        if self.offload_keys and not self.resident_keys:
            raise ValueError("offload_keys needs resident_keys (resident hits would otherwise read keys from the "
                             "offload tier)")
        return self


def low_rank_keys(params: _KvParams) -> bool:
    """Whether a store of ``params`` keeps its compressed keys as a low-rank fit of the pre-RoPE keys."""
    return isinstance(params, ShadowKvParams) and not (isinstance(params, NosaKvParams) and params.offload_keys)


KvPolicyParams = Annotated[
    Union[FullKvParams, StreamingKvParams, ShadowKvParams, NosaKvParams],
    Field(discriminator="policy"),
]
"""Any KV policy's parameters, discriminated by ``policy``."""

_ADAPTER: TypeAdapter = TypeAdapter(KvPolicyParams)


def parse_kv_params(data: object) -> FullKvParams | StreamingKvParams | ShadowKvParams | NosaKvParams:
    """Validate a dict (or JSON-like object) naming a ``policy`` and its parameters."""
    return _ADAPTER.validate_python(data)
