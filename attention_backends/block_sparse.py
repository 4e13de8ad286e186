"""Block-sparse index (MInference): top-k key blocks per query block from pooled q/k.

Queries and keys are mean-pooled over blocks of ``block_size`` tokens; the pooled scores
``pool(q) pool(k)^T * scale`` rank the causal key blocks of each query block, and the
``top_k`` best are kept. The diagonal block is always kept, and the first (sink) block whenever ``top_k >= 2``.
The pooled scores are shared with FlexPrefill's query-aware branch.
"""

from __future__ import annotations

import torch

from .inputs import check_qk, expand_kv
from .patterns import BlockSparseParams
from .sparse_index import SparseIndex


POOL_CHUNK_ELEMS = 1 << 18
"""Elements widened to float32 at a time when pooling (1 MiB): the copy stays in cache. ATen's
widening sum over a whole bf16 ``[9, 32768, 64]`` tensor runs ~6x slower on CPU (measured)."""


def mean_pool_blocks(x: torch.Tensor, block_size: int) -> torch.Tensor:
    """Mean over consecutive blocks of rows: ``[H, N, D] -> float32 [H, ceil(N / B), D]`` (last block may be short).

    Sums in float32, a cache-sized chunk of blocks at a time.
    """
    h, n, d = x.shape
    full = n // block_size
    out = torch.empty(h, -(-n // block_size), d, dtype=torch.float32, device=x.device)
    blocks = x[:, : full * block_size].reshape(h, full, block_size, d)
    step = max(POOL_CHUNK_ELEMS // (block_size * d), 1)
    for head in range(h):
        for b0 in range(0, full, step):
            b1 = min(b0 + step, full)
            torch.sum(blocks[head, b0:b1].float(), dim=1, out=out[head, b0:b1])
    out[:, :full] /= block_size
    if full * block_size < n:
        out[:, full] = x[:, full * block_size :].mean(dim=1, dtype=torch.float32)
    return out


def pooled_block_scores(q: torch.Tensor, k: torch.Tensor, block_size: int, scale: float) -> torch.Tensor:
    """Causal pooled logits ``float32 [Hq, nQB, nKB]``; key blocks after the query block are ``-inf``.

    ``q [Hq, N, D]``, ``k [Hkv, N, D]``; GQA key heads are repeated to the query heads.
    """
    group = q.shape[0] // k.shape[0]
    pq = mean_pool_blocks(q, block_size)
    pk = expand_kv(mean_pool_blocks(k, block_size), group)
    logits = torch.matmul(pq, pk.transpose(1, 2)) * scale
    nblocks = logits.shape[-1]
    future = torch.ones(nblocks, nblocks, dtype=torch.bool, device=q.device).triu(1)
    return logits.masked_fill(future, float("-inf"))


def estimate_block_sparse(
    q: torch.Tensor, k: torch.Tensor, params: BlockSparseParams, *, scale: float | None = None
) -> SparseIndex:
    """Block-sparse index for ``q [Hq, N, D]``, ``k [Hkv, N, D]``: at most ``top_k`` key blocks per query block."""
    shape = check_qk(q, k, scale=scale)
    logits = pooled_block_scores(q, k, params.block_size, shape.scale)
    nblocks = logits.shape[-1]
    # the diagonal block ranks first, the sink block second
    diagonal = torch.eye(nblocks, dtype=torch.bool, device=q.device)
    logits[..., 0] = torch.finfo(torch.float32).max
    logits = logits.masked_fill(diagonal, float("inf"))
    top = torch.topk(logits, min(params.top_k, nblocks), dim=-1)
    return SparseIndex.from_block_lists(top.indices, top.values > float("-inf"), shape.seq_len, params.block_size)
