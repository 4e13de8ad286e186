"""Request arrival times, as `vllm bench serve` draws them.

Inter-arrival gaps follow a gamma distribution with shape `burstiness` and
mean 1/rate: burstiness 1 is a Poisson process, < 1 is burstier, > 1 is
smoother. An infinite rate sends everything at t=0.
"""

from __future__ import annotations

import math

import numpy as np


def arrival_offsets(num: int, rate: float, burstiness: float, seed: int) -> np.ndarray:
    """Send times in seconds from the run start, shape [num], non-decreasing.

    The first request goes at t=0. Raises ValueError for num < 0, rate <= 0
    or burstiness <= 0.
    """
    if num < 0:
        raise ValueError(f"num must be >= 0, got {num}")
    if not rate > 0:
        raise ValueError(f"request rate must be > 0 (or inf), got {rate}")
    if not burstiness > 0:
        raise ValueError(f"burstiness must be > 0, got {burstiness}")
    if math.isinf(rate) or num == 0:
        return np.zeros(num)
    rng = np.random.default_rng(seed)
    gaps = rng.gamma(shape=burstiness, scale=1.0 / (rate * burstiness), size=num - 1)
    return np.concatenate([[0.0], np.cumsum(gaps)])


def gap_statistics(offsets: np.ndarray) -> tuple[float, float]:
    """(mean rate in req/s, coefficient of variation of the gaps) of `offsets`.

    For gamma gaps the CV is 1/sqrt(burstiness). Needs at least 3 offsets.
    """
    if len(offsets) < 3:
        raise ValueError("need at least 3 arrivals to measure a rate")
    gaps = np.diff(offsets)
    mean_gap = float(gaps.mean())
    return 1.0 / mean_gap, float(gaps.std() / mean_gap)
