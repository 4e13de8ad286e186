"""Locality-constrained sparse decode for offloaded KV (NOSA-style) and a resident-chunk cache model.

When the selected chunks live in host memory, every newly selected chunk is a transfer. NOSA
constrains the selection to change slowly between consecutive decode steps, so that a small
cache of chunks resident on the accelerator serves most reads. Here the constraint is explicit:
at each step at most ``max_change`` chunks *not selected at the previous step* are admitted
(the best-scoring ones of the unconstrained top-k); the rest of the set is the best-scoring
chunks of the previous set. The first step (no previous set) is unconstrained. The chunk count
per KV head is ``(budget - always_kept) // chunk``, so the token budget holds as in
:mod:`kvcache.selection`.

:class:`kvcache.resident.ResidentChunks` is the fast-tier chunk cache this is designed for.
"""

from __future__ import annotations

import torch

from .landmarks import DEFAULT_CHUNK
from .selection import (DEFAULT_BUDGET, DEFAULT_N_LOCAL, DEFAULT_N_SINK, Landmarks, Selection, always_mask, best_allowed,
                        chunk_scores, local_start)

DEFAULT_MAX_CHANGE = 8
DEFAULT_RESIDENT_CHUNKS = 384


def constrained_chunks(
    scores: torch.Tensor,
    eligible: torch.Tensor,
    count: torch.Tensor | int,
    previous: torch.Tensor | None,
    max_change: int,
) -> torch.Tensor:
    """Chunks for this step: ``bool [Hkv, C]`` with at most ``count`` per head and at most ``max_change`` not in ``previous``.

    ``scores, eligible [Hkv, C]``; ``previous bool [Hkv, C']`` with ``C' <= C`` (chunks completed
    since the last step are new); ``None`` = unconstrained top-``count``.
    """
    if max_change < 0:
        raise ValueError(f"max_change must be >= 0; got {max_change}")
    hkv, c = scores.shape
    count_t = torch.as_tensor(count, device=scores.device).expand(hkv).clamp(min=0)
    top = best_allowed(scores, eligible, count_t)
    if previous is None:
        return top
    if previous.shape[0] != hkv or previous.shape[1] > c:
        raise ValueError(f"previous must be [{hkv}, <= {c}]; got {tuple(previous.shape)}")
    prev = torch.zeros_like(eligible)
    prev[:, : previous.shape[1]] = previous.to(eligible.device)
    candidates = top & ~prev
    admit_n = torch.minimum(candidates.sum(1), torch.full_like(count_t, max_change))
    admitted = best_allowed(scores, candidates, admit_n)
    kept = best_allowed(scores, prev & eligible, count_t - admit_n)
    return admitted | kept


def nosa_select_positions(
    q: torch.Tensor,
    landmarks: Landmarks,
    seq_len: int,
    previous: torch.Tensor | None,
    *,
    chunk: int = DEFAULT_CHUNK,
    budget: int = DEFAULT_BUDGET,
    n_sink: int = DEFAULT_N_SINK,
    n_local: int = DEFAULT_N_LOCAL,
    outliers: torch.Tensor | None = None,
    max_change: int = DEFAULT_MAX_CHANGE,
    scale: float | None = None,
) -> Selection:
    """Like :func:`kvcache.selection.select_positions`, with the chunk set constrained by ``previous [Hkv, C']`` (its ``chunk_mask``)."""
    hkv, c, _ = landmarks.shape
    if c * chunk < local_start(seq_len, n_local, chunk) or c > seq_len // chunk:
        raise ValueError(f"landmarks ({c} chunks) do not match a sequence of {seq_len} tokens")
    keep = always_mask(hkv, seq_len, n_sink=n_sink, n_local=n_local, chunk=chunk, outliers=outliers, device=landmarks.device)
    room = budget - keep.sum(dim=1)
    if bool((room < 0).any()):
        raise ValueError(f"budget {budget} is smaller than the always-kept positions ({int(keep.sum(1).max())})")
    eligible = (~keep[:, : c * chunk]).reshape(hkv, c, chunk).any(dim=2)
    taken = constrained_chunks(chunk_scores(q, landmarks, scale), eligible, room // chunk, previous, max_change)
    mask = keep.clone()
    mask[:, : c * chunk] |= taken.repeat_interleave(chunk, dim=1)
    return Selection(mask=mask, chunk_mask=taken)
