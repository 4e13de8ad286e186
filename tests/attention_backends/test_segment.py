"""Sparse prefill of chunked segments: exact with full budgets, skips earlier rows, counts pairs."""

from __future__ import annotations

import pytest
import torch

from attention_backends.patterns import (
    AShapeParams,
    BlockSparseParams,
    DenseParams,
    FlexPrefillParams,
    VerticalSlashParams,
)
from attention_backends.segment import HeadGroup, SequenceKV, _tiled_masked_attention, causal_pairs, dense_tail_attention, segment_attention
from attention_backends.interface import estimate_index, run_index
from profiles.variants import full_budget_params

SCALE = 0.125
PATTERNS = [
    AShapeParams(n_init=8, n_local=64),
    VerticalSlashParams(last_q=32, n_vertical=40, n_slash=60),
    BlockSparseParams(block_size=32, top_k=3),
    FlexPrefillParams(gamma=0.8, min_budget=64),
]


def _qkv(n: int, nq: int, hq: int = 6, hkv: int = 2, d: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(hq, nq, d, generator=g)
    k = torch.randn(hkv, n, d, generator=g)
    v = torch.randn(hkv, n, d, generator=g)
    return q, k, v


def _exact(q, k, v):
    """Dense causal attention of the last rows, straight from the definition."""
    hq, nq, _ = q.shape
    n = k.shape[1]
    kk = k.repeat_interleave(hq // k.shape[0], 0)
    vv = v.repeat_interleave(hq // k.shape[0], 0)
    logits = q @ kk.transpose(1, 2) * SCALE
    pos = torch.arange(n - nq, n).unsqueeze(1)
    logits = logits.masked_fill(torch.arange(n) > pos, float("-inf"))
    return torch.softmax(logits, -1) @ vv


@pytest.mark.parametrize("n,nq", [(300, 300), (300, 77), (257, 1 + 64), (512, 100)])
def test_full_budget_groups_equal_dense_on_any_segment(n: int, nq: int) -> None:
    q, k, v = _qkv(n, nq)
    groups = [
        HeadGroup(full_budget_params(PATTERNS[0]), (0, 4)),
        HeadGroup(full_budget_params(PATTERNS[1]), (1,)),
        HeadGroup(full_budget_params(PATTERNS[2]), (2, 5)),
        HeadGroup(full_budget_params(PATTERNS[3]), (3,)),
    ]
    out, stats = segment_attention(q, SequenceKV.of(k, v), groups, scale=SCALE, backend="gather")
    torch.testing.assert_close(out, _exact(q, k, v), atol=2e-5, rtol=1e-4)
    assert stats.kept_pairs >= 6 * causal_pairs(n, n - nq)
    assert stats.density >= 1.0 - 1e-9


def test_segment_rows_equal_whole_sequence_rows() -> None:
    """A segment's output equals the same rows of a one-shot prefill with the same index."""
    n, nq = 384, 100
    q_all, k, v = _qkv(n, n, seed=1)
    groups = [HeadGroup(PATTERNS[0], tuple(range(6)))]
    whole, _ = segment_attention(q_all, SequenceKV.of(k, v), groups, scale=SCALE)
    tail, stats = segment_attention(q_all[:, n - nq:], SequenceKV.of(k, v), groups, scale=SCALE)
    torch.testing.assert_close(tail, whole[:, n - nq:], atol=1e-5, rtol=1e-5)
    assert 0 < stats.density < 1


def test_sparse_budget_keeps_fewer_pairs_and_dense_group_is_exact() -> None:
    n, nq = 512, 128
    q, k, v = _qkv(n, nq, seed=2)
    groups = [HeadGroup(DenseParams(), (0, 1, 2)), HeadGroup(PATTERNS[0], (3, 4, 5))]
    out, stats = segment_attention(q, SequenceKV.of(k, v), groups, scale=SCALE)
    torch.testing.assert_close(out[:3], _exact(q, k, v)[:3], atol=2e-5, rtol=1e-4)
    assert stats.density < 0.9
    assert not torch.allclose(out[3:], _exact(q, k, v)[3:], atol=1e-3)


@pytest.mark.parametrize("n, nq", [(200, 90), (90, 90), (300, 1)])
def test_dense_tail_attention_handles_gqa_prefixes_and_tiles(n: int, nq: int) -> None:
    q, k, v = _qkv(n, nq, seed=3)
    exact = _exact(q, k, v)
    torch.testing.assert_close(dense_tail_attention(q, k, v, scale=SCALE), exact, atol=2e-5, rtol=1e-4)  # CPU: split flash
    torch.testing.assert_close(_tiled_masked_attention(q, k, v, scale=SCALE, rows_per_tile=16), exact, atol=2e-5, rtol=1e-4)
    got = dense_tail_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), scale=SCALE)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), exact, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("n, nq", [(512, 100), (512, 512), (300, 1)])
