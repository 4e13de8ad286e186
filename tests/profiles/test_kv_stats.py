"""Decode-recall criteria and the KV policy rule of profiles.kv_stats, on seeded synthetic q/k."""

from __future__ import annotations

import pytest
import torch

from attention_backends import AShapeParams, DenseParams
from kvcache.params import NosaKvParams, ShadowKvParams, StreamingKvParams
from profiles.kv_stats import (
    choose_kv_policy,
    layer_lowrank_error,
    nosa_decode_recall,
    shadowkv_output_error,
    smallest_rank,
    shadowkv_decode_recall,
    streaming_decode_recall,
)

HQ, HKV, N, D = 4, 2, 512, 16


def _qk(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return 2 * torch.randn(HQ, N, D, generator=g), torch.randn(HKV, N, D, generator=g)


def _params(budget: int) -> ShadowKvParams:
    return ShadowKvParams(budget=budget, n_local=32, n_outlier_chunks=2)


def test_shadowkv_recall_is_one_when_the_budget_covers_the_context_and_grows_with_budget() -> None:
    q, k = _qk()
    rows = torch.arange(N - 16, N)
    torch.testing.assert_close(shadowkv_decode_recall(q, k, rows, _params(N)), torch.ones(HQ))
    recalls = [shadowkv_decode_recall(q, k, rows, _params(b)) for b in (96, 160, 256, 384)]
    for lo, hi in zip(recalls, recalls[1:]):
        assert bool((hi >= lo - 1e-6).all())
    assert bool((recalls[0] < 0.9).all())  # random keys: the mass is spread, a small budget misses much of it


def test_recall_is_high_when_the_query_points_at_a_few_chunks_and_streaming_misses_them() -> None:
    q, k = _qk(1)
    k = 0.2 * k
    rows = torch.arange(N - 8, N)
    # every late query of KV head 0's group looks at chunk 20, of KV head 1's group at chunk 40
    g = torch.Generator().manual_seed(9)
    base = torch.randn(HKV, D, generator=g)
    for h in range(HQ):
        q[h, N - 8 :] = 3 * base[h // 2] + 0.3 * torch.randn(8, D, generator=g)
    k[0, 160:168] = base[0]
    k[1, 320:328] = base[1]
    sparse = shadowkv_decode_recall(q, k, rows, _params(96))
    stream = streaming_decode_recall(q, k, rows, StreamingKvParams(n_sink=4, n_local=64))
    assert bool((sparse > 0.9).all()) and bool((stream < 0.5).all())
    assert bool((nosa_decode_recall(q, k, rows, NosaKvParams(budget=96, n_local=32, n_outlier_chunks=2, max_change=1)) > 0.9).all())


def test_streaming_and_nosa_recall_are_one_when_everything_fits() -> None:
    q, k = _qk(2)
    rows = torch.arange(N - 4, N)
    assert torch.allclose(streaming_decode_recall(q, k, rows, StreamingKvParams(n_sink=4, n_local=N)), torch.ones(HQ))
    nosa = NosaKvParams(budget=N + 8, n_local=32, n_outlier_chunks=2, max_change=4)
    assert torch.allclose(nosa_decode_recall(q, k, rows, nosa), torch.ones(HQ))


def test_nosa_recall_is_at_most_unconstrained_with_no_change_allowed() -> None:
    q, k = _qk(3)
    rows = torch.arange(N - 24, N)
    free = nosa_decode_recall(q, k, rows, NosaKvParams(budget=160, n_local=32, n_outlier_chunks=2, max_change=64))
    frozen = nosa_decode_recall(q, k, rows, NosaKvParams(budget=160, n_local=32, n_outlier_chunks=2, max_change=0))
    assert float(frozen.mean()) < float(free.mean())


def test_layer_lowrank_error_matches_the_singular_values() -> None:
    g = torch.Generator().manual_seed(4)
    k = torch.randn(1, 200, 4, generator=g) @ torch.randn(4, D, generator=g) + 0.1 * torch.randn(1, 200, D, generator=g)
    s = torch.linalg.svdvals(k[0].double())
    expected = float(((s[4:] ** 2).sum() / (s**2).sum()).sqrt())
    assert layer_lowrank_error(k, 4) == pytest.approx(expected, rel=1e-5)
    assert layer_lowrank_error(k, 4) < 0.1 < layer_lowrank_error(k, 2)


def test_choose_kv_policy_rules() -> None:
    a_shape, dense = AShapeParams(), DenseParams()
    assert choose_kv_policy(a_shape, 0.5, 0.2, streaming_recall=0.97).policy == "streaming"
    assert choose_kv_policy(a_shape, 0.05, 0.97, streaming_recall=0.5).policy == "shadowkv"
    assert choose_kv_policy(dense, 0.05, 0.97, nosa_recall=0.96).policy == "nosa"
    assert choose_kv_policy(dense, 0.05, 0.97, nosa_recall=0.90).policy == "shadowkv"
    assert choose_kv_policy(dense, 0.30, 0.99, nosa_recall=0.99).policy == "nosa"  # exact keys: no fit needed
    assert choose_kv_policy(dense, 0.30, 0.99, nosa_recall=0.90).policy == "full"  # keys do not compress
    assert choose_kv_policy(dense, 0.05, 0.80).policy == "full"  # selection misses attention mass
    choice = choose_kv_policy(dense, 0.1, 0.96, streaming_recall=0.5, target_recall=0.99, max_lowrank_error=0.2, rank=32)
    assert choice.policy == "full"
    assert choice.params == {"lowrank_error_r32": 0.1, "decode_recall": 0.96, "streaming_recall": 0.5}


def test_smallest_rank_meets_the_error_bound() -> None:
    g = torch.Generator().manual_seed(6)
    flat = torch.randn(300, 20, generator=g) @ torch.randn(20, HKV * D, generator=g) + 0.01 * torch.randn(300, HKV * D, generator=g)
    k = flat.reshape(300, HKV, D).permute(1, 0, 2)
    r = smallest_rank(k, 0.05, multiple=4)
    assert r == 20  # the planted rank: 16 leaves signal, 20 leaves only noise
    assert layer_lowrank_error(k, r) <= 0.05 < layer_lowrank_error(k, r - 4)
    assert smallest_rank(k, 0.0, multiple=5) == HKV * D


def test_store_output_error_is_zero_when_exact_and_falls_with_rank() -> None:
    from kvcache.rope import apply_rope

    g = torch.Generator().manual_seed(7)
    n = 256
    flat = torch.randn(n, 6, generator=g) @ torch.randn(6, HKV * D, generator=g) + 0.3 * torch.randn(n, HKV * D, generator=g)
    k_pre = flat.reshape(n, HKV, D).permute(1, 0, 2).contiguous()
    k = apply_rope(k_pre, torch.arange(n), theta=10000.0)
    v = torch.randn(HKV, n, D, generator=g)
    q = apply_rope(torch.randn(HQ, n, D, generator=g), torch.arange(n), theta=10000.0)
    rows = torch.arange(n - 12, n)
    exact = ShadowKvParams(rank=HKV * D, budget=n + 64, n_local=16, n_outlier_chunks=0)
    assert float(shadowkv_output_error(q, k_pre, k, v, rows, exact).max()) < 1e-5
    errs = [float(shadowkv_output_error(q, k_pre, k, v, rows, exact.model_copy(update={"rank": r})).mean()) for r in (1, 6, 16)]
    assert errs[0] > errs[1] > errs[2] and errs[0] > 0.05
    choice = choose_kv_policy(DenseParams(), 0.05, 0.99, output_error=0.2, max_output_error=0.1)
    assert choice.policy == "full" and choice.params["output_error"] == 0.2
    assert choose_kv_policy(DenseParams(), 0.05, 0.99, output_error=0.02).policy == "shadowkv"
