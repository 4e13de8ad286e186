"""Decode-step token selection from chunk landmarks under a token budget (ShadowKV, Sun et al. 2024).

One decode query ``q [Hq, D]`` scores every complete chunk of the compressed history through its
landmark (``q . landmark * scale``); the best chunks are read exactly, together with the tokens
that are always kept: attention sinks, the local window and the outlier chunks.

Conventions (all positions are per KV head; query head ``h`` reads KV head ``h // (Hq // Hkv)``):

* **Local window** = positions ``>= local_start(N, n_local, chunk)``: at least ``n_local`` tokens,
  starting on a chunk boundary (so the chunk grid of the compressed history is fixed). It always
  contains the incomplete trailing chunk, which has no landmark.
* **Sinks** = positions ``< n_sink`` (StreamingLLM: 4 tokens is enough to keep the sink effect).
* **GQA aggregation**: each query head's scores are a softmax over chunks; a chunk's score for a KV
  head is the *max* over the query heads of its group (a chunk is read when any head of the
  group needs it; a sum would let one head's diffuse mass outvote another head's sharp peak).
* **Budget** = the total number of positions read per KV head, always-kept ones included. Chunks
  are taken in score order while their not-yet-kept positions fit, so every head reads at most
  ``budget`` positions and, when the context is larger, more than ``budget - chunk``. With
  ``budget >= N`` every position is selected (decode is then exact).

Defaults: chunk 8, budget 2048 (ShadowKV's), 4 sinks, a 64-token local window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .landmarks import DEFAULT_CHUNK, Int8Landmarks, chunk_positions

Landmarks = torch.Tensor | Int8Landmarks
"""Chunk landmarks ``[Hkv, C, D]``: float, or int8 as the stores keep them."""

DEFAULT_BUDGET = 2048
DEFAULT_N_SINK = 4
DEFAULT_N_LOCAL = 64


@dataclass(frozen=True)
class Selection:
    """Positions one decode step reads: ``mask bool [Hkv, N]`` and the scored chunks it took ``chunk_mask bool [Hkv, C]``."""

    mask: torch.Tensor
    chunk_mask: torch.Tensor

    def counts(self) -> torch.Tensor:
        """Selected positions per KV head: ``int64 [Hkv]``."""
        return self.mask.sum(dim=1)

    def positions(self, head: int) -> torch.Tensor:
        """Sorted, unique positions of one KV head: ``int64 [count]``."""
        return self.mask[head].nonzero().squeeze(1)

    def positions_list(self) -> list[torch.Tensor]:
        return [self.positions(h) for h in range(self.mask.shape[0])]


def local_start(seq_len: int, n_local: int, chunk: int = DEFAULT_CHUNK) -> int:
    """First position of the local window: the chunk boundary at or before ``seq_len - n_local`` (>= 0)."""
    if n_local < 0 or chunk <= 0:
        raise ValueError(f"n_local must be >= 0 and chunk > 0; got {n_local}, {chunk}")
    return max(0, ((seq_len - n_local) // chunk) * chunk)


def always_mask(
    num_kv_heads: int,
    seq_len: int,
    *,
    n_sink: int = DEFAULT_N_SINK,
    n_local: int = DEFAULT_N_LOCAL,
    chunk: int = DEFAULT_CHUNK,
    outliers: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Positions kept whatever the query: sinks, local window and ``outliers [Hkv, O]`` chunks: ``bool [Hkv, N]``."""
    mask = torch.zeros(num_kv_heads, seq_len, dtype=torch.bool, device=device)
    mask[:, : min(n_sink, seq_len)] = True
    mask[:, local_start(seq_len, n_local, chunk) :] = True
    if outliers is not None and outliers.numel():
        if outliers.shape[0] != num_kv_heads:
            raise ValueError(f"outliers must be [{num_kv_heads}, O]; got {tuple(outliers.shape)}")
        pos = chunk_positions(outliers.to(device, torch.int64), chunk)
        if pos.max() >= seq_len:
            raise ValueError("an outlier chunk lies beyond the sequence")
        mask.scatter_(1, pos, True)
    return mask


