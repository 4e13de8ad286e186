"""Measured cost of each sparse pattern per kept query-key pair, relative to dense attention.

The profiler ranks the candidates that meet the recall target by ``density x cost``, where cost is
the time one kept pair takes with that pattern (index estimation included) divided by the time
one causal pair takes for a dense head, both as the engine runs them (:mod:`attention_backends.segment`), on
this machine, on a real captured layer. On CPU with vLLM installed: dense heads and column-free patterns
(A-shape, block-sparse) on vLLM's paged kernel over a cache of 128-token blocks, patterns with key columns on
the gather executor. Without vLLM (or off CPU): dense heads as :func:`dense_tail_attention`, sparse heads on
the gather executor on CPU, the ``auto`` backend elsewhere. A pattern whose
``density x cost`` reaches 1 is slower than dense and is not chosen (dense is exact too).
Timings are only as clean as the machine: profile on an otherwise idle host.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable

import torch

from attention_backends import SparseIndex, estimate_index
from attention_backends.interface import run_index
from attention_backends.patterns import SparseParams
from attention_backends.segment import dense_tail_attention

REPEATS = 3
logger = logging.getLogger(__name__)


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _paged(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    """The layer in a paged cache for vLLM's CPU kernel, or ``None`` off CPU, without vLLM, or for a
    shape its kernel does not serve (then vLLM would not serve the model on CPU either)."""
    if q.device.type != "cpu":
        return None
    try:
        from attention_backends.cpu_kernel import PagedSequence
    except ImportError:
        return None
    try:
        paged = PagedSequence.of(q, k, v)
        paged.dense()
    except RuntimeError as exc:  # e.g. "Unsupported CPU attention configuration: head_dim=16"
        logger.info("pattern costs without vLLM's kernel: %s", exc)
        return None
    return paged


@torch.no_grad()
def measure_pattern_costs(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, candidates: list[SparseParams], *, repeats: int = REPEATS
) -> dict[str, float]:
    """Per pattern class, seconds per kept pair over dense seconds per causal pair (median of ``repeats``).

    ``q [Hq, N, D]``, ``k, v [Hkv, N, D]``. Each class is timed on its median-budget candidate.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be positive; got {repeats}")
    hq, n, _ = q.shape
    backend = "gather" if q.device.type == "cpu" else "auto"
    scale = q.shape[-1] ** -0.5
    paged = _paged(q, k, v)

    def dense() -> object:
        return paged.dense() if paged is not None else dense_tail_attention(q, k, v, scale=scale)

    def execute(index: SparseIndex) -> object:
        if paged is not None and not index.has_columns:
            return paged.sparse(index)
        return run_index(q, k, v, index, backend=backend)

    dense_per_pair = _median_seconds(dense, repeats) / (hq * n * (n + 1) / 2)
    by_class: dict[str, list[SparseParams]] = {}
    for params in candidates:
        by_class.setdefault(params.pattern.value, []).append(params)
    costs = {}
    for name, group in by_class.items():
        params = group[len(group) // 2]
        pairs = float(estimate_index(q, k, params).pair_counts().sum())
        seconds = _median_seconds(lambda: execute(estimate_index(q, k, params)), repeats)
        costs[name] = round(seconds / max(pairs, 1.0) / dense_per_pair, 4)
    return costs
