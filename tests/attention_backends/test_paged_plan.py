"""Block tables that run a column-free sparse index on a paged causal kernel (pure planning)."""

from __future__ import annotations

import pytest
import torch

from attention_backends import AShapeParams, BlockSparseParams, VerticalSlashParams, estimate_index
from attention_backends.paged_plan import plan_paged
from attention_backends.segment import causal_pairs
from sparse_cases import random_qkv


def _index(n: int, params=None):
    q, k, _ = random_qkv(n, q_heads=3, kv_heads=1, seed=n)
    return estimate_index(q, k, params or BlockSparseParams(top_k=3, block_size=64))


def _sequences(plan, heads: int):
    """Per sequence: (q_len, seq_len, its used logical blocks)."""
    starts = plan.query_start_loc.tolist()
    out = []
    for s in range(heads * plan.seqs_per_head):
        seq_len = int(plan.seq_lens[s])
        out.append((starts[s + 1] - starts[s], seq_len, plan.block_table[s].tolist()))
    return out


@pytest.mark.parametrize("cache_block", [16, 32, 64])
@pytest.mark.parametrize("n,start", [(1000, 0), (1000, 384), (1000, 999), (70, 64), (64, 0)])
def test_exact_when_cache_blocks_divide_index_blocks(cache_block: int, n: int, start: int) -> None:
    index = _index(n)
    plan = plan_paged(index, start, 0, cache_block)
    assert start % 64 or plan.kept_pairs == int(index.pair_counts(start // 64).sum())
    nqb = -(-n // 64) - start // 64
    assert plan.seqs_per_head == nqb
    assert plan.query_start_loc[-1] == 3 * (n - start)
    mask = index.block_mask()
    for s, (q_len, seq_len, table) in enumerate(_sequences(plan, 3)):
        head, qb = divmod(s, nqb)
        qb += start // 64
        rows_end = min((qb + 1) * 64, n)
        diag = list(range(qb * 64 // cache_block, (rows_end - 1) // cache_block + 1))
        used = -(-seq_len // cache_block)
        off = table[: used - len(diag)]
        assert table[used - len(diag): used] == diag
        kept = sorted({b * 64 // cache_block + i for b in mask[head, qb].nonzero().flatten().tolist() if b < qb
                       for i in range(64 // cache_block)})
        assert off == kept
        assert seq_len == len(off) * cache_block + rows_end - diag[0] * cache_block
        assert q_len == rows_end - max(qb * 64, start)


def test_larger_cache_blocks_compute_a_counted_superset() -> None:
    n = 1000
    index = _index(n, BlockSparseParams(top_k=4, block_size=64))
    exact = plan_paged(index, 0, 0, 64)
    coarse = plan_paged(index, 0, 0, 128)
    assert coarse.kept_pairs > exact.kept_pairs
    for q_len, seq_len, table in _sequences(coarse, 3):
        used = table[: -(-seq_len // 128)]
        assert used == sorted(set(used)) and used[-1] * 128 < n


@pytest.mark.parametrize("tail", [1, 64, 500])
def test_tail_rows_attend_to_every_key(tail: int) -> None:
    n, start = 1000, 300
    index = _index(n)
    plan = plan_paged(index, start, tail, 64)
    tail = min(tail, n - start)
    seqs = _sequences(plan, 3)
    for head in range(3):
        q_len, seq_len, table = seqs[(head + 1) * plan.seqs_per_head - 1]
        assert (q_len, seq_len) == (tail, n) and table[: 16] == list(range(16))
    assert plan.query_start_loc[-1] == 3 * (n - start)
    sparse_part = plan_paged(index, start, 0, 64).kept_pairs
    assert plan.kept_pairs <= sparse_part + 3 * causal_pairs(n, n - tail)


def test_a_whole_tail_segment_is_one_sequence_per_head() -> None:
    plan = plan_paged(_index(200), 150, 64, 64)
    assert plan.seqs_per_head == 1 and plan.seq_lens.tolist() == [200] * 3
    assert plan.kept_pairs == 3 * causal_pairs(200, 150)


def test_a_shape_plan_is_sinks_local_and_diagonal() -> None:
    index = _index(2048, AShapeParams(n_init=64, n_local=256, block_size=64))
    plan = plan_paged(index, 0, 0, 64)
    _, seq_len, table = _sequences(plan, 3)[31]  # query block 31: sink block, the 4 before, itself
    assert table[: -(-seq_len // 64)] == [0, 27, 28, 29, 30, 31]


def test_refuses_columns_odd_block_sizes_and_bad_starts() -> None:
    with pytest.raises(ValueError, match="single key columns"):
        plan_paged(_index(1000, VerticalSlashParams(n_vertical=20, n_slash=20, block_size=64)), 0, 0, 64)
    with pytest.raises(ValueError, match="do not divide"):
        plan_paged(_index(1000), 0, 0, 48)
    with pytest.raises(ValueError, match="outside"):
        plan_paged(_index(1000), 1000, 0, 64)
