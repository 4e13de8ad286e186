"""Chunk landmarks are chunk means; outliers are the chunks whose keys disagree with their landmark."""

from __future__ import annotations

import torch

import pytest

from kvcache.landmarks import (LANDMARK_LEVELS, QUERY_LEVELS, Int8Landmarks, chunk_landmarks, chunk_positions,
                               chunk_self_similarity, outlier_chunks, quantize_queries)


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


def test_int8_landmarks_round_trip_within_half_a_step() -> None:
    """Each landmark keeps its own scale: every dim within scale / 2, the largest one exact, zero rows zero."""
    x = torch.randn(3, 50, 64) * torch.logspace(-3, 2, 50).reshape(1, 50, 1)  # magnitudes over five decades
    x[1, 7] = 0
    m = Int8Landmarks.of(x)
    assert m.values.dtype == torch.int8 and m.scale.dtype == torch.float32 and m.shape == (3, 50, 64)
    assert int(m.values.abs().max()) == LANDMARK_LEVELS and m.scale[1, 7] == 0 and not m.values[1, 7].any()
    err = (m.dequantized() - x).abs()
    assert bool((err <= m.scale.unsqueeze(-1) / 2 * (1 + 1e-6)).all())
    assert torch.equal(m.prefix(20).values, m.values[:, :20]) and torch.equal(m.prefix(20).scale, m.scale[:, :20])
    with pytest.raises(ValueError, match="kv_heads, chunks, head_dim"):
        Int8Landmarks.of(torch.randn(50, 64))


def test_quantized_queries_are_int16_values_with_one_scale() -> None:
    q = torch.randn(4, 64) * 3
    q[2] = 0
    ints, scale = quantize_queries(q)
    assert torch.equal(ints, ints.round()) and int(ints.abs().max()) == QUERY_LEVELS
    assert scale[2] == 0 and not ints[2].any()
    torch.testing.assert_close(ints * scale.unsqueeze(-1), q, atol=float(scale.max()) / 2 * 1.001, rtol=0)


def test_int8_logits_are_exact_integer_dots_close_to_float_ones() -> None:
    """The logits are ((dot(q16, values) * q_scale) * landmark_scale) * scale, and near the float scores."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 40, 64, generator=g) + torch.randn(3, 1, 64, generator=g)
    qg = torch.randn(3, 3, 64, generator=g)
    m = Int8Landmarks.of(x)
    got = m.logits(qg, 0.125)
    q16, sq = quantize_queries(qg)
    dots = torch.einsum("hgd,hcd->hgc", q16.long(), m.values.long())  # exact in int64
    want = dots.float() * sq.unsqueeze(-1) * m.scale.unsqueeze(1) * torch.tensor(0.125)
    assert torch.equal(got, want)
    exact = torch.matmul(qg, x.transpose(1, 2)) * 0.125
    assert float((got - exact).abs().max()) < 0.02 * float(exact.abs().max())
