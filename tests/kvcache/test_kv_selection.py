"""Decode selection: budgets are respected exactly, always-kept positions are in, the best chunks win."""

from __future__ import annotations

import pytest
import torch

from kvcache.landmarks import chunk_landmarks, outlier_chunks
from kvcache.selection import (always_mask, best_allowed, chunk_scores, local_start, select_positions,
                              take_chunks_within)

HQ, HKV, D, CHUNK = 6, 2, 16, 8


def test_local_start_is_chunk_aligned_and_covers_n_local() -> None:
    for n in range(0, 100):
        s = local_start(n, 20, CHUNK)
        assert s % CHUNK == 0 and n - s >= min(20, n) and (s == 0 or n - s < 20 + CHUNK)


@pytest.mark.parametrize("seq_len", [100, 333, 1000])
@pytest.mark.parametrize("budget", [120, 200, 257])
def test_budget_is_respected_and_nearly_filled(seq_len: int, budget: int) -> None:
    g = torch.Generator().manual_seed(seq_len + budget)
    k = torch.randn(HKV, seq_len, D, generator=g)
    q = torch.randn(HQ, D, generator=g)
    outliers = outlier_chunks(k, 3, CHUNK, exclude_from=local_start(seq_len, 32, CHUNK) // CHUNK)
    marks = chunk_landmarks(k, CHUNK)
    sel = select_positions(q, marks, seq_len, chunk=CHUNK, budget=budget, n_sink=4, n_local=32, outliers=outliers)
    counts = sel.counts()
    assert bool((counts <= budget).all())
    if seq_len > budget:
        assert bool((counts > budget - CHUNK).all())
    else:
        assert bool((counts == seq_len).all())
    keep = always_mask(HKV, seq_len, n_sink=4, n_local=32, chunk=CHUNK, outliers=outliers)
    assert bool((sel.mask | ~keep).all())  # always-kept positions are selected
    for h, pos in enumerate(sel.positions_list()):
        assert torch.equal(pos, pos.unique()) and pos.numel() == int(counts[h])
        assert pos[:4].tolist() == [0, 1, 2, 3] and int(pos[-1]) == seq_len - 1


def test_the_highest_scoring_chunks_are_taken() -> None:
    g = torch.Generator().manual_seed(5)
    n = 256
    k = 0.1 * torch.randn(HKV, n, D, generator=g)
    q = torch.randn(HQ, D, generator=g)
    # plant keys aligned with query head 1 (KV head 0) in chunk 11, and with head 5 (KV head 1) in chunk 20
    k[0, 88:96] = 3 * q[1]
    k[1, 160:168] = 3 * q[5]
    marks = chunk_landmarks(k, CHUNK)
    scores = chunk_scores(q, marks)
    assert int(scores[0].argmax()) == 11 and int(scores[1].argmax()) == 20
    assert scores.shape == (HKV, n // CHUNK) and float(scores.max()) <= 1.0
    sel = select_positions(q, marks, n, chunk=CHUNK, budget=4 + 16 + CHUNK, n_sink=4, n_local=16)
    assert sel.chunk_mask.sum(1).tolist() == [1, 1]
    assert sel.positions(0).tolist() == [0, 1, 2, 3, *range(88, 96), *range(240, 256)]
    assert sel.positions(1).tolist() == [0, 1, 2, 3, *range(160, 168), *range(240, 256)]


def test_gqa_max_aggregation() -> None:
    marks = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]])  # 1 KV head, 3 chunks
    q = torch.tensor([[10.0, 0.0], [0.0, 10.0]])  # 2 query heads, each prefers another chunk
    s = chunk_scores(q, marks, scale=1.0)
    assert s[0, 0] == pytest.approx(s[0, 1]) and float(s[0, 2]) < 1e-4 and float(s[0, 0]) > 0.99


def test_budget_smaller_than_kept_positions_is_rejected() -> None:
    k = torch.randn(HKV, 200, D)
    with pytest.raises(ValueError):
        select_positions(torch.randn(HQ, D), chunk_landmarks(k), 200, budget=50, n_sink=4, n_local=64)


def _sorted_prefix_reference(scores: torch.Tensor, counts: torch.Tensor, room: torch.Tensor) -> torch.Tensor:
    """The definition, with a full sort: take chunks in score order while their counts fit."""
    out = torch.zeros_like(scores, dtype=torch.bool)
    for h in range(scores.shape[0]):
        used = 0
        for j in scores[h].argsort(descending=True).tolist():
            if used + int(counts[h, j]) > int(room[h]):
                break
            used += int(counts[h, j])
            out[h, j] = bool(counts[h, j] > 0)
    return out


@pytest.mark.parametrize("seed", range(6))
def test_partial_sort_selection_equals_the_full_sort(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(3, 500, generator=g)  # distinct scores: no ties to break
    counts = torch.full((3, 500), 8)
    counts[:, :1] = 4  # a chunk half covered by sinks
    counts.view(-1)[torch.randperm(1500, generator=g)[:30]] = 0  # outlier chunks: nothing new
    counts.view(-1)[torch.randperm(1500, generator=g)[:20]] = 3
    room = torch.tensor([0, 700, 5000]) if seed % 2 else torch.tensor([1900, 37, 4096])
    assert torch.equal(take_chunks_within(scores, counts, room), _sorted_prefix_reference(scores, counts, room))
    allowed = torch.rand(3, 500, generator=g) > 0.3
    limit = torch.tensor([0, 50, 600])
    got = best_allowed(scores, allowed, limit)
    assert got.sum(1).tolist() == [0, 50, int(allowed[2].sum())]
    for h in (1, 2):  # every taken entry outscores every allowed entry left out
        assert got[h].le(allowed[h]).all()
        left = allowed[h] & ~got[h]
        assert not left.any() or scores[h][got[h]].min() > scores[h][left].max()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_int8_landmarks_keep_the_recall_of_float32_ones(seed: int) -> None:
    """The stores keep landmarks in int8 (kvcache.landmarks.Int8Landmarks): same budget, same recall within 0.01."""
    from kvcache.decode_attention import decode_recall
    from kvcache.landmarks import Int8Landmarks

    g = torch.Generator().manual_seed(seed)
    n, d = 4096, 64
    k = torch.randn(HKV, n, d, generator=g) + 2.0 * torch.randn(HKV, 1, d, generator=g)  # a shared direction, as real keys
    q = torch.randn(HQ, d, generator=g)
    hot = torch.randint(0, n // CHUNK - 64, (HKV, 24), generator=g)  # chunks the query attends to
    for h in range(HKV):
        for c in hot[h].tolist():
            k[h, c * CHUNK:(c + 1) * CHUNK] += 0.6 * q[h * (HQ // HKV)] / q[h * (HQ // HKV)].norm() * d ** 0.5
    marks = chunk_landmarks(k, CHUNK)
    recalls = []
    for m in (marks, Int8Landmarks.of(marks)):
        sel = select_positions(q, m, n, chunk=CHUNK, budget=512, n_sink=4, n_local=64, outliers=None)
        recalls.append(decode_recall(q, k, sel.mask))
    f32, int8 = recalls
    assert float(f32.mean()) > 0.3  # the structure is there to be found
    assert float((f32 - int8).abs().max()) < 0.01
