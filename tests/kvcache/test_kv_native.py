"""The C decode kernel of compressed stores (kvcache/native*.py) against the PyTorch reference path."""

from __future__ import annotations

import platform
from dataclasses import replace

import pytest
import torch

from kvcache import native, native_step
from kvcache.decode_attention import dense_decode_attention
from kvcache.decode_step import attend_all
from kvcache.native_step import applies, attend_native_many
from kvcache.params import NosaKvParams, ShadowKvParams, StreamingKvParams
from kvcache.rope import apply_rope, rope_inv_freq
from kvcache.store import SequenceKvStore

HQ, HKV, D = 9, 3, 64  # the default model's layer shape
INV_FREQ = rope_inv_freq(D, 100000.0)

needs_kernel = pytest.mark.skipif(native.load_kernel() is None, reason="no C compiler on this machine")


def _low_rank_keys(n: int, g: torch.Generator) -> torch.Tensor:
    k = (torch.randn(n, 12, generator=g) @ torch.randn(12, HKV * D, generator=g)).reshape(n, HKV, D).permute(1, 0, 2)
    return k + 0.05 * torch.randn(HKV, n, D, generator=g)


def _pair(params, n0: int, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    k_pre = _low_rank_keys(n0, g)
    k_post = apply_rope(k_pre, torch.arange(n0), inv_freq=INV_FREQ)
    v = torch.randn(HKV, n0, D, generator=g)
    stores = []
    for fast in (True, False):
        store = SequenceKvStore(params, HKV, D, inv_freq=INV_FREQ, dtype=dtype, native=fast)
        store.prefill(k_pre.to(dtype), k_post.to(dtype), v.to(dtype))
        stores.append(store)
    return stores, g


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("params", [
    ShadowKvParams(rank=24, budget=512, n_local=16, n_outlier_chunks=4, refit_every=24),
    NosaKvParams(rank=24, budget=512, n_local=16, n_outlier_chunks=4, refit_every=24, max_change=4,
                 resident_chunks=40, offload_keys=False),
    NosaKvParams(budget=512, n_local=16, n_outlier_chunks=4, max_change=4, resident_chunks=40),
])
@pytest.mark.parametrize("n0", [1201, 4003])  # 150 chunks: quickselect; 500: bucketed selection
def test_kernel_equals_reference_over_decode_steps(params, dtype, n0) -> None:
    """Same chunks, positions, bytes, LRU tables and (to rounding) outputs, step by step, across evictions and refits."""
    _check_steps(params, dtype, n0)


@needs_kernel
@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 targets")
@pytest.mark.parametrize("march", ["haswell", "x86-64"])  # AVX2 (vpmaddwd landmarks, 8 lanes); SSE2 (generic C)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernel_built_for_narrower_targets_equals_reference(march, dtype, monkeypatch) -> None:
    """The kernel's other code paths (what an AVX2-only or older host compiles) select and attend as the reference."""
    lib = native.load_kernel(march)
    assert lib is not None and lib is not native.load_kernel()
    monkeypatch.setattr(native_step, "load_kernel", lambda: lib)
    _check_steps(NosaKvParams(budget=512, n_local=16, n_outlier_chunks=4, max_change=4, resident_chunks=40), dtype, 4003)


def _check_steps(params, dtype, n0) -> None:
    (fast, ref), g = _pair(params, n0, dtype)
    assert applies(fast) and fast.native and not ref.native
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for step in range(60):
        q = (2 * torch.randn(HQ, D, generator=g)).to(dtype)
        out_f, stats_f = fast.attend(q, 0.125)
        out_r, stats_r = ref.attend(q, 0.125)
        assert stats_f.native and not stats_r.native
        assert replace(stats_f, native=False) == stats_r, step
        torch.testing.assert_close(out_f.float(), out_r.float(), atol=tol, rtol=tol)
        if isinstance(params, NosaKvParams):
            assert torch.equal(fast.previous_chunks, ref.previous_chunks)
            cols = min(fast.cache.slot_of.shape[1], ref.cache.slot_of.shape[1])
            assert torch.equal(fast.cache.slot_of[:, :cols], ref.cache.slot_of[:, :cols])
            assert torch.equal(fast.cache.last_used, ref.cache.last_used)
            used = fast.cache.slot_chunk > 0  # slots in use (chunk 0's sink rows are never read from a slot)
            assert torch.equal(fast.resident_v[used], ref.resident_v[used])
            torch.testing.assert_close(fast.resident_k[used].float(), ref.resident_k[used].float(), atol=tol, rtol=tol)
        k_pre = torch.randn(HKV, 1, D, generator=g)
        k_post = apply_rope(k_pre, torch.tensor([fast.seq_len]), inv_freq=INV_FREQ)
        v = torch.randn(HKV, 1, D, generator=g)
        for store in (fast, ref):
            store.append(k_pre.to(dtype), k_post.to(dtype), v.to(dtype))
    if fast.offload_keys:  # decoded keys reached the offload tier, nothing was fitted
        assert len(fast.offload_k) == fast.window_start > n0 - 24 and fast.factors is None
    else:  # decoded keys reached the compressed history
        assert len(fast.pending_pre) > 0 or fast.n_fit > n0
    if isinstance(params, NosaKvParams):
        assert (fast.cache.hits, fast.cache.misses) == (ref.cache.hits, ref.cache.misses) and fast.cache.hits > 0


@needs_kernel
def test_bfloat16_store_with_float32_queries_selects_as_the_reference() -> None:
    """Queries that are not bfloat16 values skip the bf16 pair products (they would round the query)."""
    (fast, ref), g = _pair(NosaKvParams(budget=512, n_local=16, max_change=4, resident_chunks=40), 4003, torch.bfloat16)
    for step in range(20):
        q = 2 * torch.randn(HQ, D, generator=g)
        assert torch.any(q != q.to(torch.bfloat16).float())
        out_f, stats_f = fast.attend(q, 0.125)
        out_r, stats_r = ref.attend(q, 0.125)
        assert replace(stats_f, native=False) == stats_r, step
        assert torch.equal(fast.previous_chunks, ref.previous_chunks)
        torch.testing.assert_close(out_f.float(), out_r.float(), atol=2e-2, rtol=2e-2)


@needs_kernel
def test_kernel_full_budget_equals_dense_attention() -> None:
    """Full rank and a budget over the context: the kernel's step is exact decode attention."""
    g = torch.Generator().manual_seed(5)
    k_pre = _low_rank_keys(777, g)
    k_post = apply_rope(k_pre, torch.arange(777), inv_freq=INV_FREQ)
    v = torch.randn(HKV, 777, D, generator=g)
    store = SequenceKvStore(ShadowKvParams(rank=HKV * D, budget=8192, n_outlier_chunks=2), HKV, D, inv_freq=INV_FREQ)
    store.prefill(k_pre, k_post, v)
    q = torch.randn(HQ, D, generator=g)
    out, stats = store.attend(q, 0.125)
    assert stats.positions == [777] * HKV
    torch.testing.assert_close(out, dense_decode_attention(q, k_post, v, 0.125), atol=1e-5, rtol=1e-5)


@needs_kernel
def test_kernel_raises_like_the_reference_when_the_budget_is_too_small() -> None:
    (fast, ref), g = _pair(ShadowKvParams(rank=8, budget=600, n_local=64, n_outlier_chunks=4), 2000, torch.float32)
    # below what sinks + window + outliers need (the params model refuses it; a store fed such params must raise)
    fast.params = ref.params = ShadowKvParams.model_construct(**{**ref.params.model_dump(), "budget": 64})
    q = torch.randn(HQ, D, generator=g)
    with pytest.raises(ValueError, match="budget"):
        ref.attend(q, 0.125)
    with pytest.raises(ValueError, match="budget"):
        fast.attend(q, 0.125)


def test_stores_the_kernel_does_not_cover_run_the_reference() -> None:
    """float16 or a head_dim that is not a multiple of 16: the PyTorch path, same results as native=False."""
    for dtype, d in ((torch.float16, 64), (torch.float32, 24)):
        store = SequenceKvStore(ShadowKvParams(rank=8, budget=256), 1, d, dtype=dtype)
        assert not applies(store)


def test_build_failure_is_a_clear_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SPARSE_SERVE_CACHE_DIR", str(tmp_path))
    with pytest.raises(RuntimeError, match="cannot run"):
        native.build(compiler=str(tmp_path / "no-such-cc"))
    with pytest.raises(RuntimeError, match="failed on csrc"):
        native.build(compiler="false")
    assert not list((tmp_path / "native").glob("*.so"))


def _stores(params, count: int, dtype: torch.dtype, seed: int):
    """``count`` stores of different lengths and keys, each with its twin (same data) for one-by-one steps."""
    out = []
    for i in range(count):
        (a, b), g = _pair(params, 700 + 97 * i, dtype, seed=seed + i)
        b.native = True
        out.append((a, b, g))
    return out


@needs_kernel
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_batched_steps_over_threads_equal_one_by_one(threads) -> None:
    """attend_all: steps of several stores in one kernel call, spread over threads, equal each store's own steps."""
    params = NosaKvParams(budget=384, n_local=16, n_outlier_chunks=2, max_change=4, resident_chunks=30)
    trios = _stores(params, 5, torch.bfloat16, seed=threads)
    for step in range(6):
        qs = [(2 * torch.randn(HQ, D, generator=g)).to(torch.bfloat16) for _, _, g in trios]
        batched = attend_all([(a, q) for (a, _, _), q in zip(trios, qs)], 0.125, threads=threads)
        for (a, b, _), q, result in zip(trios, qs, batched):
            out, stats = b.attend(q, 0.125)
            assert stats.native and result[1] == stats
            assert torch.equal(result[0], out)
            assert torch.equal(a.previous_chunks, b.previous_chunks)
            assert torch.equal(a.cache.last_used, b.cache.last_used)
        for a, b, g in trios:
            k_pre = torch.randn(HKV, 1, D, generator=g)
            k_post = apply_rope(k_pre, torch.tensor([a.seq_len]), inv_freq=INV_FREQ)
            v = torch.randn(HKV, 1, D, generator=g)
            for store in (a, b):
                store.append(k_pre.to(torch.bfloat16), k_post.to(torch.bfloat16), v.to(torch.bfloat16))


@needs_kernel
def test_batched_steps_report_errors_per_step_and_run_other_stores() -> None:
    """A failing step is that step's exception; streaming and float16 stores in the batch run the PyTorch path."""
    params = ShadowKvParams(rank=16, budget=384, n_local=16, n_outlier_chunks=2)
    (good, twin, g), (bad, _, _) = _stores(params, 2, torch.float32, seed=11)
    bad.params = ShadowKvParams.model_construct(**{**params.model_dump(), "budget": 16})
    half = SequenceKvStore(params, HKV, D, inv_freq=INV_FREQ, dtype=torch.float16)
    stream = SequenceKvStore(StreamingKvParams(n_sink=4, n_local=64), HKV, D, inv_freq=INV_FREQ)
    for store in (half, stream):
        k = torch.randn(HKV, 500, D, generator=g)
        store.prefill(k.to(store.dtype), k.to(store.dtype), k.to(store.dtype))
    q = torch.randn(HQ, D, generator=g)
    results = attend_all([(good, q), (bad, q), (half, q.half()), (stream, q)], 0.125, threads=2)
    assert isinstance(results[1], ValueError) and "budget" in str(results[1])
    assert results[0][1].native and torch.equal(results[0][0], twin.attend(q, 0.125)[0])
    assert not results[2][1].native and results[2][0].dtype == torch.float16
    out, stats = stream.attend(q, 0.125)  # a streaming step changes nothing: run again, compare
    assert torch.equal(results[3][0], out) and results[3][1] == stats and not stats.native
    with pytest.raises(ValueError, match="twice"):
        attend_native_many([(good, q), (good, q)], 0.125, threads=2)
