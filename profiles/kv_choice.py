"""Per-head decode-time KV policy from measured statistics (the profiler's KV half).

For every layer and calibration prompt, the closing question's last rows play the decode
queries (a prompt's answer is decoded right after them): each query head gets the decode
recall of the ShadowKV selection, of the NOSA locality-constrained selection over those
consecutive rows and of sinks + window (:mod:`profiles.kv_stats`); the layer gets the relative
error of its pre-RoPE keys at the ShadowKV rank. Statistics aggregate conservatively over
prompts and lengths (minimum recall, maximum error) and :func:`profiles.kv_stats.choose_kv_policy`
turns them into one policy per head (``full`` for retrieval heads whose mass the budget misses).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attention_backends import PatternParams
from kvcache.params import NosaKvParams, ShadowKvParams, StreamingKvParams

from .kv_stats import (
    TARGET_DECODE_RECALL,
    choose_kv_policy,
    layer_lowrank_error,
    nosa_decode_recall,
    shadowkv_decode_recall,
    streaming_decode_recall,
)
from .schema import KvChoice

DECODE_ROWS = 32
"""Question rows per prompt used as decode queries (the last ones, consecutive)."""


@dataclass(frozen=True)
class KvLayerStats:
    """Decode statistics of one layer: ``lowrank_error`` (layer), recalls ``float32 [Hq]`` per query head."""

    rank: int
    lowrank_error: float
    shadowkv: torch.Tensor
    nosa: torch.Tensor
    streaming: torch.Tensor

    def merge(self, other: KvLayerStats | None) -> KvLayerStats:
        """The worse of two measurements (other prompts or lengths), head by head."""
        if other is None:
            return self
        if other.rank != self.rank:
            raise ValueError(f"cannot merge statistics at ranks {self.rank} and {other.rank}")
        return KvLayerStats(
            rank=self.rank,
            lowrank_error=max(self.lowrank_error, other.lowrank_error),
            shadowkv=torch.minimum(self.shadowkv, other.shadowkv),
            nosa=torch.minimum(self.nosa, other.nosa),
            streaming=torch.minimum(self.streaming, other.streaming),
        )


def decode_rows(question_rows: torch.Tensor, count: int = DECODE_ROWS) -> torch.Tensor:
    """The last ``count`` rows of a prompt's closing question (ascending), ``int64 [min(count, R)]``."""
    if question_rows.numel() == 0:
        raise ValueError("the prompt has no question rows")
    return question_rows.sort().values[-count:]


@torch.no_grad()
def score_kv_layer(
    q: torch.Tensor,
    k: torch.Tensor,
    k_pre_rope: torch.Tensor,
    rows: torch.Tensor,
    *,
    shadowkv: ShadowKvParams | None = None,
    nosa: NosaKvParams | None = None,
    streaming: StreamingKvParams | None = None,
    scale: float | None = None,
) -> KvLayerStats:
    """Decode statistics of one layer on one prompt: ``q [Hq, N, D]``, ``k, k_pre_rope [Hkv, N, D]``, ``rows int64 [R]``."""
    shadowkv, nosa, streaming = shadowkv or ShadowKvParams(), nosa or NosaKvParams(), streaming or StreamingKvParams()
    rank = min(shadowkv.rank, k_pre_rope.shape[0] * k_pre_rope.shape[2])
    return KvLayerStats(
        rank=rank,
        lowrank_error=layer_lowrank_error(k_pre_rope, rank),
        shadowkv=shadowkv_decode_recall(q, k, rows, shadowkv, scale),
        nosa=nosa_decode_recall(q, k, rows, nosa, scale),
        streaming=streaming_decode_recall(q, k, rows, streaming, scale),
    )


def choose_kv(prefill: list[PatternParams], stats: KvLayerStats, target_recall: float = TARGET_DECODE_RECALL) -> list[KvChoice]:
    """One KV policy per query head of a layer, from its prefill pattern and the layer's statistics."""
    if len(prefill) != stats.shadowkv.numel():
        raise ValueError(f"{len(prefill)} heads' patterns for statistics of {stats.shadowkv.numel()} heads")
    return [
        choose_kv_policy(
            params,
            stats.lowrank_error,
            float(stats.shadowkv[h]),
            streaming_recall=float(stats.streaming[h]),
            nosa_recall=float(stats.nosa[h]),
            target_recall=target_recall,
            rank=stats.rank,
        )
        for h, params in enumerate(prefill)
    ]
