"""Per-head KV policies from decode statistics (profiles.kv_choice) on seeded synthetic q/k."""

from __future__ import annotations

import pytest
import torch

from attention_backends import AShapeParams, DenseParams
from kvcache.params import NosaKvParams, ShadowKvParams, StreamingKvParams
from profiles.kv_choice import KvLayerStats, choose_kv, decode_rows, score_kv_layer

HQ, HKV, N, D = 4, 2, 1024, 16
SMALL = dict(budget=128, n_local=32, n_outlier_chunks=2)


def _layer(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, pre-RoPE keys of rank 4: query heads 0/1 (KV head 0) point hard at the chunk of
    positions 96-103, heads 2/3 (KV head 1) spread their mass over the whole context."""
    g = torch.Generator().manual_seed(seed)
    k_pre = torch.randn(HKV, N, 4, generator=g) @ torch.randn(4, D, generator=g)
    k = torch.randn(HKV, N, D, generator=g)
    u = torch.randn(D, generator=g)
    u /= u.norm()
    k[0, 96:104] = 8.0 * u
    q = 0.01 * torch.randn(HQ, N, D, generator=g)
    q[:2] += 10.0 * u
    return q, k, k_pre


def test_decode_rows_are_the_last_question_rows_in_order() -> None:
    rows = torch.tensor([900, 905, 901, 902, 903, 904])
    assert decode_rows(rows, 4).tolist() == [902, 903, 904, 905]
    assert decode_rows(rows).tolist() == sorted(rows.tolist())
    with pytest.raises(ValueError, match="no question rows"):
        decode_rows(torch.tensor([], dtype=torch.int64))


def test_everything_fits_the_budget_so_every_recall_is_one_and_full_rank_is_exact() -> None:
    q, k, k_pre = _layer()
    stats = score_kv_layer(q, k, k_pre, torch.arange(N - 8, N),
                           shadowkv=ShadowKvParams(budget=2048), nosa=NosaKvParams(budget=2048),
                           streaming=StreamingKvParams(n_local=2048))
    assert stats.rank == HKV * D and stats.lowrank_error < 1e-6
    for recall in (stats.shadowkv, stats.nosa, stats.streaming):
        assert recall.shape == (HQ,) and torch.allclose(recall, torch.ones(HQ), atol=1e-5)


def test_retrieval_heads_compress_under_a_small_budget_and_spread_heads_stay_full() -> None:
    q, k, k_pre = _layer()
    stats = score_kv_layer(q, k, k_pre, torch.arange(N - 16, N), shadowkv=ShadowKvParams(rank=8, **SMALL),
                           nosa=NosaKvParams(rank=8, max_change=2, **SMALL), streaming=StreamingKvParams(n_local=64))
    assert stats.lowrank_error < 1e-6  # rank 4 keys at rank 8
    assert (stats.shadowkv[:2] > 0.95).all() and (stats.shadowkv[2:] < 0.5).all()
    assert (stats.streaming[:2] < 0.05).all()  # the pointed-at chunk is far from sinks and window
    policies = [c.policy for c in choose_kv([AShapeParams(), DenseParams(), DenseParams(), AShapeParams()], stats)]
    assert policies[0] in {"nosa", "shadowkv"} and policies[1] in {"nosa", "shadowkv"}
    assert policies[2:] == ["full", "full"]
    assert set(choose_kv([DenseParams()] * HQ, stats)[0].params) == {
        "lowrank_error_r8", "decode_recall", "streaming_recall", "nosa_recall"}


def test_merge_keeps_the_worse_measurement_per_head() -> None:
    a = KvLayerStats(8, 0.1, torch.tensor([0.9, 1.0]), torch.tensor([0.8, 1.0]), torch.tensor([0.5, 0.2]))
    b = KvLayerStats(8, 0.2, torch.tensor([1.0, 0.7]), torch.tensor([0.9, 0.6]), torch.tensor([0.1, 0.3]))
    m = a.merge(b)
    assert m.lowrank_error == 0.2 and m.merge(None) is m
    assert m.shadowkv.tolist() == pytest.approx([0.9, 0.7]) and m.nosa.tolist() == pytest.approx([0.8, 0.6])
    assert m.streaming.tolist() == pytest.approx([0.1, 0.2])
    with pytest.raises(ValueError, match="ranks 16 and 8"):
        KvLayerStats(16, 0.1, a.shadowkv, a.nosa, a.streaming).merge(a)
    with pytest.raises(ValueError, match="3 heads' patterns for statistics of 2 heads"):
        choose_kv([DenseParams()] * 3, a)
