"""Sequence KV store: exact decode at full rank/budget through prefill + appends, byte accounting, registry lifecycle."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from kvcache.decode_attention import dense_decode_attention, selected_decode_attention
from kvcache.params import FullKvParams, NosaKvParams, ShadowKvParams, StreamingKvParams, parse_kv_params
from kvcache.registry import StoreRegistry
from kvcache.rope import apply_rope, rope_inv_freq
from kvcache.store import SequenceKvStore
from kvcache.streaming import streaming_mask

HQ, HKV, D = 6, 2, 16
INV_FREQ = rope_inv_freq(D, 10000.0)


def _sequence(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    k_pre = torch.randn(HKV, n, D, generator=g)
    return k_pre, apply_rope(k_pre, torch.arange(n), inv_freq=INV_FREQ), torch.randn(HKV, n, D, generator=g)


def _query(pos: int, seed: int) -> torch.Tensor:
    q = torch.randn(HQ, 1, D, generator=torch.Generator().manual_seed(seed))
    return apply_rope(q, torch.tensor([pos]), inv_freq=INV_FREQ)[:, 0]


def _run(params, n0: int, steps: int, check) -> SequenceKvStore:
    """Prefill ``n0`` tokens, then decode ``steps`` tokens; ``check(out, k_post, v, stats)`` after each step."""
    k_pre, k_post, v = _sequence(n0 + steps)
    store = SequenceKvStore(params, HKV, D, inv_freq=INV_FREQ)
    store.prefill(k_pre[:, :n0], k_post[:, :n0], v[:, :n0])
    for t in range(steps):
        n = n0 + t + 1
        store.append(k_pre[:, n - 1 : n], k_post[:, n - 1 : n], v[:, n - 1 : n])
        assert store.seq_len == n
        out, stats = store.attend(_query(n, seed=t))
        check(out, k_post[:, :n], v[:, :n], stats, _query(n, seed=t))
    return store


@pytest.mark.parametrize("params", [
    ShadowKvParams(rank=HKV * D, budget=4096, n_local=16, n_outlier_chunks=3),
    NosaKvParams(rank=HKV * D, budget=4096, n_local=16, n_outlier_chunks=3, max_change=2, resident_chunks=64,
                 offload_keys=False),
    NosaKvParams(budget=4096, n_local=16, n_outlier_chunks=3, max_change=2, resident_chunks=64),
    FullKvParams(),
])
def test_full_rank_full_budget_decode_equals_dense(params) -> None:
    def check(out, k, v, stats, q):
        torch.testing.assert_close(out, dense_decode_attention(q, k, v), atol=1e-5, rtol=1e-5)
        assert stats.positions == [k.shape[1]] * HKV

    store = _run(params, n0=203, steps=30, check=check)
    if store.offload_keys:  # exact keys offloaded: no fit, nothing pending
        assert store.factors is None and len(store.pending_pre) == 0 and len(store.offload_k) == store.window_start
    elif params.policy != "full":
        # tokens generated after the fit left the window: they are served from the exact pending keys
        assert len(store.pending_pre) > 0 and store.window_start > store.n_fit
        before = store.attend(_query(233, 99))[0]
        store.refit()  # full rank: the refit is lossless
        assert len(store.pending_pre) == 0 and store.n_fit == 233
        torch.testing.assert_close(store.attend(_query(233, 99))[0], before, atol=1e-5, rtol=1e-5)


def test_pending_keys_are_refitted_every_refit_every_tokens() -> None:
    """Decoded keys wait exact until ``refit_every`` of them left the window, then join the fit (lossless at full rank)."""
    params = ShadowKvParams(rank=HKV * D, budget=4096, n_local=16, n_outlier_chunks=3, refit_every=24)
    k_pre, k_post, v = _sequence(203 + 120)
    store = SequenceKvStore(params, HKV, D, inv_freq=INV_FREQ)
    store.prefill(k_pre[:, :203], k_post[:, :203], v[:, :203])
    fits = []
    for t in range(120):
        n = 203 + t + 1
        store.append(k_pre[:, n - 1 : n], k_post[:, n - 1 : n], v[:, n - 1 : n])
        q = _query(n, seed=t)
        torch.testing.assert_close(store.attend(q)[0], dense_decode_attention(q, k_post[:, :n], v[:, :n]),
                                   atol=1e-5, rtol=1e-5)
        assert len(store.pending_pre) < 24
        fits.append(store.n_fit)
    assert len(set(fits)) >= 3 and fits[-1] > 203  # refitted more than once, the fit grew


def test_budgeted_shadowkv_reads_at_most_budget_and_fetches_values() -> None:
    params = ShadowKvParams(rank=8, budget=96, n_local=16, n_outlier_chunks=2)

    def check(out, k, v, stats, q):
        assert all(p <= 96 for p in stats.positions) and all(p > 96 - 8 for p in stats.positions)
        assert stats.offload_bytes_read > 0 and out.shape == (HQ, D) and bool(torch.isfinite(out).all())

    _run(params, n0=300, steps=12, check=check)


def test_streaming_store_equals_sinks_plus_window_attention() -> None:
    params = StreamingKvParams(n_sink=4, n_local=40)

    def check(out, k, v, stats, q):
        from kvcache.selection import Selection

        mask = streaming_mask(HKV, k.shape[1], 4, 40)
        ref = selected_decode_attention(q, k, v, Selection(mask=mask, chunk_mask=mask[:, :0]))
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
        assert stats.positions == [44] * HKV

    store = _run(params, n0=50, steps=5, check=check)
    assert store.offload_bytes() == 0 and store.window_start == 55 - 40


def test_pool_bytes_after_prefill_match_the_layout_exactly() -> None:
    n0, rank, chunk, n_out = 4096, 32, 8, 8
    hkv, d = 3, 64
    g = torch.Generator().manual_seed(0)
    k_pre = torch.randn(hkv, n0, 8, generator=g) @ torch.randn(8, d, generator=g)
    k_post = apply_rope(k_pre, torch.arange(n0), theta=10000.0)
    v = torch.randn(hkv, n0, d, generator=g)
    params = ShadowKvParams(rank=rank, n_outlier_chunks=n_out)
    store = SequenceKvStore(params, hkv, d)
    store.prefill(k_pre, k_post, v)
    start = 4096 - 64
    rows = lambda n: n + max(n // 64, 16)  # capacity of a buffer after one append of n rows
    f = 4
    expected = (
        (n0 * rank + rank * hkv * d) * f                 # low-rank factors
        + hkv * -(-rows(start // chunk) // 16) * 16 * (d + 4)  # landmarks (int8 + a float32 scale, whole blocks of 16)
        + 3 * hkv * rows(n0 - start) * d * f             # window k (post, pre) and v
        + 2 * hkv * rows(4) * d * f                      # sinks k, v
        + hkv * n_out * 8 + 2 * hkv * n_out * chunk * d * f  # outlier ids, k, v
    )
    assert store.pool_bytes() == expected
    assert store.offload_bytes() == hkv * rows(start) * d * f
    dense = SequenceKvStore(FullKvParams(), hkv, d)
    dense.prefill(k_pre, k_post, v)
    assert dense.pool_bytes() == 2 * hkv * rows(n0) * d * f and dense.offload_bytes() == 0
    assert dense.pool_bytes() / store.pool_bytes() > 4.5  # -> 2*192 / (32 + 192/8) = 6.9x at long contexts
    store.free()
    assert store.pool_bytes() == 0 and store.offload_bytes() == 0


def test_registry_returns_to_zero_after_100_requests() -> None:
    reg = StoreRegistry()
    k_pre, k_post, v = _sequence(120)
    params = ShadowKvParams(rank=8, budget=128, n_local=16, n_outlier_chunks=1)
    for i in range(100):
        for layer in range(2):
            s = reg.create(f"req-{i}", layer, params, HKV, D, inv_freq=INV_FREQ)
            s.prefill(k_pre[:, :100], k_post[:, :100], v[:, :100])
            s.append(k_pre[:, 100:101], k_post[:, 100:101], v[:, 100:101])
        assert reg.total_bytes() > 0 and len(reg) == 1
        if i % 10 == 0:  # preemption: recompute gives a fresh store
            fresh = reg.create(f"req-{i}", 0, params, HKV, D, inv_freq=INV_FREQ)
            assert fresh.seq_len == 0 and reg.get(f"req-{i}", 0) is fresh
        assert reg.free(f"req-{i}") > 0
        assert reg.total_bytes() == 0 and len(reg) == 0
    reg.create("a", 0, params, HKV, D).prefill(k_pre, k_post, v)
    reg.create("b", 0, FullKvParams(), HKV, D).prefill(k_pre, k_post, v)
    assert reg.pool_bytes() > 0 and reg.offload_bytes() > 0
    reg.free_all()
    assert reg.total_bytes() == 0 and len(reg) == 0
    with pytest.raises(KeyError):
        reg.get("a", 0)


def test_policy_params_validation() -> None:
    assert parse_kv_params({"policy": "nosa", "max_change": 2}) == NosaKvParams(max_change=2)
    assert parse_kv_params({"policy": "streaming"}).n_local == 1024
    assert isinstance(parse_kv_params({"policy": "full"}), FullKvParams)
    with pytest.raises(ValidationError):
        ShadowKvParams(budget=64)  # sinks + window + outliers already exceed it
    with pytest.raises(ValidationError):
        parse_kv_params({"policy": "shadowkv", "rank": 0})
    with pytest.raises(ValidationError):
        parse_kv_params({"policy": "streaming", "rank": 8})
    with pytest.raises(ValidationError):
        parse_kv_params({"policy": "quest"})


def test_low_rank_store_reads_exact_keys_for_sinks_outliers_window_and_pending() -> None:
    from kvcache.landmarks import chunk_positions
    from kvcache.lowrank import rebuild

    n0, steps = 160, 40
    k_pre, k_post, v = _sequence(n0 + steps, seed=5)
    params = ShadowKvParams(rank=1, budget=4096, n_local=16, n_outlier_chunks=2)
    store = SequenceKvStore(params, HKV, D, inv_freq=INV_FREQ)
    store.prefill(k_pre[:, :n0], k_post[:, :n0], v[:, :n0])
    for t in range(n0, n0 + steps):
        store.append(k_pre[:, t : t + 1], k_post[:, t : t + 1], v[:, t : t + 1])
    n = n0 + steps
    # expected keys: rank-1 rebuild rotated, except the exact rows the store keeps
    expected = apply_rope(rebuild(store.factors, torch.arange(n0)), torch.arange(n0), inv_freq=INV_FREQ)
    expected = torch.cat((expected, k_post[:, n0:]), dim=1)  # pending (decoded after the fit) and window: exact
    expected[:, :4] = k_post[:, :4]  # sinks
    for h in range(HKV):
        out_pos = chunk_positions(store.outliers[h], 8)
        expected[h, out_pos] = k_post[h, out_pos]
    assert store.outliers.shape == (HKV, 2) and store.window_start > n0
    q = _query(n, seed=7)
    got, stats = store.attend(q)
    torch.testing.assert_close(got, dense_decode_attention(q, expected, v), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, dense_decode_attention(q, k_post, v), atol=1e-3)  # rank 1 is lossy elsewhere
    # values of everything but sinks, outliers and window came from the offload tier
    assert stats.offload_bytes_read == HKV * (store.window_start - 4 - 16) * D * 4


def test_nosa_store_reports_resident_cache_hits() -> None:
    params = NosaKvParams(budget=96, n_local=16, n_outlier_chunks=2, max_change=1, resident_chunks=16)
    seen = []

    def check(out, k, v, stats, q):
        assert all(p <= 96 for p in stats.positions)
        seen.append((stats.cache_hits, stats.cache_misses))

    store = _run(params, n0=300, steps=12, check=check)
    chunks = (96 - 4 - 16 - 7 - 16) // 8  # chunks per KV head that always fit next to sinks, window and outliers
    assert seen[0] == (0, sum(seen[0])) and sum(seen[0]) >= HKV * chunks  # cold cache
    assert all(m <= HKV * 1 for _, m in seen[1:])  # at most max_change new chunks per head and step
    assert store.cache.hit_rate > 0.7


def test_nosa_resident_tier_serves_hits_from_the_pool_and_copies_only_misses() -> None:
    """Same values whether a chunk is read from the resident tier or the offload tier; only misses move bytes."""
    base = dict(rank=8, budget=96, n_local=16, n_outlier_chunks=2, max_change=1, offload_keys=False)
    big, tiny = NosaKvParams(**base, resident_chunks=64), NosaKvParams(**base, resident_chunks=1)
    outs: dict[int, list[torch.Tensor]] = {64: [], 1: []}
    moved: dict[int, list[tuple[int, int]]] = {64: [], 1: []}
    for params in (big, tiny):
        def check(out, k, v, stats, q, params=params):
            outs[params.resident_chunks].append(out)
            moved[params.resident_chunks].append((stats.offload_bytes_read, stats.cache_misses))
        store = _run(params, n0=300, steps=12, check=check)
        assert store.pool_bytes() >= HKV * params.resident_chunks * 8 * D * 4  # the resident tier is pool memory
    for a, b in zip(outs[64], outs[1]):  # the same keys and values, summed in another order
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    chunk_bytes = 8 * D * 4
    assert all(read == misses * chunk_bytes for read, misses in moved[64])  # every selected chunk fits: misses only
    assert sum(r for r, _ in moved[64][1:]) < sum(r for r, _ in moved[1][1:]) / 4  # tiny tier: most reads cross



def test_nosa_offload_keys_keeps_exact_keys_off_the_pool_and_moves_them_with_the_values() -> None:
    """offload_keys: no factors, pending or pre-RoPE keys in the pool; the offload tier and each miss carry keys too."""
    base = dict(budget=96, n_local=16, n_outlier_chunks=2, max_change=1, resident_chunks=64)
    stores, moved = {}, {}
    for offload_keys in (False, True):
        params = NosaKvParams(**base, offload_keys=offload_keys, rank=HKV * D)
        steps: list[tuple[int, int]] = []
        stores[offload_keys] = _run(params, n0=300, steps=12,
                                    check=lambda out, k, v, stats, q, steps=steps: steps.append(
                                        (stats.offload_bytes_read, stats.cache_misses)))
        moved[offload_keys] = steps
    low, exact = stores[False], stores[True]
    f = 4
    factors_and_pre = low.factors.nbytes() + low.pending_pre.nbytes() + low.win_k_pre.nbytes()
    assert exact.pool_bytes() == low.pool_bytes() - factors_and_pre
    assert exact.offload_bytes() == 2 * low.offload_bytes() == 2 * HKV * exact.offload_v._data.shape[1] * D * f
    assert moved[True] == [(2 * read, misses) for read, misses in moved[False]]  # same selection, keys ride along
    assert all(read == misses * 2 * 8 * D * f for read, misses in moved[True])
    with pytest.raises(ValidationError, match="resident_keys"):
        NosaKvParams(offload_keys=True, resident_keys=False)


@pytest.mark.parametrize("n0", [0, 5, 24])
def test_short_prompts_then_long_decode_stay_exact(n0: int) -> None:
    params = ShadowKvParams(rank=HKV * D, budget=4096, n_local=16, n_outlier_chunks=1)

    def check(out, k, v, stats, q):
        torch.testing.assert_close(out, dense_decode_attention(q, k, v), atol=1e-5, rtol=1e-5)

    store = _run(params, n0=n0, steps=60, check=check)
    assert store.n_fit == n0 and len(store.pending_pre) == store.window_start - n0 > 0
    assert len(store.sink_k) == 4 and len(store.landmarks) == store.window_start // 8
