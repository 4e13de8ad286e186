"""JSON schema and console text of load-test results.

A single-server run is written as one flat `TargetReport` whose field names
match `vllm bench serve` result files (`completed`, `mean_ttft_ms`,
`p99_itl_ms`, `request_goodput`, ...) plus our `input_len_bucket` breakdown
and server-side metric deltas. A `--compare` run nests one report per server
and adds B/A ratios per input-length bucket.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, Field

from loadtests.client import RequestResult
from loadtests.metrics import SLO, MetricsSummary, bucket_breakdown, summarize
from loadtests.runner import RunState
from loadtests.server_metrics import ServerMetricsDelta
from loadtests.target import Target

RATIO_METRICS = (
    "mean_ttft_ms", "median_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "mean_itl_ms",
    "mean_e2el_ms", "p99_e2el_ms", "request_throughput", "output_throughput",
)


class RunSettings(BaseModel):
    """The knobs of a run, recorded next to its results."""

    backend: str = "openai-chat"
    endpoint: str
    workload: str
    num_prompts: int
    request_rate: float | str
    burstiness: float
    max_concurrency: int | None
    duration_cap_s: float | None
    seed: int
    goodput_slo_ms: SLO
    tokenizer_id: str


class TargetReport(MetricsSummary):
    """Results of one server (vLLM-compatible top-level fields)."""

    date: str
    label: str
    base_url: str
    model_id: str
    settings: RunSettings
    interrupted: bool = False
    not_sent: int = 0
    warmup_failures: int = 0
    error_counts: dict[str, int] = Field(default_factory=dict)
    input_len_bucket: dict[str, MetricsSummary]
    server_metrics: ServerMetricsDelta
    # --save-detailed: per-request rows, and the same data in vLLM's list layout
    requests: list[RequestResult] | None = None
    input_lens: list[int] | None = None
    output_lens: list[int] | None = None
    ttfts: list[float | None] | None = None
    itls: list[list[float]] | None = None
    latencies: list[float | None] | None = None
    start_times: list[float] | None = None
    generated_texts: list[str] | None = None
    errors: list[str] | None = None


class CompareReport(BaseModel):
    """Two servers, same request sequence: per-server reports and B/A ratios."""

    date: str
    labels: list[str]
    targets: dict[str, TargetReport]
    ratios: dict[str, dict[str, float | None]] = Field(
        description="bucket ('all' or input length) -> metric -> B/A"
    )


def target_report(
    target: Target, state: RunState, settings: RunSettings, slo: SLO, detailed: bool
) -> TargetReport:
    """Summarise what `state` holds for `target`."""
    results = sorted(state.results[target.label], key=lambda r: r.index)
    duration = state.duration(target.label)
    overall = summarize(results, duration, slo)
    report = TargetReport(
        **overall.model_dump(),
        date=datetime.fromtimestamp(state.started_at).isoformat(timespec="seconds"),
        label=target.label,
        base_url=target.base_url,
        model_id=target.model or "",
        settings=settings,
        interrupted=state.interrupted,
        not_sent=state.not_sent[target.label],
        warmup_failures=state.warmup_failures[target.label],
        error_counts=dict(Counter(_error_kind(r.error) for r in results if not r.success).most_common()),
        input_len_bucket=bucket_breakdown(results, duration, slo),
        server_metrics=state.server_metrics.get(target.label, ServerMetricsDelta(available=False, error="not scraped")),
    )
    if detailed:
        report.requests = results
        report.input_lens = [r.input_tokens for r in results]
        report.output_lens = [r.output_tokens for r in results]
        report.ttfts = [r.ttft_s for r in results]
        report.itls = [r.itl_s for r in results]
        report.latencies = [r.e2el_s for r in results]
        report.start_times = [r.start_s for r in results]
        report.generated_texts = [r.generated_text for r in results]
        report.errors = [r.error for r in results]
    return report


def _error_kind(error: str) -> str:
    """Group error texts by their first 80 characters."""
    return error[:80]


def compare_ratios(a: TargetReport, b: TargetReport) -> dict[str, dict[str, float | None]]:
    """B/A ratio of each RATIO_METRICS value, overall and per shared bucket."""
    pairs: list[tuple[str, MetricsSummary, MetricsSummary]] = [("all", a, b)]
    pairs += [(k, a.input_len_bucket[k], b.input_len_bucket[k]) for k in a.input_len_bucket if k in b.input_len_bucket]
    return {
        bucket: {
            metric: (getattr(sb, metric) / getattr(sa, metric)) if getattr(sa, metric) else None
            for metric in RATIO_METRICS
        }
        for bucket, sa, sb in pairs
    }


def compare_report(reports: Sequence[TargetReport]) -> CompareReport:
    """Combine two target reports into a CompareReport."""
    if len(reports) != 2:
        raise ValueError(f"compare needs exactly 2 servers, got {len(reports)}")
    a, b = reports
    return CompareReport(
        date=a.date,
        labels=[a.label, b.label],
        targets={a.label: a, b.label: b},
        ratios=compare_ratios(a, b),
    )


def write_json(report: BaseModel, path: Path) -> None:
    """Write `report` as indented JSON (atomically via a .tmp file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(report.model_dump(mode="json"), indent=2))
    tmp.replace(path)


def format_summary(report: TargetReport) -> str:
    """A `vllm bench serve`-style text block for the console."""
    rows: list[tuple[str, str]] = [
        ("Server", f"{report.label} ({report.base_url}, model {report.model_id})"),
        ("Successful requests", str(report.completed)),
        ("Failed requests", str(report.failed)),
        ("Benchmark duration (s)", f"{report.duration:.2f}"),
        ("Total input tokens", str(report.total_input_tokens)),
        ("Total generated tokens", str(report.total_output_tokens)),
        ("Request throughput (req/s)", f"{report.request_throughput:.3f}"),
        ("Output token throughput (tok/s)", f"{report.output_throughput:.2f}"),
    ]
    if report.request_goodput is not None:
        rows.append(("Request goodput (req/s)", f"{report.request_goodput:.3f}"))
    for key, name in (("ttft", "TTFT"), ("tpot", "TPOT"), ("itl", "ITL"), ("e2el", "E2EL")):
        for stat in ("mean", "median", "p90", "p99"):
            rows.append((f"{stat.capitalize()} {name} (ms)", f"{getattr(report, f'{stat}_{key}_ms'):.2f}"))
    if report.interrupted:
        rows.append(("Interrupted", "yes (partial results)"))
    lines = [f"{name:<36} {value}" for name, value in rows]
    lines += [f"  error x{count}: {text}" for text, count in list(report.error_counts.items())[:10]]
    return "\n".join(lines)


def format_ratio_table(report: CompareReport) -> str:
    """Markdown table of B/A ratios per bucket."""
    a, b = report.labels
    shown = ("mean_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "mean_e2el_ms", "request_throughput")
    lines = [
        f"| input bucket | n ({a}/{b}) | " + " | ".join(f"{m} {b}/{a}" for m in shown) + " |",
        "|---|---|" + "---|" * len(shown),
    ]
    for bucket, ratios in report.ratios.items():
        sa = report.targets[a] if bucket == "all" else report.targets[a].input_len_bucket[bucket]
        sb = report.targets[b] if bucket == "all" else report.targets[b].input_len_bucket[bucket]
        cells = " | ".join("n/a" if ratios[m] is None else f"{ratios[m]:.2f}x" for m in shown)
        lines.append(f"| {bucket} | {sa.completed}/{sb.completed} | {cells} |")
    return "\n".join(lines)
