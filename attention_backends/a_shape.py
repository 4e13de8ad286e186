"""A-shape (streaming) index: attention sinks plus a local window.

The static pattern of StreamingLLM (Xiao et al., 2023), used by MInference as its
"A-shape" head type. It needs no estimation from q/k: every head keeps the key blocks
covering the first ``n_init`` tokens and the ``n_local`` tokens before each query row.
"""

from __future__ import annotations

import torch

from .inputs import check_qk
from .patterns import AShapeParams
from .sparse_index import SparseIndex


def a_shape_block_mask(seq_len: int, params: AShapeParams, device: torch.device | str = "cpu") -> torch.Tensor:
    """Block mask ``bool [nQB, nKB]`` of the A-shape pattern (``nQB = nKB = ceil(N / block_size)``)."""
    b = params.block_size
    nblocks = -(-seq_len // b)
    qb = torch.arange(nblocks, device=device).unsqueeze(1)
    kb = torch.arange(nblocks, device=device).unsqueeze(0)
    n_sink_blocks = -(-params.n_init // b)
    first_local = torch.clamp(qb * b - params.n_local + 1, min=0) // b
    return (kb <= qb) & ((kb < n_sink_blocks) | (kb >= first_local))


def estimate_a_shape(
    q: torch.Tensor, k: torch.Tensor, params: AShapeParams, *, scale: float | None = None
) -> SparseIndex:
    """A-shape index for ``q [Hq, N, D]``, ``k [Hkv, N, D]`` (the same for every head).

    Each query block keeps at most ``ceil(n_init / B) + ceil((n_local - 1) / B) + 1`` key
    blocks (``B = block_size``); ``scale`` is accepted for a uniform estimator signature.
    """
    shape = check_qk(q, k, scale=scale)
    return a_shape_index(shape.seq_len, shape.num_q_heads, params, q.device)


def a_shape_index(seq_len: int, num_heads: int, params: AShapeParams, device: torch.device | str = "cpu") -> SparseIndex:
    """:func:`estimate_a_shape` from the shapes alone: the pattern reads no query or key."""
    one = SparseIndex.from_block_mask(a_shape_block_mask(seq_len, params, device).unsqueeze(0), seq_len,
                                      params.block_size)
    return SparseIndex(  # one plan, repeated per head
        seq_len=one.seq_len, block_size=one.block_size,
        block_ids=one.block_ids.repeat(num_heads, 1, 1), block_counts=one.block_counts.repeat(num_heads, 1),
        columns=one.columns.repeat(num_heads, 1, 1), column_counts=one.column_counts.repeat(num_heads, 1))
