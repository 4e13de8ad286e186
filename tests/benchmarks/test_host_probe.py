"""benchmarks/host_probe.py: the memory-read probe recorded next to each benchmark batch."""

from __future__ import annotations

import math

import torch

from benchmarks.host_probe import host_read_gbs


def test_probe_reports_a_finite_rate_and_keeps_the_callers_threads() -> None:
    before = torch.get_num_threads()
    gbs = host_read_gbs(threads=1, repeats=2)
    assert math.isfinite(gbs) and gbs > 0.1  # 256 MiB read: at least 0.1 GB/s on any host that runs the suite
    assert torch.get_num_threads() == before
