"""Prometheus config and the Grafana dashboard's queries, checked by promtool (Prometheus' parser)."""

from __future__ import annotations

import json
from pathlib import Path

from deploy_checks import DEPLOY, Tools, load_deploy_module

dashboard_rules = load_deploy_module("dashboard_rules", "dashboard_rules.py")
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "sparse-serve.json"


def load_dashboard():
    return dashboard_rules.Dashboard.model_validate(json.loads(DASHBOARD.read_text()))


def test_promtool_accepts_config_and_every_query(tools: Tools) -> None:
    done = tools.run(DEPLOY / "check.sh", "monitoring")
    assert done.returncode == 0, done.stdout + done.stderr
    queries = sum(len(p.targets) for p in load_dashboard().panels)
    assert f"SUCCESS: {queries} rules found" in done.stdout


def test_promtool_rejects_a_broken_query(tools: Tools, tmp_path: Path) -> None:
    broken = json.loads(DASHBOARD.read_text())
    broken["panels"][0]["targets"][0]["expr"] = "histogram_quantile(0.5, sum by (le) (rate(x[5m]))"
    (tmp_path / "d.json").write_text(json.dumps(broken))
    rules = tools.run("python", DEPLOY / "dashboard_rules.py", tmp_path / "d.json")
    assert rules.returncode == 0, rules.stderr
    (tmp_path / "rules.yaml").write_text(rules.stdout)
    done = tools.run("promtool", "check", "rules", tmp_path / "rules.yaml")
    assert done.returncode != 0
    assert '"dashboard:panel1_a": could not parse expression' in done.stderr
    assert "unclosed left parenthesis" in done.stderr


def test_dashboard_shows_what_the_issue_asks_for() -> None:
    exprs = " ".join(t.expr for p in load_dashboard().panels for t in p.targets)
    for series in ("sparse_serve:time_to_first_token_seconds_bucket",
                   "sparse_serve:inter_token_latency_seconds_bucket",
                   "sparse_serve:sparse_prefill_tokens_total", "sparse_serve:prompt_tokens_total",
                   "sparse_serve:kv_pool_bytes", "sparse_serve:kv_offload_bytes"):
        assert series in exprs
    for quantile in ("0.5", "0.9", "0.99"):
        assert f"histogram_quantile({quantile}, sum by (le) (rate(sparse_serve:time_to_first" in exprs


def test_grafana_macros_become_a_fixed_range() -> None:
    assert dashboard_rules.promql("rate(a[$__rate_interval]) + rate(b[$__interval])") == \
        "rate(a[5m]) + rate(b[5m])"
    assert dashboard_rules.promql("x_total") == "x_total"


def test_one_uniquely_named_rule_per_query() -> None:
    dashboard = load_dashboard()
    (group,) = dashboard_rules.rules_document(dashboard)["groups"]
    names = [r["record"] for r in group["rules"]]
    assert len(names) == len(set(names)) == sum(len(p.targets) for p in dashboard.panels)
    assert all("$__" not in r["expr"] for r in group["rules"])


def test_provisioning_points_grafana_at_the_dashboard_and_prometheus() -> None:
    compose_text = (DEPLOY / "compose.yaml").read_text()
    assert "./grafana/dashboards:/var/lib/grafana/dashboards:ro" in compose_text
    provider = (DEPLOY / "grafana" / "provisioning" / "dashboards" / "sparse-serve.yaml").read_text()
    assert "path: /var/lib/grafana/dashboards" in provider
    datasource = (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml").read_text()
    raw = json.loads(DASHBOARD.read_text())
    used = {t["datasource"]["uid"] for p in raw["panels"] for t in p["targets"]}
    assert used == {"prometheus"} and "uid: prometheus" in datasource
    assert "url: http://prometheus:9090" in datasource
