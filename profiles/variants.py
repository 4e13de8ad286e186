"""Derived profiles: the same heads and patterns with budgets that keep every causal pair.

A full-budget profile makes every sparse pattern exact (its index covers every causal pair)
while still running the whole sparse path: index estimation, the sparse executor, head
grouping, paged KV reads and chunk boundaries. Serving it must reproduce dense outputs, which
is how the engine integration is tested.
"""

from __future__ import annotations

from attention_backends.patterns import (
    AShapeParams,
    BlockSparseParams,
    DenseParams,
    FlexPrefillParams,
    PatternParams,
    VerticalSlashParams,
)

from .schema import Profile

EVERYTHING = 1 << 24
"""A budget larger than any context we serve (16M tokens)."""


def full_budget_params(params: PatternParams) -> PatternParams:
    """The same pattern with budgets that cover every causal pair."""
    if isinstance(params, AShapeParams):
        return params.model_copy(update={"n_local": EVERYTHING})
    if isinstance(params, VerticalSlashParams):
        return params.model_copy(update={"n_vertical": EVERYTHING, "n_slash": EVERYTHING})
    if isinstance(params, BlockSparseParams):
        return params.model_copy(update={"top_k": EVERYTHING})
    if isinstance(params, FlexPrefillParams):
        return params.model_copy(update={"gamma": 1.0, "min_budget": EVERYTHING})
    if isinstance(params, DenseParams):
        return params
    raise TypeError(f"unknown pattern parameters {type(params).__name__}")


def full_budget(profile: Profile) -> Profile:
    """``profile`` with every head's prefill budget made exhaustive (same patterns)."""
    layers = [
        layer.model_copy(update={"heads": [h.model_copy(update={"prefill": full_budget_params(h.prefill)})
                                           for h in layer.heads]})
        for layer in profile.layers
    ]
    return profile.model_copy(update={"layers": layers})
