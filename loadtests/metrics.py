"""Latency statistics, TPOT and SLO goodput of a load-test run.

The definitions follow `vllm bench serve` so results are comparable:
TPOT = (e2el - ttft) / (output_tokens - 1) for requests with more than one
output token (0 counts as meeting a TPOT SLO otherwise); ITL pools every
inter-chunk gap of every request; a request is "good" when it meets every
given SLO; goodput = good requests / run duration. Percentiles are linear
interpolations (numpy's default).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from loadtests.client import RequestResult

SLO_KEYS = ("ttft", "tpot", "e2el")
LATENCY_KEYS = ("ttft", "tpot", "itl", "e2el")


class SLO(BaseModel):
    """Service-level objectives in milliseconds (None = not constrained)."""

    model_config = ConfigDict(frozen=True)

    ttft: float | None = Field(default=None, gt=0)
    tpot: float | None = Field(default=None, gt=0)
    e2el: float | None = Field(default=None, gt=0)

    def is_set(self) -> bool:
        return any(getattr(self, key) is not None for key in SLO_KEYS)


def parse_goodput(items: Sequence[str]) -> SLO:
    """Parse ["ttft:500", "tpot:50"] (KEY:MILLISECONDS) into an SLO."""
    values: dict[str, float] = {}
    for item in items:
        key, sep, value = item.partition(":")
        if not sep or key not in SLO_KEYS:
            raise ValueError(f"bad --goodput entry {item!r}; expected one of ttft:MS tpot:MS e2el:MS")
        try:
            values[key] = float(value)
        except ValueError as exc:
            raise ValueError(f"bad --goodput value in {item!r}: not a number") from exc
        if values[key] <= 0:
            raise ValueError(f"--goodput {key} must be > 0 ms, got {value}")
    return SLO(**values)


def tpot_s(result: RequestResult) -> float | None:
    """Time per output token after the first, in seconds (None if <= 1 token)."""
    if not result.success or result.output_tokens <= 1:
        return None
    assert result.e2el_s is not None and result.ttft_s is not None
    return (result.e2el_s - result.ttft_s) / (result.output_tokens - 1)


def is_good(result: RequestResult, slo: SLO) -> bool:
    """Whether a successful request meets every SLO that is set."""
    if not result.success:
        return False
    observed_ms = {
        "ttft": (result.ttft_s or 0.0) * 1000,
        "tpot": (tpot_s(result) or 0.0) * 1000,
        "e2el": (result.e2el_s or 0.0) * 1000,
    }
    return all(
        observed_ms[key] <= limit for key in SLO_KEYS if (limit := getattr(slo, key)) is not None
    )


def latency_stats_ms(values_s: Sequence[float]) -> dict[str, float]:
    """mean/median/std/p90/p99 in ms of `values_s` (all 0 when empty)."""
    data = np.asarray(values_s if len(values_s) else [0.0], dtype=np.float64) * 1000
    return {
        "mean": float(data.mean()),
        "median": float(np.median(data)),
        "std": float(data.std()),
        "p90": float(np.percentile(data, 90)),
        "p99": float(np.percentile(data, 99)),
    }


class MetricsSummary(BaseModel):
    """Aggregates of a set of requests; field names match `vllm bench serve`."""

    completed: int
    failed: int
    duration: float
    total_input_tokens: int
    total_output_tokens: int
    request_throughput: float
    request_goodput: float | None
    output_throughput: float
    total_token_throughput: float
    mean_ttft_ms: float
    median_ttft_ms: float
    std_ttft_ms: float
    p90_ttft_ms: float
    p99_ttft_ms: float
    mean_tpot_ms: float
    median_tpot_ms: float
    std_tpot_ms: float
    p90_tpot_ms: float
    p99_tpot_ms: float
    mean_itl_ms: float
    median_itl_ms: float
    std_itl_ms: float
    p90_itl_ms: float
    p99_itl_ms: float
    mean_e2el_ms: float
    median_e2el_ms: float
    std_e2el_ms: float
    p90_e2el_ms: float
    p99_e2el_ms: float
    max_output_tokens_per_s: float
    max_concurrent_requests: int


def summarize(results: Sequence[RequestResult], duration_s: float, slo: SLO) -> MetricsSummary:
    """Aggregate `results` of a run that lasted `duration_s` seconds."""
    if duration_s <= 0:
        raise ValueError(f"duration must be > 0, got {duration_s}")
    ok = [r for r in results if r.success]
    series: dict[str, list[float]] = {
        "ttft": [r.ttft_s for r in ok if r.ttft_s is not None],
        "tpot": [t for r in ok if (t := tpot_s(r)) is not None],
        "itl": [gap for r in ok for gap in r.itl_s],
        "e2el": [r.e2el_s for r in ok if r.e2el_s is not None],
    }
    fields: dict[str, float] = {}
    for key in LATENCY_KEYS:
        for stat, value in latency_stats_ms(series[key]).items():
            fields[f"{stat}_{key}_ms"] = value
    total_in = sum(r.input_tokens for r in ok)
    total_out = sum(r.output_tokens for r in ok)
    timeline = output_token_timeline(ok)
    return MetricsSummary(
        completed=len(ok),
        failed=len(results) - len(ok),
        duration=duration_s,
        total_input_tokens=total_in,
        total_output_tokens=total_out,
        request_throughput=len(ok) / duration_s,
        request_goodput=sum(is_good(r, slo) for r in ok) / duration_s if slo.is_set() else None,
        output_throughput=total_out / duration_s,
        total_token_throughput=(total_in + total_out) / duration_s,
        max_output_tokens_per_s=float(max(timeline, default=0.0)),
        max_concurrent_requests=max_concurrency(ok),
        **fields,
    )


def token_times(result: RequestResult) -> tuple[list[float], float]:
    """Arrival times (run clock) of a request's text chunks and tokens per chunk."""
    if not result.success or result.ttft_s is None:
        return [], 0.0
    times = [result.start_s + result.ttft_s]
    for gap in result.itl_s:
        times.append(times[-1] + gap)
    return times, result.output_tokens / len(times)


def output_token_timeline(results: Sequence[RequestResult], bin_s: float = 1.0) -> list[float]:
    """Output tokens per second in consecutive `bin_s` bins from the run start."""
    if bin_s <= 0:
        raise ValueError(f"bin width must be > 0, got {bin_s}")
    per_request = [token_times(r) for r in results]
    last = max((times[-1] for times, _ in per_request if times), default=None)
    if last is None:
        return []
    bins = np.zeros(int(last // bin_s) + 1)
    for times, weight in per_request:
        for t in times:
            bins[int(t // bin_s)] += weight
    return [float(b) / bin_s for b in bins]


def max_concurrency(results: Sequence[RequestResult]) -> int:
    """Most requests in flight at once among successful `results`."""
    events = sorted(
        [(r.start_s, 1) for r in results if r.e2el_s is not None]
        + [(r.start_s + r.e2el_s, -1) for r in results if r.e2el_s is not None],
        key=lambda e: (e[0], e[1]),
    )
    level = peak = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    return peak


def bucket_breakdown(
    results: Sequence[RequestResult], duration_s: float, slo: SLO
) -> dict[str, MetricsSummary]:
    """`summarize` per input-length bucket, buckets in numeric order."""
    buckets = sorted({r.bucket for r in results}, key=_bucket_order)
    return {b: summarize([r for r in results if r.bucket == b], duration_s, slo) for b in buckets}


def _bucket_order(label: str) -> tuple[int, str]:
    return (int(label), "") if label.isdigit() else (1 << 62, label)
