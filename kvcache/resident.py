"""The resident chunk tier of NOSA-style decode: per KV head, an LRU of value chunks on the fast tier.

NOSA constrains the selected chunks to change slowly between decode steps (:mod:`kvcache.nosa`)
so that a small set of chunks kept on the accelerator serves most reads and only the misses
cross from the offload tier. :class:`ResidentChunks` is that set's bookkeeping, in tensors: per
KV head ``capacity`` slots, the chunk each slot holds and the step that last used it. Each
:meth:`ResidentChunks.step` marks the selected chunks already resident as hits, gives the missed
ones the least recently used slots not needed by this step, and returns the ``(head, chunk,
slot)`` fills the caller copies from the offload tier. A head that selects more chunks than it
has slots reads the excess straight from the offload tier, uncached (counted as misses too).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ChunkStep:
    """One step: hits, misses (filled or read uncached), bytes moved, and the fills ``[F]`` to copy."""

    hits: int
    misses: int
    bytes_moved: int
    fill_heads: torch.Tensor
    fill_chunks: torch.Tensor
    fill_slots: torch.Tensor


class ResidentChunks:
    """Per-head LRU slot table of ``capacity`` chunks (``bytes_per_chunk`` each) for ``heads`` KV heads."""

    def __init__(self, heads: int, capacity: int, bytes_per_chunk: int, device: torch.device | str = "cpu") -> None:
        if heads <= 0 or capacity <= 0 or bytes_per_chunk < 0:
            raise ValueError(f"heads and capacity must be > 0, bytes_per_chunk >= 0; got {heads}, {capacity}, "
                             f"{bytes_per_chunk}")
        self.heads, self.capacity, self.bytes_per_chunk = heads, capacity, bytes_per_chunk
        self.device = torch.device(device)
        self.clear()

    def clear(self) -> None:
        """Forget every resident chunk and the counters."""
        self.evict_all()
        self.clock = self.hits = self.misses = self.steps = 0

    def evict_all(self) -> None:
        """Forget every resident chunk (the counters stay)."""
        idx = dict(dtype=torch.int64, device=self.device)
        self.slot_chunk = torch.full((self.heads, self.capacity), -1, **idx)  # chunk id held by each slot
        self.last_used = torch.full((self.heads, self.capacity), -1, **idx)  # step that last read each slot
        self.slot_of = torch.full((self.heads, 0), -1, **idx)  # slot of each chunk id, -1 if not resident

    def cover(self, chunks: int) -> None:
        """Make ``slot_of`` hold at least ``chunks`` chunk ids."""
        if self.slot_of.shape[1] < chunks:
            grown = torch.full((self.heads, max(chunks, self.slot_of.shape[1] * 3 // 2)), -1,
                               dtype=torch.int64, device=self.device)
            grown[:, : self.slot_of.shape[1]] = self.slot_of
            self.slot_of = grown

    def step(self, chunk_mask: torch.Tensor) -> ChunkStep:
        """Serve the selected chunks ``bool [heads, C]``: refresh hits, assign slots to misses (LRU first)."""
        if chunk_mask.dim() != 2 or chunk_mask.shape[0] != self.heads:
            raise ValueError(f"chunk_mask must be [{self.heads}, C]; got {tuple(chunk_mask.shape)}")
        chunk_mask = chunk_mask.to(self.device)
        self.cover(chunk_mask.shape[1])
        self.clock += 1
        slots_now = self.slot_of[:, : chunk_mask.shape[1]]
        hit = chunk_mask & (slots_now >= 0)
        miss = chunk_mask & (slots_now < 0)
        hh, hc = hit.nonzero(as_tuple=True)
        self.last_used[hh, slots_now[hh, hc]] = self.clock
        # per head: slots this step does not read, least recently used (and empty) first
        order = self.last_used.argsort(dim=1, stable=True)
        available = (self.last_used < self.clock).sum(1)
        mh, mc = miss.nonzero(as_tuple=True)  # grouped by head
        per_head = miss.sum(1)
        rank = torch.arange(mh.numel(), device=self.device) - (per_head.cumsum(0) - per_head)[mh]
        cached = rank < available[mh]
        fh, fc = mh[cached], mc[cached]
        slots = order[fh, rank[cached]]
        old = self.slot_chunk[fh, slots]
        evicted = old >= 0
        self.slot_of[fh[evicted], old[evicted]] = -1
        self.slot_chunk[fh, slots] = fc
        self.slot_of[fh, fc] = slots
        self.last_used[fh, slots] = self.clock
        hits, misses = hh.numel(), mh.numel()
        self.record(hits, misses)
        return ChunkStep(hits, misses, misses * self.bytes_per_chunk, fh, fc, slots)

    def record(self, hits: int, misses: int) -> None:
        """Count one step's hits and misses (:meth:`step`, or a kernel that ran the same step on these tables)."""
        self.hits += hits
        self.misses += misses
        self.steps += 1

    def slots(self, heads: torch.Tensor, chunks: torch.Tensor) -> torch.Tensor:
        """Slot of each ``(heads[i], chunks[i])``, ``-1`` where the chunk is not resident."""
        self.cover(int(chunks.max()) + 1 if chunks.numel() else 0)
        return self.slot_of[heads, chunks]

    @property
    def hit_rate(self) -> float:
        """Hits over all chunk reads so far (1.0 before any read)."""
        total = self.hits + self.misses
        return 1.0 if total == 0 else self.hits / total

    def bytes_per_step(self) -> float:
        """Mean bytes moved from the offload tier per step."""
        return 0.0 if self.steps == 0 else self.misses * self.bytes_per_chunk / self.steps
