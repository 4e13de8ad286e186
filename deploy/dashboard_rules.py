"""Turn the Grafana dashboard's PromQL queries into a Prometheus rule file for ``promtool``.

Grafana has no offline validator here, but every panel query is PromQL: written out as recording
rules, ``promtool check rules`` parses each expression with Prometheus' own parser. Grafana's
``$__rate_interval`` / ``$__interval`` macros become a fixed range first.

    dashboard_rules.py DASHBOARD.json > rules.yaml && promtool check rules rules.yaml
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Sequence

from pydantic import BaseModel, ValidationError

GRAFANA_RANGE_MACROS = re.compile(r"\$__(rate_interval|interval|range)\b")
MACRO_RANGE = "5m"


class Target(BaseModel):
    """One query of a panel (only Prometheus targets carry ``expr``)."""

    refId: str
    expr: str


class Panel(BaseModel):
    id: int
    title: str
    targets: list[Target]


class Dashboard(BaseModel):
    """The parts of a Grafana dashboard JSON this tool reads."""

    uid: str
    title: str
    panels: list[Panel]


def promql(expr: str) -> str:
    """``expr`` with Grafana's range macros replaced by a fixed range."""
    return GRAFANA_RANGE_MACROS.sub(MACRO_RANGE, expr)


def rule_name(panel: Panel, target: Target) -> str:
    """A valid metric name for a recording rule, unique per (panel, target)."""
    return f"dashboard:panel{panel.id}_{target.refId.lower()}"


def rules_document(dashboard: Dashboard) -> dict:
    """A Prometheus rule file with one recording rule per dashboard query."""
    rules = [{"record": rule_name(p, t), "expr": promql(t.expr)}
             for p in dashboard.panels for t in p.targets]
    return {"groups": [{"name": f"grafana-{dashboard.uid}", "rules": rules}]}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dashboard", type=Path, help="Grafana dashboard JSON")
    args = parser.parse_args(argv)
    try:
        dashboard = Dashboard.model_validate(json.loads(args.dashboard.read_text()))
    except (OSError, json.JSONDecodeError, ValidationError) as exc:
        print(f"dashboard_rules.py: {args.dashboard}: {exc}", file=sys.stderr)
        return 1
    # JSON is valid YAML: promtool reads this file as a rule file.
    json.dump(rules_document(dashboard), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
