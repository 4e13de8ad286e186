"""Validation of attention inputs shared by every estimator and executor.

All functions in this package take ``q [Hq, N, D]`` and ``k, v [Hkv, N, D]`` (one sequence,
heads first), causal self-attention over the same ``N`` positions, with grouped-query
attention when ``Hkv < Hq`` (query head ``h`` reads key/value head ``h // (Hq // Hkv)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class AttentionShape:
    """Sizes of one validated attention call."""

    num_q_heads: int
    num_kv_heads: int
    seq_len: int
    head_dim: int
    scale: float

    @property
    def group_size(self) -> int:
        """Query heads per key/value head (GQA)."""
        return self.num_q_heads // self.num_kv_heads


def check_qk(q: torch.Tensor, k: torch.Tensor, *, scale: float | None = None, causal: bool = True) -> AttentionShape:
    """Validate ``q [Hq, N, D]`` and ``k [Hkv, N, D]``; return the sizes and the softmax scale.

    Raises ``ValueError`` with a message naming the problem.
    """
    if not causal:
        raise ValueError("only causal attention is supported (causal=False was given)")
    if q.dim() != 3 or k.dim() != 3:
        raise ValueError(f"q and k must be [heads, seq_len, head_dim]; got q{tuple(q.shape)} k{tuple(k.shape)}")
    hq, n, d = q.shape
    hkv, nk, dk = k.shape
    if nk != n:
        raise ValueError(f"q and k must have the same seq_len (self-attention prefill); got {n} and {nk}")
    if dk != d:
        raise ValueError(f"q and k must have the same head_dim; got {d} and {dk}")
    if n < 1 or d < 1 or hq < 1 or hkv < 1:
        raise ValueError(f"empty attention input: q{tuple(q.shape)} k{tuple(k.shape)}")
    if hq % hkv != 0:
        raise ValueError(f"number of query heads ({hq}) must be a multiple of key/value heads ({hkv})")
    if q.dtype not in SUPPORTED_DTYPES or k.dtype != q.dtype:
        raise ValueError(f"q and k must share a float dtype in {SUPPORTED_DTYPES}; got {q.dtype} and {k.dtype}")
    if q.device != k.device:
        raise ValueError(f"q and k must be on the same device; got {q.device} and {k.device}")
    if scale is None:
        scale = 1.0 / math.sqrt(d)
    if not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"softmax scale must be a positive finite number; got {scale}")
    return AttentionShape(num_q_heads=hq, num_kv_heads=hkv, seq_len=n, head_dim=d, scale=float(scale))


def check_qkv(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float | None = None, causal: bool = True
) -> AttentionShape:
    """Validate ``q [Hq, N, D]``, ``k [Hkv, N, D]`` and ``v [Hkv, N, D]`` (see :func:`check_qk`)."""
    shape = check_qk(q, k, scale=scale, causal=causal)
    if v.shape != k.shape:
        raise ValueError(f"v must have the shape of k {tuple(k.shape)}; got {tuple(v.shape)}")
    if v.dtype != k.dtype or v.device != k.device:
        raise ValueError(f"v must share k's dtype and device; got {v.dtype} on {v.device}")
    return shape


def expand_kv(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """Repeat key/value heads for GQA: ``[Hkv, N, D] -> [Hkv * group_size, N, D]``."""
    return x if group_size == 1 else x.repeat_interleave(group_size, dim=0)
