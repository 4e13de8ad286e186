"""vLLM's CPU kernel on one segment and some query heads, against exact attention of the gathered context."""

from __future__ import annotations

import pytest
import torch

from attention_backends import BlockSparseParams, SparseIndex, estimate_index, masked_attention
from attention_backends.paged_kv import gather_sequence_kv
from attention_backends.patterns import AShapeParams, DenseParams
from attention_backends.segment import HeadGroup, SequenceKV, causal_pairs, dense_tail_attention, segment_attention
from paged_cache import ISAS, write_with_vllm

SCALE = 0.125
HQ, HKV, D, BS = 6, 2, 64, 32


@pytest.fixture(scope="module")
def ck():
    """The module under test, imported at test time: importing vLLM at collection would load Triton
    before tests/attention_backends/test_triton_kernels.py turns its interpreter on."""
    pytest.importorskip("vllm")
    import attention_backends.cpu_kernel as module

    return module


def _paged(n: int, dtype: torch.dtype, seed: int = 0, isa: str = "vec", bs: int = BS) -> tuple[torch.Tensor, torch.Tensor]:
    """A cache holding one sequence of ``n`` tokens in shuffled blocks (layout of ``isa``), and its block table."""
    g = torch.Generator().manual_seed(seed)
    nblk = -(-n // bs)
    block_ids = torch.randperm(nblk + 3, generator=g)[:nblk]
    slots = torch.cat([b * bs + torch.arange(bs) for b in block_ids])[:n]
    cache = torch.zeros(nblk + 3, HKV, bs, 2 * D, dtype=dtype)
    write_with_vllm(cache, torch.randn(n, HKV, D, generator=g).to(dtype), torch.randn(n, HKV, D, generator=g).to(dtype), slots,
                    isa)
    return cache, block_ids


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("n,nq", [(200, 200), (200, 37), (97, 1 + 64)])
@pytest.mark.parametrize("heads", [(0,), (1, 2), (0, 4), (5, 3, 1), tuple(range(HQ))])
def test_kernel_heads_equal_exact_attention(ck, dtype: torch.dtype, atol: float, n: int, nq: int, heads: tuple[int, ...]) -> None:
    cache, block_ids = _paged(n, dtype)
    query = torch.randn(nq, HQ, D, generator=torch.Generator().manual_seed(1)).to(dtype)
    kernel = ck.SegmentKernel("vec", dtype, D, nq, n, block_ids)
    got = kernel.heads(query, cache, heads, scale=SCALE)
    k, v = gather_sequence_kv(cache, block_ids, n)
    _assert_exact(got, query, k, v, heads, atol)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("heads", [(1, 2), (5, 3, 1)])
def test_kernel_heads_read_the_layout_of_each_isa(ck, isa: str, heads: tuple[int, ...]) -> None:
    """bfloat16 (what vLLM's ``amx`` ISA serves) over one-KV-head views of each layout."""
    n, nq = 200, 37
    cache, block_ids = _paged(n, torch.bfloat16, isa=isa)
    query = torch.randn(nq, HQ, D, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    got = ck.SegmentKernel(isa, torch.bfloat16, D, nq, n, block_ids).heads(query, cache, heads, scale=SCALE)
    k, v = gather_sequence_kv(cache, block_ids, n, isa)
    _assert_exact(got, query, k, v, heads, 2e-2)


def _assert_exact(got: torch.Tensor, query: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: tuple[int, ...],
                  atol: float) -> None:
    """``got [len(heads), Nq, D]`` is exact causal attention of those query heads over ``k, v [Hkv, N, D]``."""
    nq = query.shape[0]
    idx = torch.tensor(heads)
    want = dense_tail_attention(query.transpose(0, 1)[idx].float(), k.float()[idx // (HQ // HKV)],
                                v.float()[idx // (HQ // HKV)], scale=SCALE)
    assert got.shape == (len(heads), nq, D) and got.dtype == query.dtype
    torch.testing.assert_close(got.float(), want, atol=atol, rtol=0)


def test_segment_with_the_kernel_for_dense_heads_equals_the_default_path(ck) -> None:
    n, nq = 300, 120
    cache, block_ids = _paged(n, torch.float32, seed=2)
    query = torch.randn(nq, HQ, D, generator=torch.Generator().manual_seed(3))
    k, v = gather_sequence_kv(cache, block_ids, n)
    groups = [HeadGroup(DenseParams(), (0, 2, 3)), HeadGroup(AShapeParams(n_init=16, n_local=64), (1, 4, 5))]
    kernel = ck.SegmentKernel("vec", torch.float32, D, nq, n, block_ids)
    calls: list[tuple[int, ...]] = []

    def exact(heads: tuple[int, ...]) -> torch.Tensor:
        calls.append(heads)
        return kernel.heads(query, cache, heads, scale=SCALE)

    q = query.transpose(0, 1)
    got, stats = segment_attention(q, SequenceKV.of(k, v), groups, scale=SCALE, dense_tail=16, exact=exact)
    want, want_stats = segment_attention(q, SequenceKV.of(k, v), groups, scale=SCALE, dense_tail=16)
    assert calls == [(0, 2, 3)]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert stats == want_stats


def _covering(index: SparseIndex, cache_block: int) -> SparseIndex:
    """``index`` with every kept key block widened to the cache blocks it lies in (causally clipped)."""
    per = cache_block // index.block_size
    mask = index.block_mask()
    nqb = mask.shape[1]
    padded = torch.nn.functional.pad(mask, (0, -nqb % per))
    wide = padded.view(*mask.shape[:2], -1, per).any(-1).repeat_interleave(per, dim=-1)[..., :nqb]
    qb = torch.arange(nqb).view(1, -1, 1)
    kb = torch.arange(nqb).view(1, 1, -1)
    wide |= (kb // per == qb // per)  # the diagonal cache block up to the query block
    return SparseIndex.from_block_mask(wide & (kb <= qb), index.seq_len, index.block_size)


@pytest.mark.parametrize("isa,dtype,atol", [("vec", torch.float32, 1e-5),
                                            *[pytest.param(p.values[0], torch.bfloat16, 2e-2, marks=p.marks) for p in ISAS]])
@pytest.mark.parametrize("bs", [32, 64, 128])
@pytest.mark.parametrize("n,nq,tail", [(1024, 1024, 0), (1000, 300, 64), (777, 5, 64), (700, 130, 16)])
def test_kernel_runs_a_block_sparse_index_exactly(ck, isa: str, dtype: torch.dtype, atol: float, bs: int, n: int,
                                                  nq: int, tail: int) -> None:
    """Cache blocks of 32/64 keys compute exactly the index's pairs; 128-key blocks their covering blocks."""
    cache, block_ids = _paged(n, dtype, isa=isa, bs=bs)
    query = torch.randn(nq, HQ, D, generator=torch.Generator().manual_seed(4)).to(dtype)
    heads = (0, 4, 5)
    idx = torch.tensor(heads)
    k, v = gather_sequence_kv(cache, block_ids, n, isa)
    kh, vh = k[idx // (HQ // HKV)].float(), v[idx // (HQ // HKV)].float()
    q_full = torch.zeros(len(heads), n, D)
    q_full[:, n - nq:] = query.transpose(0, 1)[idx].float()
    index = estimate_index(q_full, kh, BlockSparseParams(top_k=3), scale=SCALE)
    got, kept = ck.SegmentKernel(isa, dtype, D, nq, n, block_ids).sparse(query, cache, heads, index, tail=tail,
                                                                        scale=SCALE)
    wide = index if bs <= 64 else _covering(index, bs)
    want = masked_attention(q_full, kh, vh, wide, scale=SCALE)[:, n - nq:]
    t = min(tail, nq)
    if t:
        want[:, nq - t:] = dense_tail_attention(q_full[:, n - t:], kh, vh, scale=SCALE)
    assert got.shape == (len(heads), nq, D) and got.dtype == dtype
    torch.testing.assert_close(got.float(), want, atol=atol, rtol=0)
    assert kept == int(wide.row_mask(torch.arange(n - nq, n - t)).sum()) + len(heads) * sum(range(n - t + 1, n + 1))


def test_segment_runs_column_free_groups_on_the_kernel(ck) -> None:
    n, nq = 1000, 400
    cache, block_ids = _paged(n, torch.float32, seed=5, bs=64)
    query = torch.randn(nq, HQ, D, generator=torch.Generator().manual_seed(6))
    k, v = gather_sequence_kv(cache, block_ids, n)
    groups = [HeadGroup(DenseParams(), (0, 3)), HeadGroup(BlockSparseParams(top_k=3), (1, 4)),
              HeadGroup(AShapeParams(n_init=64, n_local=128), (2, 5))]
    kernel = ck.SegmentKernel("vec", torch.float32, D, nq, n, block_ids)
    calls: list[tuple[int, ...]] = []

    def paged(heads, index, tail):
        calls.append(heads)
        return kernel.sparse(query, cache, heads, index, tail=tail, scale=SCALE)

    q = query.transpose(0, 1)
    got, stats = segment_attention(q, SequenceKV.of(k, v), groups, scale=SCALE, dense_tail=64, paged=paged)
    want, _ = segment_attention(q, SequenceKV.of(k, v), groups, scale=SCALE, dense_tail=64)
    assert calls == [(1, 4), (2, 5)]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert stats.causal_pairs == HQ * causal_pairs(n, n - nq)  # the segment's rows exactly
    assert 0 < stats.kept_pairs < stats.causal_pairs


def test_segment_of_dense_and_a_shape_heads_on_the_kernel_never_reads_the_context(ck) -> None:
    n, nq = 1000, 400
    cache, block_ids = _paged(n, torch.float32, seed=7, bs=64)
    query = torch.randn(nq, HQ, D, generator=torch.Generator().manual_seed(8))
    k, v = gather_sequence_kv(cache, block_ids, n)
    groups = [HeadGroup(DenseParams(), (0, 4)), HeadGroup(AShapeParams(n_init=64, n_local=128), (1, 2, 3, 5))]
    kernel = ck.SegmentKernel("vec", torch.float32, D, nq, n, block_ids)

    def unread():
        raise AssertionError("the context was copied out of the cache")

    q = query.transpose(0, 1)
    lazy = SequenceKV(unread, HKV, n)
    got, stats = segment_attention(
        q, lazy, groups, scale=SCALE, dense_tail=64,
        exact=lambda heads: kernel.heads(query, cache, heads, scale=SCALE),
        paged=lambda heads, index, tail: kernel.sparse(query, cache, heads, index, tail=tail, scale=SCALE))
    want, _ = segment_attention(q, SequenceKV.of(k, v), groups, scale=SCALE, dense_tail=64)
    assert not lazy.was_read
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert stats.causal_pairs == HQ * causal_pairs(n, n - nq)


def test_kernel_rejects_a_segment_of_another_shape(ck) -> None:
    cache, block_ids = _paged(64, torch.float32)
    kernel = ck.SegmentKernel("vec", torch.float32, D, 10, 64, block_ids)
    with pytest.raises(ValueError, match="planned for 10"):
        kernel.heads(torch.zeros(11, HQ, D), cache, (0,), scale=SCALE)


@pytest.mark.parametrize("isa", ISAS)
def test_cache_layout_check_passes_for_every_isa_we_read(ck, isa: str) -> None:
    ck.check_cache_layout(isa, torch.bfloat16, 128, 64)


def test_cache_layout_check_refuses_a_layout_without_a_reader(ck) -> None:
    with pytest.raises(RuntimeError, match="not 'neon'; serve with --no-sparse"):
        ck.check_cache_layout("neon", torch.bfloat16, 128, 64)


@pytest.mark.parametrize("isa", ISAS)
def test_write_paged_lays_a_sequence_out_in_vllms_layout(ck, isa: str) -> None:
    k, v = (torch.randn(HKV, 300, D, generator=torch.Generator().manual_seed(s)).to(torch.bfloat16) for s in (7, 8))
    cache, block_ids = ck.write_paged(k, v, 128, isa)
    assert cache.shape == (3, HKV, 128, 2 * D) and block_ids.tolist() == [0, 1, 2]
    got_k, got_v = gather_sequence_kv(cache, block_ids, 300, isa)
    assert torch.equal(got_k, k) and torch.equal(got_v, v)
    assert ck.vllm_isa(torch.float32, 128, D) == "vec"
