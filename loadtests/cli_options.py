"""Command-line options shared by every HTTP client command (loadtest, eval).

Server selection: `--base-url` (repeatable, optionally "label=URL"),
`--compare URL_A URL_B`, `--api-key`, `--model`, `--endpoint`, `--tokenizer`,
`--request-timeout`, validated into `Target`s that only ever point at
loopback addresses. Output: `--json`, `--save-detailed`, `--report-dir`,
`--no-progress`.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import httpx

from loadtests.target import Target, parse_labeled_url, resolve_api_key, resolve_target

DEFAULT_BASE_URL = "http://127.0.0.1:8000"


def add_target_arguments(parser: argparse.ArgumentParser, default_endpoint: str = "completions") -> None:
    """Add the server-selection options to `parser`."""
    group = parser.add_argument_group("servers")
    group.add_argument(
        "--base-url", action="append", metavar="[LABEL=]URL",
        help=f"server to test (loopback only; repeat twice to compare; default {DEFAULT_BASE_URL})",
    )
    group.add_argument(
        "--compare", nargs=2, metavar=("[LABEL=]URL_A", "[LABEL=]URL_B"),
        help="run the same requests against two servers, interleaved, and report B/A",
    )
    group.add_argument(
        "--dense-prefill", action="append", default=[], metavar="LABEL",
        help="the server of this label gets `sparse: false` in every request (sparse-serve: dense prefill); "
        "e.g. --compare dense=URL sparse=URL --dense-prefill dense compares both on one server (its /metrics "
        "deltas then cover both)",
    )
    group.add_argument("--api-key", default=None, help="bearer token (default: $OPENAI_API_KEY)")
    group.add_argument("--model", default=None, help="model id (default: first id of /v1/models)")
    group.add_argument("--endpoint", choices=("completions", "chat"), default=default_endpoint)
    group.add_argument(
        "--tokenizer", default=None, metavar="PATH",
        help="local tokenizer folder (default: ~/.cache/sparse-serve/models/<model>)",
    )
    group.add_argument("--request-timeout", type=float, default=600.0, metavar="S", help="per-request limit")


def add_output_arguments(parser: argparse.ArgumentParser, detailed_help: str, report_help: str) -> argparse._ArgumentGroup:
    """Add the report options to `parser`; returns the group for extra options."""
    out = parser.add_argument_group("output")
    out.add_argument("--json", type=Path, default=None, help="write the results JSON here")
    out.add_argument("--save-detailed", action="store_true", help=detailed_help)
    out.add_argument("--report-dir", type=Path, default=None, help=report_help)
    out.add_argument("--no-progress", action="store_true", help="no progress bars")
    return out


def targets_from_args(args: argparse.Namespace) -> list[Target]:
    """Validated targets (no model ids yet). Raises ValueError on bad input."""
    if args.compare and args.base_url:
        raise ValueError("use either --compare URL_A URL_B or --base-url, not both")
    specs = list(args.compare or args.base_url or [DEFAULT_BASE_URL])
    if len(specs) > 2:
        raise ValueError(f"at most two servers can be compared, got {len(specs)}")
    defaults = ["server"] if len(specs) == 1 else ["A", "B"]
    api_key = resolve_api_key(args.api_key)
    targets = []
    for spec, default_label in zip(specs, defaults):
        label, url = parse_labeled_url(spec, default_label)
        targets.append(Target(label=label, base_url=url, api_key=api_key, model=args.model,
                              dense_prefill=label in args.dense_prefill))
    if len({t.label for t in targets}) != len(targets):
        raise ValueError("the two servers need different labels")
    unknown = sorted(set(args.dense_prefill) - {t.label for t in targets})
    if unknown:
        raise ValueError(f"--dense-prefill names no server label: {', '.join(unknown)} "
                         f"(labels: {', '.join(t.label for t in targets)})")
    if args.request_timeout <= 0:
        raise ValueError("--request-timeout must be > 0")
    return targets


def quiet_http_logs() -> None:
    """Keep httpx's per-request INFO lines out of the progress output."""
    logging.getLogger("httpx").setLevel(logging.WARNING)


async def resolve_models(targets: list[Target]) -> list[Target]:
    """Ask each server for its model id where --model was not given."""
    async with httpx.AsyncClient(timeout=30.0, trust_env=False) as client:
        return [await resolve_target(client, t) for t in targets]
