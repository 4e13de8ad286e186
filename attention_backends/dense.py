"""Dense causal attention (PyTorch SDPA): the baseline every sparse pattern is measured against."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .inputs import check_qkv


def dense_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float | None = None
) -> torch.Tensor:
    """Causal SDPA with GQA: ``q [Hq, N, D]``, ``k, v [Hkv, N, D]`` -> ``[Hq, N, D]`` in ``q.dtype``.

    Uses PyTorch's fused kernels (flash attention on CUDA and on CPU), so memory stays O(N).
    """
    shape = check_qkv(q, k, v, scale=scale)
    out = F.scaled_dot_product_attention(
        q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), is_causal=True, scale=shape.scale, enable_gqa=True
    )
    return out.squeeze(0)
