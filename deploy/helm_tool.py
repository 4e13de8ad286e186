"""`helm lint` and `helm template` for CI, through Helm v4's own Go SDK (helm-python-sdk).

No `helm` binary is published on the package registries our machines reach; helm-python-sdk wraps
Helm's official Go packages (chart loading, values coalescing, schema validation, the linter and the
template engine) behind a C ABI, so this CLI runs the same code paths as the real commands.
Run it with the tools venv's Python (``.cache/tools/bin/python deploy/helm_tool.py ...``).

    helm_tool.py lint CHART [-f VALUES]... [--strict]
    helm_tool.py template CHART [-f VALUES]... [--name NAME] [--namespace NS]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

import yaml
from pydantic import BaseModel

SEVERITIES = {0: "UNKNOWN", 1: "INFO", 2: "WARNING", 3: "ERROR"}


class LintMessage(BaseModel):
    """One finding of Helm's linter."""

    severity: int
    path: str
    error: str


class LintReport(BaseModel):
    """What Helm's linter returns for one chart."""

    total_charts_linted: int
    messages: list[LintMessage] = []
    errors: list[str] = []


def merge_values(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Helm's ``-f`` layering: maps merge key by key, anything else in ``override`` replaces."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_values(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_values(files: Sequence[Path]) -> dict[str, Any]:
    """Values from ``-f`` files, later files winning (raises ValueError on a non-mapping file)."""
    values: dict[str, Any] = {}
    for path in files:
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: values must be a YAML mapping, got {type(loaded).__name__}")
        values = merge_values(values, loaded)
    return values


def lint_failed(report: LintReport, strict: bool) -> bool:
    """Errors always fail; with ``strict`` warnings fail too (as ``helm lint --strict``)."""
    worst = max((m.severity for m in report.messages), default=0)
    return bool(report.errors) or worst >= (2 if strict else 3)


def manifests_to_stream(manifests: dict[str, str]) -> str:
    """``helm template`` output: each non-empty rendered file as a YAML document with a Source line."""
    docs = []
    for source in sorted(manifests):
        body = manifests[source].strip()
        if not body or source.endswith("NOTES.txt"):
            continue
        docs.append(f"---\n# Source: {source}\n{body}\n")
    return "".join(docs)


def cmd_lint(args: argparse.Namespace) -> int:
    import helm_python as helm

    report = LintReport.model_validate(
        helm.lint(str(args.chart), load_values(args.values), strict=args.strict))
    for message in report.messages:
        print(f"[{SEVERITIES.get(message.severity, message.severity)}] {message.path}: {message.error}")
    failed = lint_failed(report, args.strict)
    print(f"{report.total_charts_linted} chart(s) linted, {'FAILED' if failed else 'no failures'}")
    return 1 if failed else 0


def cmd_template(args: argparse.Namespace) -> int:
    import helm_python as helm

    with helm.Chart.load(str(args.chart)) as chart:
        manifests = chart.render(load_values(args.values), name=args.name,
                                 namespace=args.namespace, is_install=True)
    sys.stdout.write(manifests_to_stream(manifests))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="helm_tool.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func in (("lint", cmd_lint), ("template", cmd_template)):
        cmd = sub.add_parser(name)
        cmd.add_argument("chart", type=Path, help="chart folder")
        cmd.add_argument("-f", "--values", type=Path, action="append", default=[],
                         help="values file (repeatable, later wins)")
        cmd.set_defaults(func=func)
        if name == "lint":
            cmd.add_argument("--strict", action="store_true", help="fail on warnings too")
        else:
            cmd.add_argument("--name", default="release-name", help="release name")
            cmd.add_argument("--namespace", default="default", help="release namespace")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not (args.chart / "Chart.yaml").is_file():
        print(f"helm_tool.py: {args.chart} is not a chart folder (no Chart.yaml)", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except Exception as exc:
        if type(exc).__module__.startswith("helm_python"):  # Helm refused the chart or values
            print(f"helm_tool.py: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
        if isinstance(exc, (ValueError, OSError)):  # our own input: unreadable or bad values file
            print(f"helm_tool.py: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
