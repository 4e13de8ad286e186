"""Shared inputs for the sparse attention tests: random tensors and pattern cases."""

from __future__ import annotations

import torch

from attention_backends.patterns import AShapeParams, BlockSparseParams, FlexPrefillParams, VerticalSlashParams

SMALL_BLOCK = 16

# small budgets relative to the test lengths, so every pattern is really sparse
SPARSE_CASES = [
    AShapeParams(n_init=10, n_local=40, block_size=SMALL_BLOCK),
    BlockSparseParams(top_k=3, block_size=SMALL_BLOCK),
    VerticalSlashParams(n_vertical=12, n_slash=20, n_sink=4, n_recent=8, last_q=16, block_size=SMALL_BLOCK),
    FlexPrefillParams(min_budget=16, n_sink=4, n_recent=8, block_size=SMALL_BLOCK),
]


def full_budget_cases(seq_len: int) -> list:
    """Parameters that keep every causal pair at ``seq_len``."""
    return [
        AShapeParams(n_init=0, n_local=seq_len + 1, block_size=SMALL_BLOCK),
        BlockSparseParams(top_k=seq_len, block_size=SMALL_BLOCK),
        VerticalSlashParams(n_vertical=1, n_slash=seq_len, block_size=SMALL_BLOCK),
        FlexPrefillParams(min_budget=seq_len, block_size=SMALL_BLOCK),
    ]


def random_qkv(
    seq_len: int, *, q_heads: int = 4, kv_heads: int = 2, head_dim: int = 16, dtype: torch.dtype = torch.float32, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random ``q [Hq, N, D]``, ``k, v [Hkv, N, D]`` with peaky logits (scaled up) so sparsity matters."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(q_heads, seq_len, head_dim, generator=gen) * 2.0
    k = torch.randn(kv_heads, seq_len, head_dim, generator=gen)
    v = torch.randn(kv_heads, seq_len, head_dim, generator=gen)
    return q.to(dtype), k.to(dtype), v.to(dtype)
