"""Chunk landmarks and outlier chunks of post-RoPE keys (ShadowKV, Sun et al. 2024).

The keys of a sequence are cut into chunks of ``chunk`` consecutive tokens (default 8); a
chunk's *landmark* is the mean of its post-RoPE keys, and a decode query scores whole chunks
through their landmarks. A landmark represents its chunk well only when the chunk's keys point
the same way, so the chunks whose keys are *least similar to their own landmark* (lowest mean
cosine similarity) are *outliers*: a fixed number of them per KV head is kept exactly and always
attended. Only complete chunks get landmarks; an incomplete trailing chunk belongs to the exact
local window.

The stores keep landmarks in int8 with one float32 scale per landmark (:class:`Int8Landmarks`):
they only rank chunks (the attention over the chosen ones reads exact keys), yet every decode step
reads all of them, so they are most of a step's reads at long context. A score is then an exact
integer dot product of the int8 landmark with the query quantized to int16, times the two scales
(:meth:`Int8Landmarks.logits`): the C kernel (``csrc/dots.h``) computes the same numbers bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

DEFAULT_CHUNK = 8
LANDMARK_LEVELS = 127
"""Largest int8 magnitude of a quantized landmark (symmetric: -127..127)."""
QUERY_LEVELS = 32767
"""Largest int16 magnitude of a quantized query (symmetric)."""
_TINY = 1e-30  # the smallest row maximum a scale divides by (csrc/dots.h QUANT_TINY)


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


def _symmetric(x: torch.Tensor, levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of float32 ``x [..., D]`` as integers in ``[-levels, levels]`` (float32, round half to even) and
    their scales ``[...]`` (``max |row| / levels``; 0 for a zero row, whose integers are 0). Divisions are
    tensor divisions, the float32 operations the C kernel repeats for queries (``quantize_query`` in
    ``csrc/dots.h``)."""
    amax = x.abs().amax(-1)
    levels_t = torch.full_like(amax, float(levels))
    inv = levels_t.div(amax.clamp_min(_TINY))  # finite for a zero row, whose values stay 0
    return torch.round(x * inv.unsqueeze(-1)).clamp_(-levels, levels), amax.div(levels_t)


def quantize_queries(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Queries ``[..., D]`` as int16 values (held in float32) and one float32 scale per query ``[...]``."""
    return _symmetric(q.float(), QUERY_LEVELS)


@dataclass(frozen=True)
class Int8Landmarks:
    """Chunk landmarks as the stores keep them: ``values int8 [Hkv, C, D]``, ``scale float32 [Hkv, C]``.

    A landmark is ``values * scale`` (``scale = max |landmark| / 127``): 1 byte per dim plus 4 per
    landmark, against 2 per dim in bfloat16.
    """

    values: torch.Tensor
    scale: torch.Tensor

    @classmethod
    def of(cls, x: torch.Tensor) -> "Int8Landmarks":
        """Quantize float landmarks ``x [Hkv, C, D]``."""
        if x.dim() != 3:
            raise ValueError(f"landmarks must be [kv_heads, chunks, head_dim]; got {tuple(x.shape)}")
        ints, scale = _symmetric(x.float(), LANDMARK_LEVELS)
        return cls(ints.to(torch.int8), scale)

    @property
    def shape(self) -> torch.Size:
        return self.values.shape

    @property
    def device(self) -> torch.device:
        return self.values.device

    def prefix(self, chunks: int) -> "Int8Landmarks":
        """The first ``chunks`` landmarks of every head."""
        return Int8Landmarks(self.values[:, :chunks], self.scale[:, :chunks])

    def dequantized(self) -> torch.Tensor:
        """``float32 [Hkv, C, D]``."""
        return self.values.float() * self.scale.unsqueeze(-1)

    def logits(self, qg: torch.Tensor, scale: float) -> torch.Tensor:
        """``scale * q . landmark`` for grouped queries ``qg [Hkv, G, D]``: ``float32 [Hkv, G, C]``.

        ``((dot(q16, values) * q_scale) * landmark_scale) * scale`` in float32, where the dot product of
        the int16 query and the int8 landmark is exact (float64 holds it: at most 64 x 32767 x 127 per
        64 dims), in this order: the kernel's numbers.
        """
        q16, q_scale = quantize_queries(qg.to(self.device))
        dots = torch.matmul(q16.double(), self.values.double().transpose(1, 2)).float()
        return dots * q_scale.unsqueeze(-1) * self.scale.unsqueeze(1) * torch.tensor(scale, dtype=torch.float32)
