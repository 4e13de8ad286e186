"""Decode-time KV statistics per head and the placeholder KV policy rule.

ShadowKV (Sun et al., 2024) keeps pre-RoPE keys in a low-rank form, so the relative error of a
rank-r reconstruction of a head's pre-RoPE keys says how well it compresses. Streaming heads
(A-shape prefill) can drop the middle of the cache (StreamingLLM). The rule here is a
placeholder that the KV-cache issue replaces with real criteria: ``streaming`` for A-shape
heads, ``full`` for everything else; the statistics are recorded either way.
"""

from __future__ import annotations

import torch

from attention_backends import AShapeParams, PatternParams

from .schema import KvChoice

LOWRANK_RANK = 16


@torch.no_grad()
def lowrank_error(k_pre_rope: torch.Tensor, rank: int = LOWRANK_RANK) -> torch.Tensor:
    """Relative Frobenius error of the best rank-``rank`` approximation per KV head: ``[Hkv, N, D] -> float32 [Hkv]``."""
    if k_pre_rope.dim() != 3:
        raise ValueError(f"keys must be [heads, seq_len, head_dim]; got {tuple(k_pre_rope.shape)}")
    if rank <= 0:
        raise ValueError(f"rank must be positive; got {rank}")
    s = torch.linalg.svdvals(k_pre_rope.double())
    total = (s**2).sum(-1).clamp(min=1e-300)
    tail = (s[:, rank:] ** 2).sum(-1)
    return (tail / total).sqrt().float()


def kv_policy(prefill: PatternParams, lowrank_err: float, rank: int = LOWRANK_RANK) -> KvChoice:
    """Placeholder policy for one head from its prefill pattern, with its statistics."""
    policy = "streaming" if isinstance(prefill, AShapeParams) else "full"
    return KvChoice(policy=policy, params={f"lowrank_error_r{rank}": round(float(lowrank_err), 6)})
