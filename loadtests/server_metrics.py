"""Server-side view of a run: scrape Prometheus `/metrics` before and after.

Counters and histogram sums/counts are differenced so the report shows what
the server itself measured during the run (e.g. `sparse_serve:prompt_tokens_total`,
mean server-side TTFT from the histogram's Δsum/Δcount), next to the
client-side numbers.
"""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, Field

from loadtests.target import Target

DEFAULT_PREFIXES = ("sparse_serve:", "vllm:")


class ServerMetricsDelta(BaseModel):
    """Changes of the server's own metrics over the run."""

    available: bool
    error: str = ""
    deltas: dict[str, float] = Field(default_factory=dict)
    histogram_means: dict[str, float] = Field(default_factory=dict)


def parse_metrics(text: str, prefixes: tuple[str, ...] = DEFAULT_PREFIXES) -> dict[str, float]:
    """Samples of the Prometheus exposition `text` whose name has a prefix.

    Keys are `name{label="v",...}`; histogram buckets and `_created`
    timestamps are skipped. Raises ValueError on unparsable text.
    """
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.name.startswith(prefixes):
                continue
            if sample.name.endswith(("_bucket", "_created")):
                continue
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = float(sample.value)
    return samples


async def scrape(client: httpx.AsyncClient, target: Target) -> tuple[dict[str, float] | None, str]:
    """(samples, "") from GET /metrics, or (None, reason) when unavailable."""
    try:
        response = await client.get(target.url("/metrics"), headers=target.headers(), timeout=10.0)
    except httpx.HTTPError as exc:
        return None, f"{type(exc).__name__}: {exc}"
    if response.status_code != 200:
        return None, f"GET /metrics returned {response.status_code}"
    try:
        return parse_metrics(response.text), ""
    except ValueError as exc:
        return None, f"unparsable /metrics: {exc}"


def metrics_delta(before: dict[str, float] | None, after: dict[str, float] | None, error: str = "") -> ServerMetricsDelta:
    """Differences after - before of every sample that changed."""
    if before is None or after is None:
        return ServerMetricsDelta(available=False, error=error or "no /metrics")
    deltas = {
        key: after[key] - before.get(key, 0.0)
        for key in sorted(after)
        if after[key] != before.get(key, 0.0)
    }
    means = {}
    for key, total in deltas.items():
        name, brace, labels = key.partition("{")
        if name.endswith("_sum"):
            count = deltas.get(name[: -len("_sum")] + "_count" + brace + labels)
            if count:
                means[name[: -len("_sum")] + brace + labels] = total / count
    return ServerMetricsDelta(available=True, deltas=deltas, histogram_means=means)
