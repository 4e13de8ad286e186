"""Freed KV buffers go back to the OS: the registry trims the heap once enough bytes were released."""

from __future__ import annotations

import ctypes.util
import sys

import pytest
import torch

from kvcache.history import KvHistory
from kvcache.host_memory import HeapTrimmer
from kvcache.registry import StoreRegistry


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def test_registry_trims_once_every_threshold_of_released_bytes() -> None:
    one = 2 * 3 * 64 * 4 * (100 + 16)  # a history of 100 rows holds 16 rows of headroom (kvcache.buffers)
    reg = StoreRegistry(HeapTrimmer(every_bytes=3 * one))  # three histories
    for layer in range(7):
        reg.history("r", layer, 3, 64, dtype=torch.float32).extend(0, torch.randn(3, 100, 64), torch.randn(3, 100, 64))
    assert reg.total_bytes() == 7 * one
    for layer in range(5):
        reg.drop_history("r", layer)
    trims = reg.trimmer.trims
    assert reg.trimmer.pending == 2 * one  # five released: one trim after the third, two pending
    assert trims == (1 if ctypes.util.find_library("c") else 0)
    assert reg.free("r") == 2 * one  # the sixth release trims again, the seventh waits
    assert reg.trimmer.pending == one and reg.trimmer.trims == 2 * trims and reg.total_bytes() == 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm and needs glibc")
def test_dropped_histories_leave_no_resident_heap_after_a_trim() -> None:
    """Histories grown chunk by chunk leave heap holes when freed; a trim returns them (glibc only)."""
    trimmer = HeapTrimmer(every_bytes=1 << 62)  # trimmed by hand below
    if trimmer._trim is None:
        pytest.skip("no malloc_trim")
    torch.empty(24 << 20, dtype=torch.uint8)  # freeing this mapped block raises glibc's mmap threshold to 24 MB
    trimmer.trim()
    start = _rss_bytes()
    histories = [KvHistory(3, 64, dtype=torch.float32) for _ in range(16)]
    for _ in range(8):  # 8 chunks of 512 rows: each append reallocates every history (up to 6 MB each)
        for h in histories:
            h.extend(len(h), torch.randn(3, 512, 64), torch.randn(3, 512, 64))
    held = sum(h.offload_bytes() for h in histories)
    keep = torch.ones(1)  # an allocation after the histories: the heap top cannot simply shrink
    for h in histories:
        h.free()
    trimmer.trim()
    left = _rss_bytes() - start  # without the trim: ~140 MB on this host (the holes of every reallocation)
    assert trimmer.trims == 2 and keep.item() == 1.0
    assert left < held // 4, f"{left / 1e6:.1f} MB still resident of {held / 1e6:.1f} MB freed"
