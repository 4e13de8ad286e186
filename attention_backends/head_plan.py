"""From a per-head profile to the head groups one attention layer runs (MoA / DuoAttention style).

A profile names a prefill pattern for every (layer, query head) of the model. A layer of the
engine sees only its tensor-parallel rank's slice of the query heads (vLLM shards attention by
heads: rank ``r`` of ``T`` owns global query heads ``[r * Hq / T, (r + 1) * Hq / T)``), and runs
each distinct pattern once over the heads that share it. This module does that mapping; it is
pure (no vLLM import), so it is unit-tested without an engine.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from profiles.schema import Profile

from .patterns import PatternParams
from .segment import HeadGroup


def rank_query_heads(num_q_heads: int, tp_size: int, tp_rank: int) -> range:
    """Global query heads owned by ``tp_rank`` of ``tp_size`` (vLLM's contiguous head sharding)."""
    if tp_size < 1 or not 0 <= tp_rank < tp_size:
        raise ValueError(f"tensor-parallel rank {tp_rank} of {tp_size} is not valid")
    if num_q_heads % tp_size:
        raise ValueError(f"{num_q_heads} query heads cannot be split over {tp_size} tensor-parallel ranks")
    per_rank = num_q_heads // tp_size
    return range(tp_rank * per_rank, (tp_rank + 1) * per_rank)


def layer_groups(patterns: list[PatternParams]) -> list[HeadGroup]:
    """Group local heads ``0..len(patterns)-1`` by identical parameters (first-seen order)."""
    grouped: dict[PatternParams, list[int]] = {}
    for head, params in enumerate(patterns):
        grouped.setdefault(params, []).append(head)
    return [HeadGroup(params=params, heads=tuple(heads)) for params, heads in grouped.items()]


@dataclass(frozen=True)
class HeadPlan:
    """Head groups of every layer for one tensor-parallel rank."""

    layers: tuple[tuple[HeadGroup, ...], ...]
    global_heads: range

    @classmethod
    def from_profile(cls, profile: Profile, tp_size: int = 1, tp_rank: int = 0) -> HeadPlan:
        heads = rank_query_heads(profile.model.num_q_heads, tp_size, tp_rank)
        layers = tuple(
            tuple(layer_groups([layer.heads[h].prefill for h in heads])) for layer in profile.layers
        )
        return cls(layers=layers, global_heads=heads)

    def groups(self, layer: int) -> tuple[HeadGroup, ...]:
        if not 0 <= layer < len(self.layers):
            raise ValueError(f"layer {layer} is not in the profile (it has {len(self.layers)} layers)")
        return self.layers[layer]


def pattern_counts(profile: Profile) -> dict[str, int]:
    """How many (layer, head) pairs use each prefill pattern, e.g. ``{"vertical_slash": 127, ...}``."""
    counts = Counter(head.prefill.pattern.value for layer in profile.layers for head in layer.heads)
    return dict(sorted(counts.items()))
