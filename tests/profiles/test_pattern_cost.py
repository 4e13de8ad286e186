"""profiles.pattern_cost: per-pair cost of each pattern class relative to a dense head, as the engine runs them."""

from __future__ import annotations

import math

import torch

from attention_backends import AShapeParams, BlockSparseParams, VerticalSlashParams
from profiles.pattern_cost import measure_pattern_costs


def test_costs_per_pattern_class_are_positive_ratios() -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(h, 1024, 64, generator=g) for h in (3, 1, 1))
    candidates = [AShapeParams(n_init=64, n_local=128), AShapeParams(n_init=64, n_local=256),
                  BlockSparseParams(top_k=2), VerticalSlashParams(n_vertical=64, n_slash=64)]
    costs = measure_pattern_costs(q, k, v, candidates, repeats=1)
    assert set(costs) == {"a_shape", "block_sparse", "vertical_slash"}
    assert all(math.isfinite(c) and c > 0 for c in costs.values())
