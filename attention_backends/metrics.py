"""Sparsity metrics shared by tests, benchmarks and the profiler.

``density``: fraction of the causal (query, key) pairs an index computes.
``attention_recall``: per head, the mean over query rows of the exact softmax mass that falls
on the kept pairs (1.0 = the sparse pattern loses nothing). Computed in row chunks, so memory
is O(chunk * N); long sequences can be scored on a sample of rows (:func:`sample_rows`).
"""

from __future__ import annotations

import torch

from .inputs import check_qk, expand_kv
from .sparse_index import SparseIndex


def density(index: SparseIndex) -> float:
    """Fraction of all causal pairs (summed over heads) that ``index`` keeps, in ``(0, 1]``."""
    return index.density()


def sample_rows(seq_len: int, count: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``min(count, N)`` evenly spaced query rows including the first and last: ``int64 [R]``."""
    if count <= 0:
        raise ValueError(f"count must be positive; got {count}")
    if count >= seq_len:
        return torch.arange(seq_len, device=device)
    return torch.linspace(0, seq_len - 1, count, device=device).round().long().unique()


def causal_row_probs(q: torch.Tensor, k_expanded: torch.Tensor, rows: torch.Tensor, scale: float) -> torch.Tensor:
    """Exact causal softmax of the query ``rows`` (positions, ``int64 [R]``): ``float32 [Hq, R, N]``.

    ``q [Hq, N, D]``, ``k_expanded float32 [Hq, N, D]`` (key heads already repeated for GQA).
    """
    n = k_expanded.shape[1]
    logits = torch.matmul(q[:, rows].float(), k_expanded.transpose(1, 2)) * scale
    future = torch.arange(n, device=q.device) > rows.unsqueeze(1)
    return torch.softmax(logits.masked_fill_(future, float("-inf")), dim=-1)


@torch.no_grad()
def attention_recall(
    q: torch.Tensor,
    k: torch.Tensor,
    index: SparseIndex,
    *,
    scale: float | None = None,
    rows: torch.Tensor | None = None,
    chunk_elems: int = 1 << 24,
) -> torch.Tensor:
    """Per-head recall ``float32 [Hq]`` of ``index`` against the exact causal softmax of ``q k^T``.

    ``q [Hq, N, D]``, ``k [Hkv, N, D]``; ``rows`` restricts the mean to some query rows
    (all rows by default).
    """
    shape = check_qk(q, k, scale=scale)
    index.check_matches(shape.num_q_heads, shape.seq_len)
    n = shape.seq_len
    rows = torch.arange(n, device=q.device) if rows is None else rows.to(q.device, torch.int64)
    if rows.numel() == 0 or rows.min() < 0 or rows.max() >= n:
        raise ValueError(f"rows must be a non-empty set of positions in [0, {n})")
    kf = expand_kv(k, shape.group_size).float()
    step = max(chunk_elems // (shape.num_q_heads * n), 1)
    total = torch.zeros(shape.num_q_heads, dtype=torch.float64, device=q.device)
    for start in range(0, rows.numel(), step):
        chunk = rows[start : start + step]
        probs = causal_row_probs(q, kf, chunk, shape.scale)
        kept = index.row_mask(chunk).to(q.device)
        total += (probs * kept).sum(dim=(1, 2)).double()
    return (total / rows.numel()).float()