def chunk_scores(q: torch.Tensor, landmarks: Landmarks, scale: float | None = None) -> torch.Tensor:
    """Approximate attention of ``q [Hq, D]`` over ``landmarks [Hkv, C, D]``, GQA max-aggregated: ``float32 [Hkv, C]``.

    ``landmarks``: float (scored in float32) or the stores' :class:`Int8Landmarks` (scored as the C kernel does).
    """
    if q.dim() != 2 or len(landmarks.shape) != 3 or q.shape[1] != landmarks.shape[2]:
        raise ValueError(f"q must be [Hq, D] and landmarks [Hkv, C, D]; got {tuple(q.shape)}, {tuple(landmarks.shape)}")
    hq, d = q.shape
    hkv, c, _ = landmarks.shape
    if hq % hkv:
        raise ValueError(f"query heads ({hq}) must be a multiple of KV heads ({hkv})")
    if c == 0:
        return torch.zeros(hkv, 0, device=landmarks.device)
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    qg = q.float().to(landmarks.device).reshape(hkv, hq // hkv, d)
    if isinstance(landmarks, Int8Landmarks):
        logits = landmarks.logits(qg, scale)
    else:
        logits = torch.matmul(qg, landmarks.float().transpose(1, 2)) * scale
    probs = torch.softmax(logits, dim=-1)
    return probs.amax(dim=1)


def take_chunks_within(scores: torch.Tensor, new_counts: torch.Tensor, room: torch.Tensor | int) -> torch.Tensor:
    """Best chunks per head whose summed ``new_counts`` fit in ``room``: ``bool [Hkv, C]``.

    ``scores, new_counts [Hkv, C]``; chunks adding nothing are never taken; the longest prefix of
    the score order that fits is taken. Only that prefix is ordered (a partial sort: ``topk``):
    it holds at most ``room // full`` chunks of the largest count plus every shorter one.
    """
    hkv, c = scores.shape
    room_t = torch.as_tensor(room, device=scores.device).reshape(-1, 1)
    full = int(new_counts.max()) if new_counts.numel() else 0
    if full == 0:
        return torch.zeros(hkv, c, dtype=torch.bool, device=scores.device)
    shorter = int((new_counts < full).sum(dim=1).max())
    k = min(c, int(room_t.max()) // full + shorter + 1)
    order = scores.topk(k, dim=1).indices  # descending
    counts = new_counts.gather(1, order)
    take_sorted = (counts.cumsum(dim=1) <= room_t) & (counts > 0)
    return torch.zeros(hkv, c, dtype=torch.bool, device=scores.device).scatter_(1, order, take_sorted)


def best_allowed(scores: torch.Tensor, allowed: torch.Tensor, limit: torch.Tensor) -> torch.Tensor:
    """Per row, the ``limit[h]`` best-scoring ``allowed`` entries of ``scores [Hkv, C]``: ``bool [Hkv, C]`` (partial sort)."""
    k = min(int(limit.max()), scores.shape[1]) if limit.numel() else 0
    if k <= 0:
        return torch.zeros_like(allowed)
    order = scores.masked_fill(~allowed, float("-inf")).topk(k, dim=1).indices
    take_sorted = torch.arange(k, device=scores.device).unsqueeze(0) < limit.reshape(-1, 1)
    return torch.zeros_like(allowed).scatter_(1, order, take_sorted) & allowed


def select_positions(
    q: torch.Tensor,
    landmarks: Landmarks,
    seq_len: int,
    *,
    chunk: int = DEFAULT_CHUNK,
    budget: int = DEFAULT_BUDGET,
    n_sink: int = DEFAULT_N_SINK,
    n_local: int = DEFAULT_N_LOCAL,
    outliers: torch.Tensor | None = None,
    scale: float | None = None,
) -> Selection:
    """Positions a decode query reads: top chunks by landmark score within ``budget`` plus the always-kept ones.

    ``q [Hq, D]``, ``landmarks [Hkv, C, D]`` covering at least the chunks before the local window
    of ``seq_len`` tokens, ``outliers [Hkv, O]`` chunk ids. Raises ``ValueError`` when the
    always-kept positions alone exceed the budget.
    """
    hkv, c, _ = landmarks.shape
    device = landmarks.device
    start = local_start(seq_len, n_local, chunk)
    if c * chunk < start or c > seq_len // chunk:
        raise ValueError(f"landmarks must cover chunks [0, {start // chunk}) and no more than {seq_len // chunk}; got {c}")
    keep = always_mask(hkv, seq_len, n_sink=n_sink, n_local=n_local, chunk=chunk, outliers=outliers, device=device)
    room = budget - keep.sum(dim=1)
    if bool((room < 0).any()):
        raise ValueError(f"budget {budget} is smaller than the always-kept positions ({int(keep.sum(1).max())})")
    new_counts = (~keep[:, : c * chunk]).reshape(hkv, c, chunk).sum(dim=2)
    taken = take_chunks_within(chunk_scores(q, landmarks, scale), new_counts, room)
    mask = keep.clone()
    mask[:, : c * chunk] |= taken.repeat_interleave(chunk, dim=1)
    return Selection(mask=mask, chunk_mask=taken)
