"""Chunk landmarks and outlier chunks of post-RoPE keys (ShadowKV, Sun et al. 2024).

The keys of a sequence are cut into chunks of ``chunk`` consecutive tokens (default 8); a
chunk's *landmark* is the mean of its post-RoPE keys, and a decode query scores whole chunks
through their landmarks. A landmark represents its chunk well only when the chunk's keys point
the same way, so the chunks whose keys are *least similar to their own landmark* (lowest mean
cosine similarity) are *outliers*: a fixed number of them per KV head is kept exactly and always
attended. Only complete chunks get landmarks; an incomplete trailing chunk belongs to the exact
local window.
"""

from __future__ import annotations

import torch

DEFAULT_CHUNK = 8


def num_complete_chunks(seq_len: int, chunk: int = DEFAULT_CHUNK) -> int:
    """Number of complete chunks in ``seq_len`` tokens."""
    if chunk <= 0:
        raise ValueError(f"chunk must be positive; got {chunk}")
    return seq_len // chunk


def _chunked(k: torch.Tensor, chunk: int) -> torch.Tensor:
    """``[Hkv, N, D] -> [Hkv, C, chunk, D]`` over the complete chunks (float32)."""
    if k.dim() != 3:
        raise ValueError(f"keys must be [kv_heads, seq_len, head_dim]; got {tuple(k.shape)}")
    hkv, n, d = k.shape
    c = num_complete_chunks(n, chunk)
    return k[:, : c * chunk].float().reshape(hkv, c, chunk, d)


def chunk_landmarks(k_post_rope: torch.Tensor, chunk: int = DEFAULT_CHUNK) -> torch.Tensor:
    """Mean post-RoPE key of each complete chunk: ``[Hkv, N, D] -> float32 [Hkv, N // chunk, D]``."""
    return _chunked(k_post_rope, chunk).mean(dim=2)


def chunk_self_similarity(k_post_rope: torch.Tensor, chunk: int = DEFAULT_CHUNK, eps: float = 1e-8) -> torch.Tensor:
    """Mean cosine similarity of each chunk's keys to its landmark: ``float32 [Hkv, N // chunk]`` in ``[-1, 1]``."""
    keys = _chunked(k_post_rope, chunk)
    mark = keys.mean(dim=2, keepdim=True)
    cos = (keys * mark).sum(-1) / (keys.norm(dim=-1) * mark.norm(dim=-1)).clamp(min=eps)
    return cos.mean(dim=2)


def outlier_chunks(k_post_rope: torch.Tensor, count: int, chunk: int = DEFAULT_CHUNK, *, exclude_from: int | None = None) -> torch.Tensor:
    """Ids of the ``count`` least self-similar complete chunks per KV head, sorted: ``int64 [Hkv, count']``.

    ``count' = min(count, candidates)``; ``exclude_from`` (a chunk id) restricts the candidates to
    chunks ``< exclude_from`` (e.g. chunks that will still be in the exact local window).
    """
    if count < 0:
        raise ValueError(f"count must be >= 0; got {count}")
    sim = chunk_self_similarity(k_post_rope, chunk)
    if exclude_from is not None:
        sim = sim[:, : max(exclude_from, 0)]
    k = min(count, sim.shape[1])
    ids = torch.topk(-sim, k, dim=1).indices if k else torch.empty(sim.shape[0], 0, dtype=torch.int64, device=sim.device)
    return ids.sort(dim=1).values


def chunk_positions(chunk_ids: torch.Tensor, chunk: int = DEFAULT_CHUNK) -> torch.Tensor:
    """Token positions of chunks: ``int64 [..., K] -> [..., K * chunk]`` (chunk-major, ascending within a chunk)."""
    offs = torch.arange(chunk, device=chunk_ids.device)
    return (chunk_ids.unsqueeze(-1) * chunk + offs).flatten(-2)
