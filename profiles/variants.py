"""Derived profiles: the same heads and patterns with budgets that keep every causal pair.

A full-budget profile makes every sparse pattern exact (its index covers every causal pair)
while still running the whole sparse path: index estimation, the sparse executor, head
grouping, paged KV reads and chunk boundaries. Serving it must reproduce dense outputs, which
is how the engine integration is tested.
"""

from __future__ import annotations

from collections.abc import Callable

from attention_backends.patterns import (
    AShapeParams,
    BlockSparseParams,
    DenseParams,
    FlexPrefillParams,
    PatternParams,
    VerticalSlashParams,
)

from .schema import HeadProfile, KvChoice, ModelFingerprint, Profile

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


def _map_heads(profile: Profile, update: Callable[[int, HeadProfile], dict[str, object]]) -> Profile:
    """``profile`` with head ``h`` of layer ``i`` updated by the fields ``update(i, h)`` returns."""
    layers = [
        layer.model_copy(update={"heads": [h.model_copy(update=update(i, h)) for h in layer.heads]})
        for i, layer in enumerate(profile.layers)
    ]
    return profile.model_copy(update={"layers": layers})


def full_budget(profile: Profile) -> Profile:
    """``profile`` with every head's prefill budget made exhaustive (same patterns)."""
    return _map_heads(profile, lambda _, h: {"prefill": full_budget_params(h.prefill)})


def with_kv(profile: Profile, choice: KvChoice) -> Profile:
    """``profile`` with every head's KV policy replaced by ``choice`` (same prefill patterns)."""
    return _map_heads(profile, lambda *_: {"kv": choice})


def exact_kv(profile: Profile, policy: str = "shadowkv", *others: str) -> Profile:
    """``profile`` with every head's KV policy set to ``policy`` at full rank and a budget covering any context.

    With ``others``, layer ``i`` takes ``(policy, *others)[i % (1 + len(others))]``. The compressed
    decode path then runs whole (low-rank fit or offloaded keys, landmarks, selection, offload
    reads) yet keeps every position and reconstructs keys to float round-off: serving it must
    reproduce dense greedy outputs, which is how the engine's KV integration is tested.
    """
    exact = {"rank": float(EVERYTHING), "budget": float(EVERYTHING)}
    choices = [KvChoice(policy=p, params=exact) for p in (policy, *others)]
    return _map_heads(profile, lambda i, _: {"kv": choices[i % len(choices)]})


def transfer(profile: Profile, model: ModelFingerprint) -> Profile:
    """``profile``'s heads re-bound to ``model``'s fingerprint (same layer and head counts only).

    For the same weights served differently (e.g. YaRN-extended RoPE): the heads keep the
    patterns calibrated on the original, which is an approximation that callers must state.
    """
    old = profile.model
    shape = ("num_layers", "num_q_heads", "num_kv_heads", "head_dim")
    if any(getattr(old, f) != getattr(model, f) for f in shape):
        raise ValueError(f"cannot transfer a profile between models of different shapes ({old} vs {model})")
    return profile.model_copy(update={"model": model})
