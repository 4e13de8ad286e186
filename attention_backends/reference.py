"""Exact masked reference: dense softmax restricted to a :class:`SparseIndex` (small N, tests only).

Builds the full ``[H, N, N]`` logits and mask, so it costs O(N^2) memory; it defines what
every sparse executor must compute. Rows that keep no key output zeros.
"""

from __future__ import annotations

import torch

from .inputs import check_qkv, expand_kv
from .sparse_index import SparseIndex


def masked_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, index: SparseIndex, *, scale: float | None = None
) -> torch.Tensor:
    """Attention over the index's kept causal pairs: ``q [Hq, N, D]``, ``k, v [Hkv, N, D]`` -> ``[Hq, N, D]``.

    Computed in float32 and returned in ``q.dtype``.
    """
    shape = check_qkv(q, k, v, scale=scale)
    index.check_matches(shape.num_q_heads, shape.seq_len)
    kf = expand_kv(k, shape.group_size).float()
    vf = expand_kv(v, shape.group_size).float()
    logits = torch.matmul(q.float(), kf.transpose(1, 2)) * shape.scale
    mask = index.to_mask().to(q.device)
    logits = logits.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(logits, dim=-1).nan_to_num(0.0)
    return torch.matmul(probs, vf).to(q.dtype)
