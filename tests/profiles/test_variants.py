"""Full-budget profiles keep every head's pattern and make its index exhaustive."""

from __future__ import annotations

import torch

from attention_backends import estimate_index
from attention_backends.patterns import DenseParams
from profiles.schema import KvChoice, load_profile, parse_profile
from profiles.variants import exact_kv, full_budget, with_kv
from server.sparse_setup import RECALL_PROFILES_DIR, SHIPPED_PROFILE

ALL_PATTERNS = RECALL_PROFILES_DIR / SHIPPED_PROFILE.name  # heads of every pattern kind


def test_full_budget_keeps_patterns_and_covers_every_pair() -> None:
    shipped = load_profile(ALL_PATTERNS)
    full = full_budget(shipped)
    parse_profile(full.model_dump(mode="json"), "full-budget")  # still a valid profile
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 300, 64, generator=g), torch.randn(1, 300, 64, generator=g)
    seen = set()
    for old_layer, new_layer in zip(shipped.layers, full.layers):
        for old, new in zip(old_layer.heads, new_layer.heads):
            assert old.prefill.pattern == new.prefill.pattern
            if new.prefill.pattern in seen or isinstance(new.prefill, DenseParams):
                continue
            seen.add(new.prefill.pattern)
            index = estimate_index(q, k, new.prefill)
            assert index.density() == 1.0, new.prefill
    assert len(seen) >= 3


def test_exact_kv_cycles_policies_over_layers_and_keeps_prefill() -> None:
    shipped = load_profile(SHIPPED_PROFILE)
    mixed = exact_kv(shipped, "shadowkv", "nosa")
    parse_profile(mixed.model_dump(mode="json"), "exact-kv")
    for i, (old_layer, new_layer) in enumerate(zip(shipped.layers, mixed.layers)):
        for old, new in zip(old_layer.heads, new_layer.heads):
            assert new.prefill == old.prefill
            assert new.kv.policy == ("shadowkv", "nosa")[i % 2]
            assert new.kv.params["rank"] >= 1 << 24 and new.kv.params["budget"] >= 1 << 24
    streaming = with_kv(shipped, KvChoice(policy="streaming"))
    assert {h.kv.policy for layer in streaming.layers for h in layer.heads} == {"streaming"}
