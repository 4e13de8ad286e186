"""Chunk landmarks are chunk means; outliers are the chunks whose keys disagree with their landmark."""

from __future__ import annotations

import torch

from kvcache.landmarks import chunk_landmarks, chunk_positions, chunk_self_similarity, outlier_chunks


def test_landmarks_are_means_of_complete_chunks() -> None:
    torch.manual_seed(0)
    k = torch.randn(2, 29, 4)
    marks = chunk_landmarks(k, chunk=8)
    assert marks.shape == (2, 3, 4)
    torch.testing.assert_close(marks[1, 2], k[1, 16:24].mean(0))
    assert chunk_landmarks(k[:, :5], chunk=8).shape == (2, 0, 4)


def test_outliers_are_the_least_self_similar_chunks() -> None:
    torch.manual_seed(1)
    hkv, c, chunk, d = 2, 10, 8, 16
    direction = torch.randn(hkv, c, 1, d)
    k = (direction + 0.05 * torch.randn(hkv, c, chunk, d))
    # planted outliers: keys pointing in random directions
    planted = {0: [3, 7], 1: [0, 9]}
    for h, ids in planted.items():
        for i in ids:
            k[h, i] = torch.randn(chunk, d)
    k = k.reshape(hkv, c * chunk, d)
    sim = chunk_self_similarity(k, chunk)
    assert sim.shape == (hkv, c) and float(sim.max()) <= 1.0 + 1e-6
    ids = outlier_chunks(k, 2, chunk)
    assert ids.tolist() == [planted[0], planted[1]]
    assert outlier_chunks(k, 1, chunk, exclude_from=5).tolist() == [[3], [0]]
    assert outlier_chunks(k, 50, chunk).shape == (hkv, c)
    # identical keys in a chunk: similarity exactly 1
    same = torch.ones(1, 8, 4)
    assert float(chunk_self_similarity(same, 8)) == 1.0


def test_chunk_positions() -> None:
    assert chunk_positions(torch.tensor([[2, 0]]), 4).tolist() == [[8, 9, 10, 11, 0, 1, 2, 3]]
