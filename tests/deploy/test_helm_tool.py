"""deploy/helm_tool.py: values layering, lint verdicts, `helm template`-style output, usage errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy_checks import CHART, Tools, load_deploy_module

helm_tool = load_deploy_module("helm_tool", "helm_tool.py")


def test_values_merge_like_helm_f() -> None:
    base = {"serve": {"dtype": "auto", "tensorParallelSize": 1}, "tolerations": [{"a": 1}]}
    over = {"serve": {"tensorParallelSize": 8}, "tolerations": []}
    assert helm_tool.merge_values(base, over) == {
        "serve": {"dtype": "auto", "tensorParallelSize": 8}, "tolerations": []}
    assert base["serve"]["tensorParallelSize"] == 1  # inputs untouched


def test_load_values_rejects_non_mappings(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("serve: {dtype: float32}\n")
    (tmp_path / "b.yaml").write_text("- not a mapping\n")
    assert helm_tool.load_values([tmp_path / "a.yaml"]) == {"serve": {"dtype": "float32"}}
    with pytest.raises(ValueError, match="must be a YAML mapping"):
        helm_tool.load_values([tmp_path / "b.yaml"])


@pytest.mark.parametrize(("severities", "errors", "strict", "failed"), [
    ([1], [], True, False),
    ([1, 2], [], False, False),
    ([1, 2], [], True, True),
    ([3], [], False, True),
    ([], ["boom"], False, True),
])
def test_lint_verdict(severities: list[int], errors: list[str], strict: bool, failed: bool) -> None:
    report = helm_tool.LintReport(total_charts_linted=1, errors=errors, messages=[
        helm_tool.LintMessage(severity=s, path="x", error="e") for s in severities])
    assert helm_tool.lint_failed(report, strict) is failed


def test_stream_skips_notes_and_empty_files_in_stable_order() -> None:
    stream = helm_tool.manifests_to_stream({
        "c/templates/z.yaml": "kind: B\n", "c/templates/NOTES.txt": "hello",
        "c/templates/a.yaml": "\n\n", "c/templates/m.yaml": "kind: A",
    })
    assert stream == ("---\n# Source: c/templates/m.yaml\nkind: A\n"
                      "---\n# Source: c/templates/z.yaml\nkind: B\n")


def test_usage_errors_exit_2(tools: Tools, tmp_path: Path) -> None:
    not_a_chart = tools.helm("lint", tmp_path)
    assert not_a_chart.returncode == 2 and "not a chart folder" in not_a_chart.stderr
    missing = tools.helm("template", CHART, "-f", tmp_path / "nope.yaml")
    assert missing.returncode == 2 and "nope.yaml" in missing.stderr
