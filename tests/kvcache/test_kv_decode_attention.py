"""Gathered decode attention equals dense attention when everything is selected, including through low-rank keys."""

from __future__ import annotations

import math

import torch

from kvcache.decode_attention import (
    decode_recall,
    dense_decode_attention,
    gather_padded,
    selected_decode_attention,
    sparse_decode_attention,
)
from kvcache.landmarks import chunk_landmarks, outlier_chunks
from kvcache.lowrank import fit_lowrank, rebuild_rotated
from kvcache.rope import apply_rope, rope_inv_freq
from kvcache.selection import select_positions

HQ, HKV, N, D = 6, 2, 300, 16


def _naive(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    out = torch.empty(q.shape, dtype=torch.float64)
    group = q.shape[0] // k.shape[0]
    for h in range(q.shape[0]):
        kh, vh, m = k[h // group].double(), v[h // group].double(), keep[h // group]
        w = torch.softmax((kh[m] @ q[h].double()) / math.sqrt(D), dim=0)
        out[h] = w @ vh[m]
    return out


def test_sparse_attention_matches_naive_formula_on_a_subset() -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(HQ, D, generator=g), torch.randn(HKV, N, D, generator=g), torch.randn(HKV, N, D, generator=g)
    keep = torch.rand(HKV, N, generator=g) < 0.3
    ks, valid = gather_padded(k, keep)
    vs, _ = gather_padded(v, keep)
    assert valid.sum(1).tolist() == keep.sum(1).tolist()
    assert torch.equal(ks[1, : int(keep[1].sum())], k[1, keep[1]])
    got = sparse_decode_attention(q, ks, vs, valid)
    torch.testing.assert_close(got.double(), _naive(q, k, v, keep), atol=1e-5, rtol=1e-5)
    full = torch.ones(HKV, N, dtype=torch.bool)
    torch.testing.assert_close(dense_decode_attention(q, k, v).double(), _naive(q, k, v, full), atol=1e-5, rtol=1e-5)


def test_full_budget_full_rank_decode_equals_dense() -> None:
    g = torch.Generator().manual_seed(1)
    inv_freq = rope_inv_freq(D, 10000.0)
    pos = torch.arange(N)
    k_pre = torch.randn(HKV, N, D, generator=g)
    k_post = apply_rope(k_pre, pos, inv_freq=inv_freq)
    v = torch.randn(HKV, N, D, generator=g)
    q = apply_rope(torch.randn(HQ, 1, D, generator=g), torch.tensor([N]), inv_freq=inv_freq)[:, 0]
    dense = dense_decode_attention(q, k_post, v)

    factors = fit_lowrank(k_pre, HKV * D)
    outliers = outlier_chunks(k_post, 4)
    sel = select_positions(q, chunk_landmarks(k_post), N, budget=N, outliers=outliers)
    assert bool(sel.mask.all())
    k_rebuilt = rebuild_rotated(factors, pos, inv_freq=inv_freq)
    torch.testing.assert_close(selected_decode_attention(q, k_rebuilt, v, sel), dense, atol=1e-5, rtol=1e-5)
    # a real budget changes the output, and its recall is below 1 but counts the kept mass exactly
    small = select_positions(q, chunk_landmarks(k_post), N, budget=128, outliers=outliers)
    recall = decode_recall(q, k_post, small.mask)
    assert bool((recall < 1).all()) and bool((recall > 0).all())
    assert not torch.allclose(selected_decode_attention(q, k_post, v, small), dense, atol=1e-3)
    torch.testing.assert_close(decode_recall(q, k_post, sel.mask), torch.ones(HQ))
