"""Exact attention of one decode query over a gathered subset of keys/values per KV head.

Sparse decode (ShadowKV, Quest, NOSA) reads, for each KV head, a different set of positions.
The subset is gathered into a padded ``[Hkv, M, D]`` with a validity mask, and the query heads
of each GQA group (query head ``h`` reads KV head ``h // (Hq // Hkv)``) attend over it with the
usual softmax scale. With every position selected this is dense decode attention.
"""

from __future__ import annotations

import math

import torch

from .selection import Selection


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[int, int, int]:
    if q.dim() != 2 or k.dim() != 3 or v.shape != k.shape or q.shape[1] != k.shape[2]:
        raise ValueError(f"q must be [Hq, D], k and v [Hkv, M, D]; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    hq, d = q.shape
    hkv = k.shape[0]
    if hq % hkv:
        raise ValueError(f"query heads ({hq}) must be a multiple of KV heads ({hkv})")
    return hq, hkv, d


def sparse_decode_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor | None = None, scale: float | None = None
) -> torch.Tensor:
    """``softmax(q k^T * scale) v`` per GQA group over ``k, v [Hkv, M, D]`` where ``valid [Hkv, M]``: ``[Hq, D]`` in q's dtype.

    Computed in float32; a head with no valid key returns zeros.
    """
    hq, hkv, d = _check(q, k, v)
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    qg = q.float().reshape(hkv, hq // hkv, d)
    logits = torch.matmul(qg, k.float().transpose(1, 2)) * scale
    if valid is not None:
        logits = logits.masked_fill(~valid.unsqueeze(1), float("-inf"))
    probs = torch.softmax(logits, dim=-1).nan_to_num(0.0)
    return torch.matmul(probs, v.float()).reshape(hq, d).to(q.dtype)


def dense_decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Reference: one query ``q [Hq, D]`` over every key of ``k, v [Hkv, N, D]``: ``[Hq, D]``."""
    return sparse_decode_attention(q, k, v, None, scale)


def padded_positions(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Selected positions of ``mask bool [Hkv, N]`` left-packed in ascending order: ``int64 [Hkv, M]`` and ``valid [Hkv, M]``.

    ``M`` is the largest count; padding entries are 0 and invalid.
    """
    counts = mask.sum(dim=1)
    m = int(counts.max()) if counts.numel() else 0
    heads, pos = mask.nonzero(as_tuple=True)  # row-major: by head, then ascending position
    first = torch.cumsum(counts, 0) - counts
    slot = torch.arange(pos.numel(), device=mask.device) - first[heads]
    order = torch.zeros(mask.shape[0], m, dtype=torch.int64, device=mask.device)
    order[heads, slot] = pos
    valid = torch.arange(m, device=mask.device).unsqueeze(0) < counts.unsqueeze(1)
    return order, valid


def gather_padded(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ``x [Hkv, N, D]`` where ``mask [Hkv, N]``, left-packed in position order: ``[Hkv, M, D]`` and ``valid [Hkv, M]``."""
    order, valid = padded_positions(mask)
    gathered = x.gather(1, order.unsqueeze(-1).expand(-1, -1, x.shape[2]).to(x.device))
    return gathered, valid.to(x.device)


def selected_decode_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, selection: Selection, scale: float | None = None
) -> torch.Tensor:
    """Exact attention of ``q [Hq, D]`` over the positions of ``selection`` in full ``k, v [Hkv, N, D]``: ``[Hq, D]``."""
    ks, valid = gather_padded(k, selection.mask)
    vs, _ = gather_padded(v, selection.mask)
    return sparse_decode_attention(q, ks, vs, valid, scale)


@torch.no_grad()
def decode_recall(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Fraction of the exact softmax mass of ``q [Hq, D]`` over ``k [Hkv, N, D]`` on ``mask [Hkv, N]``: ``float32 [Hq]``."""
    hq, hkv, d = _check(q, k, k)
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    qg = q.float().reshape(hkv, hq // hkv, d)
    probs = torch.softmax(torch.matmul(qg, k.float().transpose(1, 2)) * scale, dim=-1)
    return (probs * mask.unsqueeze(1)).sum(-1).reshape(hq)
