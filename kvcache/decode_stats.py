"""What one decode step of a compressed store read (:class:`DecodeStats`), shared by the PyTorch and C paths."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DecodeStats:
    """What one :meth:`SequenceKvStore.attend` read: positions per KV head, bytes copied from the offload tier, cache use."""

    positions: list[int]
    offload_bytes_read: int
    cache_hits: int = 0
    cache_misses: int = 0
    native: bool = False  # run by the C kernel (kvcache/native_step.py)