def test_block_sparse_segment_runs_the_square_plan_on_its_rows(n: int, nq: int) -> None:
    """Planned on the segment's own query blocks, a block-sparse group computes what the square plan computes."""
    q, k, v = _qkv(n, nq, seed=6)
    params = PATTERNS[2]
    groups = [HeadGroup(params, (1, 2, 4)), HeadGroup(DenseParams(), (0, 3, 5))]
    out, stats = segment_attention(q, SequenceKV.of(k, v), groups, scale=SCALE, backend="gather")
    square = torch.zeros(3, n, q.shape[2])
    square[:, n - nq:] = q[[1, 2, 4]]
    kg, vg = k[[0, 0, 1]], v[[0, 0, 1]]  # heads 1, 2, 4 of 6 over 2 kv heads
    index = estimate_index(square, kg, params, scale=SCALE)
    want = run_index(square, kg, vg, index, scale=SCALE, backend="gather", rows_from=n - nq)
    torch.testing.assert_close(out[[1, 2, 4]], want, atol=0, rtol=0)
    first = (n - nq) // params.block_size
    dense_pairs = 3 * causal_pairs(n, n - nq)
    assert stats.kept_pairs == int(index.pair_counts(first).sum()) + dense_pairs


def test_groups_must_cover_every_head_once() -> None:
    q, k, v = _qkv(64, 64)
    with pytest.raises(ValueError, match="cover query heads"):
        segment_attention(q, SequenceKV.of(k, v), [HeadGroup(PATTERNS[0], (0, 1, 2))], scale=SCALE)


def test_dense_tail_rows_are_exact_and_the_rest_stays_sparse() -> None:
    n, nq, tail = 512, 200, 64
    q, k, v = _qkv(n, nq, seed=4)
    groups = [HeadGroup(PATTERNS[0], tuple(range(6)))]
    sparse_only, plain = segment_attention(q, SequenceKV.of(k, v), groups, scale=SCALE)
    out, stats = segment_attention(q, SequenceKV.of(k, v), groups, scale=SCALE, dense_tail=tail)
    exact = _exact(q, k, v)
    torch.testing.assert_close(out[:, -tail:], exact[:, -tail:], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(out[:, :-tail], sparse_only[:, :-tail])
    assert not torch.allclose(sparse_only[:, -tail:], exact[:, -tail:], atol=1e-3)
    assert plain.density < stats.density <= 1.0


def test_context_is_read_once_and_its_shape_checked() -> None:
    q, k, v = _qkv(300, 100, seed=5)
    reads: list[int] = []

    def read():
        reads.append(1)
        return k, v

    groups = [HeadGroup(PATTERNS[1], (0, 1, 2)), HeadGroup(PATTERNS[2], (3, 4, 5))]
    got, _ = segment_attention(q, SequenceKV(read, k.shape[0], 300), groups, scale=SCALE, dense_tail=16)
    want, _ = segment_attention(q, SequenceKV.of(k, v), groups, scale=SCALE, dense_tail=16)
    assert reads == [1]
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    with pytest.raises(ValueError, match="context read as"):
        segment_attention(q, SequenceKV(read, k.shape[0], 301), groups, scale=SCALE)
