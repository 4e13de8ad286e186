"""How fast this host is right now: a memory-read probe run next to each measurement.

Shared cloud hosts drift (the 2-core CI-like machine has moved 40-70% between runs an hour
apart), and a dense-vs-ours comparison runs its two servers one after the other, so a speedup is
only as good as the host's steadiness between them. The benchmarks record this probe before and
after each measured batch; a reader compares the modes' figures to see whether the host moved.
"""

from __future__ import annotations

import time

import torch

_PROBE_BYTES = 256 << 20  # well past any last-level cache


def host_read_gbs(threads: int = 2, repeats: int = 5) -> float:
    """Best GB/s of summing a 256 MiB float32 tensor on ``threads`` threads (the caller's setting is kept)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = torch.ones(_PROBE_BYTES // 4)
        x.sum()  # fault the pages in
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            x.sum()
            best = min(best, time.perf_counter() - t0)
        return round(_PROBE_BYTES / best / 1e9, 1)
    finally:
        torch.set_num_threads(before)
