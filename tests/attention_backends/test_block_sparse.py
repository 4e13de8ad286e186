import torch

import pytest

from attention_backends.block_sparse import (
    POOL_CHUNK_ELEMS,
    estimate_block_sparse,
    estimate_block_sparse_rows,
    mean_pool_blocks,
    pooled_block_scores,
)
from attention_backends.patterns import BlockSparseParams

from sparse_cases import random_qkv


def test_mean_pool_handles_a_short_last_block():
    x = torch.arange(10, dtype=torch.float32).view(1, 10, 1)
    assert mean_pool_blocks(x, 4).flatten().tolist() == [1.5, 5.5, 8.5]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_mean_pool_over_several_chunks_sums_in_float32(dtype):
    blocks_per_chunk = POOL_CHUNK_ELEMS // (64 * 8)
    n = 64 * (2 * blocks_per_chunk + 3) + 37  # three chunks of blocks and a short last block
    x = torch.randn(3, n, 8, generator=torch.Generator().manual_seed(0)).to(dtype)
    pooled = mean_pool_blocks(x, 64)
    full = n // 64
    expected = x[:, : full * 64].double().reshape(3, full, 64, 8).mean(dim=2)
    assert pooled.dtype == torch.float32 and pooled.shape == (3, full + 1, 8)
    torch.testing.assert_close(pooled[:, :full].double(), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(pooled[:, full].double(), x[:, full * 64 :].double().mean(dim=1), rtol=0, atol=1e-6)


def test_pooled_scores_are_causal():
    q, k, _ = random_qkv(100)
    logits = pooled_block_scores(q, k, 16, 0.25)
    assert logits.shape == (4, 7, 7)
    assert torch.isinf(logits.triu(1)[..., 0, 1:]).all()
    assert torch.isfinite(logits.tril()[..., -1, :]).all()


def test_budget_sink_diagonal_and_planted_block():
    q, k, _ = random_qkv(320, q_heads=2, kv_heads=1)
    direction = torch.randn(16)
    k[0, 5 * 16 : 6 * 16] = direction * 3  # key block 5 matches every query
    q[:] = direction * 2 + 0.1 * torch.randn_like(q)
    index = estimate_block_sparse(q, k, BlockSparseParams(top_k=3, block_size=16))
    index.validate()
    mask = index.block_mask()
    assert (index.block_counts <= 3).all()
    assert mask.diagonal(dim1=1, dim2=2).all()
    assert mask[:, 1:, 0].all()
    assert mask[:, 7:, 5].all()


def test_deterministic():
    q, k, _ = random_qkv(200)
    a = estimate_block_sparse(q, k, BlockSparseParams(top_k=4, block_size=16))
    b = estimate_block_sparse(q.clone(), k.clone(), BlockSparseParams(top_k=4, block_size=16))
    assert torch.equal(a.block_mask(), b.block_mask())


@pytest.mark.parametrize("n,nq", [(320, 320), (320, 77), (320, 64), (300, 1), (257, 200)])
def test_segment_rows_plan_what_the_zero_padded_square_plans(n, nq):
    """A chunk's own query blocks get the same key blocks as on the square with zero rows before it."""
    q, k, _ = random_qkv(n, q_heads=4, kv_heads=2)
    params = BlockSparseParams(top_k=3, block_size=16)
    square = torch.zeros_like(q)
    square[:, n - nq :] = q[:, n - nq :]
    expected = estimate_block_sparse(square, k, params, scale=0.25)
    pooled_k = mean_pool_blocks(k, 16).repeat_interleave(2, dim=0)
    index = estimate_block_sparse_rows(q[:, n - nq :], pooled_k, n, params, scale=0.25)
    index.validate()
    first = (n - nq) // 16
    assert index.block_ids.shape[:2] == expected.block_ids.shape[:2]
    assert torch.equal(index.block_mask()[:, first:], expected.block_mask()[:, first:])
    assert torch.equal(index.pair_counts(first), expected.pair_counts(first))
    # blocks before the chunk are not planned: their diagonal only
    assert (index.block_counts[:, :first] == 1).all()
    assert torch.equal(index.block_mask()[:, :first], torch.eye(index.num_q_blocks, dtype=torch.bool)[:first].expand(4, -1, -1))


def test_segment_rows_refuse_mismatched_shapes():
    q, k, _ = random_qkv(128, q_heads=4, kv_heads=2)
    params = BlockSparseParams(top_k=3, block_size=16)
    pooled_k = mean_pool_blocks(k, 16).repeat_interleave(2, dim=0)
    with pytest.raises(ValueError, match="do not fit"):
        estimate_block_sparse_rows(q, pooled_k, 100, params, scale=0.25)  # more rows than positions
    with pytest.raises(ValueError, match="do not fit"):
        estimate_block_sparse_rows(q, pooled_k[:2], 128, params, scale=0.25)  # one pooled key per query head
