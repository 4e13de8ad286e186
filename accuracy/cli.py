"""`sparse-serve eval` / `python -m accuracy`: the RULER-style suite over HTTP.

Generates the samples offline in the target model's tokens, sends them to one
server (or two with --compare), prints the task x length table (and B - A
deltas), writes JSON, a needle depth x length heat-map PNG and an HTML page.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from pydantic import ValidationError

from accuracy.evaluate import eval_report, run_samples
from accuracy.native_length import native_length
from accuracy.results import EvalCompareReport, EvalReport, compare_reports, format_delta_table, format_table
from accuracy.tasks.registry import DEFAULT_DEPTHS, generate_samples, parse_numbers, parse_tasks
from loadtests.cli_options import (
    add_output_arguments, add_target_arguments, quiet_http_logs, resolve_models, targets_from_args,
)
from loadtests.client import StreamOptions
from loadtests.html_page import heading, image, preformatted, write_page
from loadtests.report import write_json
from loadtests.runner import RunState
from loadtests.tokenizer import load_tokenizer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the eval options to `parser`."""
    add_target_arguments(parser, default_endpoint="chat")
    suite = parser.add_argument_group("suite (generated offline, deterministic)")
    suite.add_argument("--tasks", default="all", help="comma-separated task names or 'all'")
    suite.add_argument("--lengths", default="2048,4096,8192", help="context lengths in model tokens")
    suite.add_argument("--samples", type=int, default=5, help="samples per task and length")
    suite.add_argument("--depths", default=",".join(str(d) for d in DEFAULT_DEPTHS), help="needle depths in [0,1]")
    suite.add_argument("--seed", type=int, default=0)
    suite.add_argument("--native-length", type=int, default=None, help="mark longer lengths as beyond native (default: from config.json)")
    run = parser.add_argument_group("run")
    run.add_argument("--max-concurrency", type=int, default=1)
    run.add_argument("--temperature", type=float, default=0.0)
    run.add_argument("--from-json", nargs=2, type=Path, metavar=("A.json", "B.json"), default=None,
                     help="send nothing: compare two saved single-server reports of the same suite "
                     "(e.g. two servers evaluated in parallel) and write the B - A report")
    add_output_arguments(parser, "include every prediction in the JSON", "heat-map PNG + index.html (default out/eval-TIME)")


def run(args: argparse.Namespace) -> int:
    """Execute the suite; 0 on success, 1 if nothing completed, 2 bad input, 130 interrupted."""
    quiet_http_logs()
    if args.from_json is not None:
        return _compare_saved(args)
    try:
        targets = targets_from_args(args)
        tasks = parse_tasks(args.tasks)
        lengths = parse_numbers(args.lengths, int, "--lengths")
        depths = parse_numbers(args.depths, float, "--depths")
        if args.max_concurrency < 1:
            raise ValueError("--max-concurrency must be >= 1")
        options = StreamOptions(endpoint=args.endpoint, temperature=args.temperature, timeout_s=args.request_timeout)
        targets = asyncio.run(resolve_models(targets))
        tokenizer = load_tokenizer(args.tokenizer, targets[0].model)
        native = args.native_length or native_length(tokenizer.source)
        samples = generate_samples(tokenizer, tasks, lengths, args.samples, args.seed, args.endpoint, depths, not args.no_progress)
    except (ValueError, ValidationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    state = run_samples(targets, samples, options, args.max_concurrency, tokenizer, RunState([t.label for t in targets]), not args.no_progress)
    settings = {"endpoint": args.endpoint, "tasks": tasks, "lengths": lengths, "samples_per_cell": args.samples, "seed": args.seed}
    reports = {t.label: eval_report(t, samples, state, settings, native, args.save_detailed) for t in targets}
    _write_outputs(args, reports, compare_reports(*reports.values()) if len(reports) == 2 else None)
    if state.interrupted:
        return 130
    return 0 if any(c.completed for r in reports.values() for c in r.cells) else 1


def _compare_saved(args: argparse.Namespace) -> int:
    try:
        reports = [EvalReport.model_validate_json(path.read_text()) for path in args.from_json]
        compare = compare_reports(*reports)
    except (OSError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _write_outputs(args, {r.label: r for r in reports}, compare)
    return 0


def _write_outputs(args: argparse.Namespace, reports: dict[str, EvalReport],
                   compare: EvalCompareReport | None) -> None:
    """Print the tables (and B - A), write the JSON, the heat-map and the HTML page."""
    texts = [format_table(r) for r in reports.values()]
    if compare is not None:
        texts.append(format_delta_table(compare))
    print("\n\n".join(texts))
    if args.json is not None:
        write_json(compare or next(iter(reports.values())), args.json)
        print(f"wrote {args.json}")
    from accuracy.heatmap import plot_depth_heatmaps  # matplotlib only when a report is written

    folder = args.report_dir or Path("out") / time.strftime("eval-%Y%m%d-%H%M%S")
    heatmap = plot_depth_heatmaps(reports, folder / "needle_depth_heatmap.png")
    blocks = [heading("Accuracy"), *(preformatted(t) for t in texts)]
    if heatmap is not None:
        blocks += [heading("Needle depth x length"), image(heatmap)]
    page = write_page(folder / "index.html", "sparse-serve accuracy eval", blocks)
    print(f"wrote {page}")
