"""Server-side view of a run: scrape Prometheus `/metrics` before and after.

Counters and histogram sums/counts are differenced so the report shows what
the server itself measured during the run (e.g. `sparse_serve:prompt_tokens_total`,
mean server-side TTFT from the histogram's Δsum/Δcount), next to the
client-side numbers. Gauges (e.g. `sparse_serve:sparse_layer_density`, a ratio)
are not differenced: the report carries their values at the end of the run.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, Field

from loadtests.target import Target

DEFAULT_PREFIXES = ("sparse_serve:", "vllm:")
CUMULATIVE_KINDS = ("counter", "histogram", "summary", "unknown", "untyped")


class ServerMetricsDelta(BaseModel):
    """Changes of the server's own metrics over the run."""

    available: bool
    error: str = ""
    deltas: dict[str, float] = Field(default_factory=dict)
    histogram_means: dict[str, float] = Field(default_factory=dict)
    gauges: dict[str, float] = Field(default_factory=dict, description="gauge values at the end of the run")


@dataclass(frozen=True)
class Snapshot:
    """One scrape, split by kind: cumulative samples (counters, histogram sums/counts) and gauges."""

    cumulative: dict[str, float]
    gauges: dict[str, float]


def _samples(text: str, prefixes: tuple[str, ...]) -> Iterator[tuple[str, str, float]]:
    """(family type, `name{label="v",...}`, value) of every prefixed sample, buckets and `_created` skipped."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.name.startswith(prefixes) or sample.name.endswith(("_bucket", "_created")):
                continue
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            yield family.type, f"{sample.name}{{{labels}}}" if labels else sample.name, float(sample.value)


def parse_metrics(text: str, prefixes: tuple[str, ...] = DEFAULT_PREFIXES) -> dict[str, float]:
    """Samples of the Prometheus exposition `text` whose name has a prefix.

    Keys are `name{label="v",...}`; histogram buckets and `_created`
    timestamps are skipped. Raises ValueError on unparsable text.
    """
    return {key: value for _, key, value in _samples(text, prefixes)}


def parse_snapshot(text: str, prefixes: tuple[str, ...] = DEFAULT_PREFIXES) -> Snapshot:
    """`text` parsed once, split into cumulative samples and gauges (other kinds dropped)."""
    snapshot = Snapshot(cumulative={}, gauges={})
    for kind, key, value in _samples(text, prefixes):
        if kind in CUMULATIVE_KINDS:
            snapshot.cumulative[key] = value
        elif kind == "gauge":
            snapshot.gauges[key] = value
    return snapshot


async def scrape(client: httpx.AsyncClient, target: Target) -> tuple[Snapshot | None, str]:
    """(snapshot, "") from GET /metrics, or (None, reason) when unavailable."""
    try:
        response = await client.get(target.url("/metrics"), headers=target.headers(), timeout=10.0)
    except httpx.HTTPError as exc:
        return None, f"{type(exc).__name__}: {exc}"
    if response.status_code != 200:
        return None, f"GET /metrics returned {response.status_code}"
    try:
        return parse_snapshot(response.text), ""
    except ValueError as exc:
        return None, f"unparsable /metrics: {exc}"


def metrics_delta(before: Snapshot | None, after: Snapshot | None, error: str = "") -> ServerMetricsDelta:
    """Differences after - before of every cumulative sample that changed; gauges as after."""
    if before is None or after is None:
        return ServerMetricsDelta(available=False, error=error or "no /metrics")
    old, new = before.cumulative, after.cumulative
    deltas = {key: new[key] - old.get(key, 0.0) for key in sorted(new) if new[key] != old.get(key, 0.0)}
    means = {}
    for key, total in deltas.items():
        name, brace, labels = key.partition("{")
        if name.endswith("_sum"):
            count = deltas.get(name[: -len("_sum")] + "_count" + brace + labels)
            if count:
                means[name[: -len("_sum")] + brace + labels] = total / count
    return ServerMetricsDelta(available=True, deltas=deltas, histogram_means=means, gauges=dict(sorted(after.gauges.items())))
