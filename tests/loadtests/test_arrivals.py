"""Gamma arrivals: mean rate and burstiness of a seeded draw."""

from __future__ import annotations

import math

import numpy as np
import pytest

from loadtests.arrivals import arrival_offsets, gap_statistics


@pytest.mark.parametrize("burstiness", [0.25, 1.0, 4.0])
def test_rate_and_burstiness(burstiness: float) -> None:
    offsets = arrival_offsets(20_000, rate=8.0, burstiness=burstiness, seed=3)
    rate, cv = gap_statistics(offsets)
    assert rate == pytest.approx(8.0, rel=0.04)
    assert cv == pytest.approx(1 / math.sqrt(burstiness), rel=0.06)


def test_offsets_start_at_zero_and_are_reproducible() -> None:
    first = arrival_offsets(50, rate=2.0, burstiness=1.0, seed=7)
    assert first[0] == 0.0 and np.all(np.diff(first) >= 0)
    assert np.array_equal(first, arrival_offsets(50, 2.0, 1.0, seed=7))
    assert not np.array_equal(first, arrival_offsets(50, 2.0, 1.0, seed=8))


def test_infinite_rate_sends_everything_at_once() -> None:
    assert np.array_equal(arrival_offsets(5, math.inf, 1.0, 0), np.zeros(5))


@pytest.mark.parametrize("kwargs", [{"num": -1}, {"rate": 0.0}, {"burstiness": 0.0}])
def test_bad_arguments(kwargs: dict) -> None:
    args = {"num": 3, "rate": 1.0, "burstiness": 1.0, "seed": 0} | kwargs
    with pytest.raises(ValueError):
        arrival_offsets(**args)
