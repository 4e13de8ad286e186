"""The load-test HTML page: settings, per-server summaries, buckets, ratios, plots."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from loadtests.html_page import heading, image, preformatted, table, write_page
from loadtests.report import CompareReport, TargetReport, format_ratio_table, format_summary

_BUCKET_COLUMNS = ("completed", "failed", "mean_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "mean_e2el_ms", "request_throughput")


def write_loadtest_page(
    path: Path, reports: Sequence[TargetReport], compare: CompareReport | None, pngs: Sequence[Path]
) -> Path:
    """Write the standalone report page for a run."""
    first = reports[0]
    blocks = [
        heading("Settings"),
        preformatted(first.settings.model_dump_json(indent=2)),
    ]
    for report in reports:
        blocks.append(heading(f"Server {report.label}"))
        blocks.append(preformatted(format_summary(report)))
        rows = [[bucket] + [getattr(s, c) for c in _BUCKET_COLUMNS] for bucket, s in report.input_len_bucket.items()]
        blocks.append(table(["input bucket", *_BUCKET_COLUMNS], rows))
        metrics = report.server_metrics
        if metrics.available:
            blocks.append(heading("Server-side metric deltas", 3))
            blocks.append(table(["metric", "delta"], sorted(metrics.deltas.items())))
            if metrics.histogram_means:
                blocks.append(table(["histogram", "mean over run"], sorted(metrics.histogram_means.items())))
            if metrics.gauges:
                blocks.append(table(["gauge", "at end of run"], sorted(metrics.gauges.items())))
        else:
            blocks.append(preformatted(f"server metrics unavailable: {metrics.error}"))
    if compare is not None:
        blocks.append(heading(f"Ratios {compare.labels[1]}/{compare.labels[0]}"))
        blocks.append(preformatted(format_ratio_table(compare)))
    blocks.append(heading("Plots"))
    blocks.extend(image(p) for p in pngs)
    return write_page(path, "sparse-serve load test", blocks)
