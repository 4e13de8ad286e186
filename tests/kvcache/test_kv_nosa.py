"""NOSA-style selection: bounded change between steps, budget held, and a better resident-cache hit rate than top-k."""

from __future__ import annotations

import pytest
import torch

from kvcache.nosa import ResidentCache, chunk_keys, constrained_chunks, nosa_select_positions
from kvcache.selection import select_positions
from kvcache.streaming import streaming_mask, streaming_positions

HQ, HKV, D, N = 4, 2, 16, 2048
BUDGET = 4 + 64 + 8 * 24


def _drifting_queries(steps: int, drift: float, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(HQ, D, generator=g)
    out = []
    for _ in range(steps):
        q = q + drift * torch.randn(HQ, D, generator=g)
        q = q / q.norm(dim=1, keepdim=True) * 8
        out.append(q)
    return out


def _landmarks() -> torch.Tensor:
    return torch.randn(HKV, N // 8, D, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("max_change", [0, 1, 3])
def test_locality_constraint_and_budget_hold_over_random_queries(max_change: int) -> None:
    marks = _landmarks()
    g = torch.Generator().manual_seed(max_change)
    prev = None
    for step in range(40):
        q = torch.randn(HQ, D, generator=g) * 3  # unrelated queries: the constraint does all the work
        sel = nosa_select_positions(q, marks, N, prev, budget=BUDGET, max_change=max_change)
        assert bool((sel.counts() <= BUDGET).all())
        if prev is None:
            assert sel.chunk_mask.sum(1).tolist() == [24, 24]
        else:
            assert int((sel.chunk_mask & ~prev).sum(1).max()) <= max_change
            assert sel.chunk_mask.sum(1).tolist() == [24, 24]  # the set stays full: kept + admitted
        prev = sel.chunk_mask


def test_constrained_chunks_keeps_best_of_previous_and_admits_best_new() -> None:
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.1, 0.2, 0.05]])
    eligible = torch.ones(1, 6, dtype=torch.bool)
    previous = torch.tensor([[False, False, False, True, True, True]])
    got = constrained_chunks(scores, eligible, 3, previous, max_change=1)
    assert got.tolist() == [[True, False, False, True, True, False]]
    assert constrained_chunks(scores, eligible, 3, None, 1).tolist() == [[True, True, True, False, False, False]]
    # chunks completed since the previous step are new: previous may be shorter
    got = constrained_chunks(scores, eligible, 2, previous[:, :5], max_change=0)
    assert got.tolist() == [[False, False, False, True, True, False]]


def test_nosa_hit_rate_beats_unconstrained_topk_on_drifting_queries() -> None:
    marks = _landmarks()
    capacity = HKV * 32
    rates = {}
    for name in ("topk", "nosa"):
        cache, prev = ResidentCache(capacity, bytes_per_chunk=8 * D * 4), None
        for q in _drifting_queries(80, drift=0.6):
            if name == "nosa":
                sel = nosa_select_positions(q, marks, N, prev, budget=BUDGET, max_change=2)
            else:
                sel = select_positions(q, marks, N, budget=BUDGET)
            prev = sel.chunk_mask
            step = cache.step(chunk_keys(sel.chunk_mask))
            assert step.bytes_moved == step.misses * 8 * D * 4
        rates[name] = (cache.hit_rate, cache.bytes_per_step())
    assert rates["nosa"][0] > rates["topk"][0] + 0.05
    assert rates["nosa"][1] < rates["topk"][1]
    # with at most 2 admissions per head per step, misses are bounded after the first step
    assert rates["nosa"][0] >= 1 - (HKV * 24 + 79 * HKV * 2) / (80 * HKV * 24)


def test_resident_cache_lru() -> None:
    cache = ResidentCache(3, bytes_per_chunk=10)
    assert cache.step(["a", "b", "c"]).misses == 3
    s = cache.step(["a", "d"])  # b is the LRU and is evicted
    assert (s.hits, s.misses, s.bytes_moved) == (1, 1, 10)
    assert "b" not in cache and "a" in cache and len(cache) == 3
    assert cache.hit_rate == pytest.approx(1 / 5) and cache.bytes_moved == 40 and cache.bytes_per_step() == 20


def test_streaming_positions() -> None:
    assert streaming_positions(20, 4, 6).tolist() == [0, 1, 2, 3, 14, 15, 16, 17, 18, 19]
    assert streaming_positions(8, 4, 6).tolist() == list(range(8))
    assert streaming_positions(0, 4, 6).numel() == 0
    m = streaming_mask(2, 3000, 4, 1024)
    assert m.sum(1).tolist() == [1028, 1028] and bool(m[:, -1].all()) and not bool(m[:, 4].any())
