"""Server-side view of a run: scrape Prometheus `/metrics` before and after.

Counters and histogram sums/counts are differenced so the report shows what
the server itself measured during the run (e.g. `sparse_serve:prompt_tokens_total`,
mean server-side TTFT from the histogram's Δsum/Δcount), next to the
client-side numbers. Gauges (e.g. `sparse_serve:sparse_layer_density`, a ratio)
are not differenced: the report carries their values at the end of the run.
"""

from __future__ import annotations

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


def parse_metrics(text: str, prefixes: tuple[str, ...] = DEFAULT_PREFIXES,
                  kinds: tuple[str, ...] | None = None) -> dict[str, float]:
    """Samples of the Prometheus exposition `text` whose name has a prefix (and family type in `kinds`).

    Keys are `name{label="v",...}`; histogram buckets and `_created`
    timestamps are skipped. Raises ValueError on unparsable text.
    """
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if kinds is not None and family.type not in kinds:
            continue
        for sample in family.samples:
            if not sample.name.startswith(prefixes):
                continue
            if sample.name.endswith(("_bucket", "_created")):
                continue
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = float(sample.value)
    return samples


def parse_snapshot(text: str, prefixes: tuple[str, ...] = DEFAULT_PREFIXES) -> Snapshot:
    return Snapshot(parse_metrics(text, prefixes, CUMULATIVE_KINDS), parse_metrics(text, prefixes, ("gauge",)))


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
