"""`sparse-serve loadtest` / `python -m loadtests`: run a load test and report.

Generates the workload offline, replays it with `vllm bench serve`-style
arrivals against one server (or two with --compare), prints a summary and
writes JSON, PNG plots and an HTML page. Ctrl-C writes the partial report.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from pydantic import ValidationError

from loadtests.cli_options import (
    add_output_arguments, add_target_arguments, quiet_http_logs, resolve_models, targets_from_args,
)
from loadtests.client import StreamOptions
from loadtests.metrics import parse_goodput
from loadtests.report import (
    RunSettings, compare_report, format_ratio_table, format_summary, target_report, write_json,
)
from loadtests.runner import RunPlan, RunState, run_targets
from loadtests.tokenizer import load_tokenizer
from loadtests.workloads import WorkloadConfig, generate_workload, parse_length_mix


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the loadtest options to `parser`."""
    add_target_arguments(parser)
    work = parser.add_argument_group("workload (generated offline, deterministic)")
    work.add_argument("--workload", choices=("random", "long-doc", "shared-prefix"), default="random")
    work.add_argument("--num-prompts", type=int, default=20)
    work.add_argument("--input-len", type=int, default=1024, help="random: mean prompt tokens")
    work.add_argument("--output-len", type=int, default=64, help="max_tokens per request (mean for random)")
    work.add_argument("--range-ratio", type=float, default=0.0, help="random: lengths uniform in len*(1±r)")
    work.add_argument(
        "--length-mix", default="1024:0.7,4096:0.25,7168:0.05",
        help="long-doc: LENGTH:WEIGHT,... prompt lengths in tokens",
    )
    work.add_argument("--prefix-len", type=int, default=4096, help="shared-prefix: document tokens")
    work.add_argument("--seed", type=int, default=0)
    pace = parser.add_argument_group("arrivals")
    pace.add_argument("--request-rate", type=float, default=float("inf"), help="req/s (inf: all at once)")
    pace.add_argument("--burstiness", type=float, default=1.0, help="gamma shape (1 = Poisson)")
    pace.add_argument("--max-concurrency", type=int, default=None)
    pace.add_argument("--duration", type=float, default=None, metavar="S", help="stop sending after S seconds")
    pace.add_argument("--num-warmups", type=int, default=1, help="unrecorded requests sent first")
    pace.add_argument("--compare-round-size", type=int, default=8, help="requests per interleaved round")
    pace.add_argument("--temperature", type=float, default=0.0)
    pace.add_argument("--ignore-eos", action="store_true", help="ask for exactly max_tokens (vLLM extension)")
    out = add_output_arguments(
        parser, "include per-request rows in the JSON", "PNG plots + index.html (default out/loadtest-TIME)"
    )
    out.add_argument("--goodput", nargs="+", default=[], metavar="KEY:MS", help="SLOs, e.g. ttft:2000 tpot:100")


def run(args: argparse.Namespace) -> int:
    """Execute a load test; 0 if any request completed, 1 if none, 130 if interrupted."""
    quiet_http_logs()
    try:
        targets = targets_from_args(args)
        slo = parse_goodput(args.goodput)
        config = WorkloadConfig(
            kind=args.workload, num_prompts=args.num_prompts, endpoint=args.endpoint, seed=args.seed,
            input_len=args.input_len, range_ratio=args.range_ratio, output_len=args.output_len,
            length_mix=parse_length_mix(args.length_mix), prefix_len=args.prefix_len,
        )
        plan = RunPlan(
            request_rate=args.request_rate, burstiness=args.burstiness, max_concurrency=args.max_concurrency,
            duration_s=args.duration, round_size=args.compare_round_size, seed=args.seed,
        )
        options = StreamOptions(
            endpoint=args.endpoint, temperature=args.temperature, ignore_eos=args.ignore_eos,
            timeout_s=args.request_timeout,
        )
        if args.num_warmups < 0:
            raise ValueError("--num-warmups must be >= 0")
        targets = asyncio.run(resolve_models(targets))
        tokenizer = load_tokenizer(args.tokenizer, targets[0].model)
        specs = generate_workload(config, tokenizer)
        warmups = generate_workload(config.model_copy(update={"seed": args.seed + 1, "num_prompts": args.num_warmups}), tokenizer) if args.num_warmups else []
    except (ValueError, ValidationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    state = RunState([t.label for t in targets])
    try:
        asyncio.run(run_targets(targets, specs, warmups, options, plan, state, tokenizer.count, not args.no_progress))
    except KeyboardInterrupt:
        state.interrupted = True
    settings = RunSettings(
        backend=f"openai-{args.endpoint}", endpoint=args.endpoint, workload=args.workload,
        num_prompts=args.num_prompts, request_rate=args.request_rate if args.request_rate != float("inf") else "inf",
        burstiness=args.burstiness, max_concurrency=args.max_concurrency, duration_cap_s=args.duration,
        seed=args.seed, goodput_slo_ms=slo, tokenizer_id=tokenizer.source,
    )
    reports = [target_report(t, state, settings, slo, args.save_detailed) for t in targets]
    compare = compare_report(reports) if len(reports) == 2 else None
    for report in reports:
        print(format_summary(report))
    if compare is not None:
        print(format_ratio_table(compare))
    if args.json is not None:
        write_json(compare or reports[0], args.json)
        print(f"wrote {args.json}")
    # matplotlib is imported only here, so `sparse-serve serve` does not pay for it
    from loadtests.plots import loadtest_plots
    from loadtests.report_page import write_loadtest_page

    folder = args.report_dir or Path("out") / time.strftime("loadtest-%Y%m%d-%H%M%S")
    pngs = loadtest_plots({t.label: state.results[t.label] for t in targets}, folder)
    page = write_loadtest_page(folder / "index.html", reports, compare, pngs)
    print(f"wrote {page} and {len(pngs)} plots")
    if state.interrupted:
        return 130
    return 0 if any(r.completed for r in reports) else 1
