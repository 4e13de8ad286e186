"""NOSA-style selection: bounded change between steps, budget held, and a better resident-cache hit rate than top-k."""

from __future__ import annotations

import pytest
import torch

from kvcache.nosa import constrained_chunks, nosa_select_positions
from kvcache.resident import ResidentChunks
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
    rates = {}
    for name in ("topk", "nosa"):
        cache, prev = ResidentChunks(HKV, 32, bytes_per_chunk=8 * D * 4), None
        for q in _drifting_queries(80, drift=0.6):
            if name == "nosa":
                sel = nosa_select_positions(q, marks, N, prev, budget=BUDGET, max_change=2)
            else:
                sel = select_positions(q, marks, N, budget=BUDGET)
            prev = sel.chunk_mask
            step = cache.step(sel.chunk_mask)
            assert step.bytes_moved == step.misses * 8 * D * 4
        rates[name] = (cache.hit_rate, cache.bytes_per_step())
    assert rates["nosa"][0] > rates["topk"][0] + 0.05
    assert rates["nosa"][1] < rates["topk"][1]
    # with at most 2 admissions per head per step, misses are bounded after the first step
    assert rates["nosa"][0] >= 1 - (HKV * 24 + 79 * HKV * 2) / (80 * HKV * 24)


def test_resident_chunks_lru_per_head() -> None:
    cache = ResidentChunks(2, 3, bytes_per_chunk=10)

    def mask(*rows: list[int], c: int = 6) -> torch.Tensor:
        m = torch.zeros(2, c, dtype=torch.bool)
        for h, chunks in enumerate(rows):
            m[h, chunks] = True
        return m

    first = cache.step(mask([0, 1, 2], [5]))
    assert (first.hits, first.misses, first.bytes_moved) == (0, 4, 40)
    assert sorted(first.fill_slots[first.fill_heads == 0].tolist()) == [0, 1, 2]  # three distinct slots
    s = cache.step(mask([0, 3], [5]))  # head 0: chunk 1 is the LRU slot (0 was just used), 3 takes it
    assert (s.hits, s.misses) == (2, 1) and s.fill_chunks.tolist() == [3] and s.fill_heads.tolist() == [0]
    slots = cache.slots(torch.tensor([0, 0, 0, 0, 1]), torch.tensor([0, 1, 2, 3, 5]))
    assert slots[1] == -1 and set(slots[[0, 2, 3]].tolist()) == {0, 1, 2} and slots[4] >= 0
    assert cache.hit_rate == pytest.approx(2 / 7) and cache.bytes_per_step() == pytest.approx(25.0)
    over = cache.step(mask([0, 1, 2, 3, 4], []))  # 5 chunks, 3 slots: 2 read uncached, 3 resident
    assert over.misses == 2 + 0 and over.hits == 3 and over.fill_heads.numel() == 0
    cache.clear()
    assert cache.step(mask([0], [0])).misses == 2


def test_streaming_positions() -> None:
    assert streaming_positions(20, 4, 6).tolist() == [0, 1, 2, 3, 14, 15, 16, 17, 18, 19]
    assert streaming_positions(8, 4, 6).tolist() == list(range(8))
    assert streaming_positions(0, 4, 6).numel() == 0
    m = streaming_mask(2, 3000, 4, 1024)
    assert m.sum(1).tolist() == [1028, 1028] and bool(m[:, -1].all()) and not bool(m[:, 4].any())
