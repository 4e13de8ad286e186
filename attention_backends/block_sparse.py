"""Block-sparse index (MInference): top-k key blocks per query block from pooled q/k.

Queries and keys are mean-pooled over blocks of ``block_size`` tokens; the pooled scores
``pool(q) pool(k)^T * scale`` rank the causal key blocks of each query block, and the
``top_k`` best are kept. The diagonal block is always kept, and the first (sink) block whenever ``top_k >= 2``.
The pooled scores are shared with FlexPrefill's query-aware branch. A prefill chunk's index is
planned for its own query blocks only (:func:`estimate_block_sparse_rows`): the choice of each
query block depends on that block's rows and the keys alone.
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


def pool_query_rows(q: torch.Tensor, seq_len: int, block_size: int) -> tuple[torch.Tensor, int]:
    """Pooled query blocks of the last rows of a causal square: ``(float32 [Hq, nQB - first, D], first)``.

    ``q [Hq, Nq, D]`` are the queries at positions ``[N - Nq, N)`` (``N = seq_len``, e.g. a prefill
    chunk's); ``first = (N - Nq) // B`` is the first query block they touch. Rows of that block
    before ``N - Nq`` count as zero, so the pooled blocks equal those of the zero-padded square.
    """
    h, nq, d = q.shape
    first = (seq_len - nq) // block_size
    lead = seq_len - nq - first * block_size
    if lead:
        q = torch.cat([q.new_zeros(h, lead, d), q], dim=1)
    return mean_pool_blocks(q, block_size), first


def causal_block_logits(pq: torch.Tensor, pk: torch.Tensor, first: int, scale: float) -> torch.Tensor:
    """Pooled logits ``float32 [Hq, M, nKB]`` of query blocks ``first .. first + M - 1``; key blocks after each are ``-inf``.

    ``pq [Hq, M, D]`` pooled queries, ``pk [Hq, nKB, D]`` pooled keys (already one per query head).
    """
    logits = torch.matmul(pq, pk.transpose(1, 2)) * scale
    future = torch.ones(logits.shape[1], logits.shape[2], dtype=torch.bool, device=pq.device).triu(first + 1)
    return logits.masked_fill(future, float("-inf"))


def pooled_block_scores(q: torch.Tensor, k: torch.Tensor, block_size: int, scale: float) -> torch.Tensor:
    """Causal pooled logits ``float32 [Hq, nQB, nKB]``; key blocks after the query block are ``-inf``.

    ``q [Hq, N, D]``, ``k [Hkv, N, D]``; GQA key heads are repeated to the query heads.
    """
    group = q.shape[0] // k.shape[0]
    return causal_block_logits(mean_pool_blocks(q, block_size), expand_kv(mean_pool_blocks(k, block_size), group), 0, scale)


def top_block_index(logits: torch.Tensor, first: int, top_k: int, seq_len: int, block_size: int) -> SparseIndex:
    """Index keeping the ``top_k`` best key blocks of query blocks ``first ..`` (``logits [H, M, nKB]``).

    The diagonal block ranks first, the sink block second. Query blocks before ``first`` are not
    planned: they keep their diagonal block only and must not be executed (``rows_from``).
    """
    h, planned, nblocks = logits.shape
    diagonal = torch.arange(nblocks, device=logits.device) == torch.arange(first, first + planned, device=logits.device).unsqueeze(1)
    logits[..., 0] = torch.finfo(torch.float32).max
    logits = logits.masked_fill(diagonal, float("inf"))
    top = torch.topk(logits, min(top_k, nblocks), dim=-1)
    ids, valid = top.indices, top.values > float("-inf")
    if first:
        earlier = torch.arange(first, device=logits.device).view(1, first, 1).expand(h, first, ids.shape[-1])
        ids = torch.cat([earlier, ids], dim=1)
        only_diagonal = torch.zeros(h, first, valid.shape[-1], dtype=torch.bool, device=logits.device)
        only_diagonal[..., 0] = True
        valid = torch.cat([only_diagonal, valid], dim=1)
    return SparseIndex.from_block_lists(ids, valid, seq_len, block_size)


def estimate_block_sparse(
    q: torch.Tensor, k: torch.Tensor, params: BlockSparseParams, *, scale: float | None = None
) -> SparseIndex:
    """Block-sparse index for ``q [Hq, N, D]``, ``k [Hkv, N, D]``: at most ``top_k`` key blocks per query block."""
    shape = check_qk(q, k, scale=scale)
    logits = pooled_block_scores(q, k, params.block_size, shape.scale)
    return top_block_index(logits, 0, params.top_k, shape.seq_len, params.block_size)


def estimate_block_sparse_rows(
    q: torch.Tensor, pooled_k: torch.Tensor, seq_len: int, params: BlockSparseParams, *, scale: float
) -> SparseIndex:
    """The block-sparse index of a prefill segment, planned for its own query blocks only.

    ``q [Hq, Nq, D]`` are the queries at positions ``[N - Nq, N)``, ``pooled_k float32 [Hq, nKB, D]``
    the pooled keys of all ``N`` positions (:func:`mean_pool_blocks`, one per query head). The
    segment's query blocks get exactly what :func:`estimate_block_sparse` gives them on the
    zero-padded square, at a cost in ``Nq`` instead of ``N`` rows; earlier blocks keep their
    diagonal only (never executed).
    """
    if not 0 < q.shape[1] <= seq_len or pooled_k.shape[:2] != (q.shape[0], -(-seq_len // params.block_size)):
        raise ValueError(f"segment q {tuple(q.shape)} and pooled keys {tuple(pooled_k.shape)} do not fit "
                         f"{seq_len} positions in blocks of {params.block_size}")
    pq, first = pool_query_rows(q, seq_len, params.block_size)
    logits = causal_block_logits(pq, pooled_k, first, scale)
    return top_block_index(logits, first, params.top_k, seq_len, params.block_size)
