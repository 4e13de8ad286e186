"""Scoring results into cells, depth cells, deltas and tables."""

from __future__ import annotations

import pytest

from accuracy.results import EvalReport, aggregate, cell_deltas, format_delta_table, format_table, score_outcomes
from accuracy.results import EvalCompareReport, compare_reports
from accuracy.sample import Sample
from loadtests.client import RequestResult


def sample(task: str, length: int, index: int, depth: float | None, answers: list[str], metric: str = "all") -> Sample:
    return Sample(task=task, length=length, index=index, depth=depth, prompt="p", prompt_tokens=10,
                  max_tokens=8, answers=answers, metric=metric)


def result(index: int, text: str, success: bool = True, ttft: float = 0.2) -> RequestResult:
    return RequestResult(index=index, target="t", bucket="x", success=success, start_s=0.0,
                         ttft_s=ttft if success else None, e2el_s=0.5 if success else None,
                         generated_text=text, error="" if success else "HTTP 400: too long")


SAMPLES = [
    sample("niah_single", 2048, 0, 0.0, ["111"]),
    sample("niah_single", 2048, 1, 1.0, ["222"]),
    sample("niah_single", 4096, 0, 0.0, ["333"]),
    sample("niah_multivalue", 2048, 0, 0.0, ["1", "2", "3", "4"]),
    sample("fact_qa", 4096, 0, 0.5, ["salt", "rock salt"], "part"),
]
RESULTS = [
    result(0, "It is 111.", ttft=0.1),
    result(1, "No idea.", ttft=0.3),
    result(2, "", success=False),
    result(3, "1 and 3"),
    result(4, "rock salt"),
]


def test_outcomes_and_cells() -> None:
    outcomes = score_outcomes(SAMPLES, RESULTS)
    assert [o.score for o in outcomes] == [1.0, 0.0, None, 0.5, 1.0]
    cells, depth_cells = aggregate(outcomes, native_length=2048)
    by_key = {(c.task, c.length): c for c in cells}
    single = by_key[("niah_single", 2048)]
    assert (single.accuracy, single.completed, single.failed, single.beyond_native) == (50.0, 2, 0, False)
    assert single.mean_ttft_ms == pytest.approx(200)
    failed = by_key[("niah_single", 4096)]
    assert failed.accuracy is None and failed.failed == 1 and failed.beyond_native
    assert by_key[("niah_multivalue", 2048)].accuracy == 50.0
    depth = {(d.task, d.length, d.depth): d.accuracy for d in depth_cells}
    assert depth[("niah_single", 2048, 0.0)] == 100.0 and depth[("niah_single", 2048, 1.0)] == 0.0


def test_missing_results_are_skipped() -> None:
    assert len(score_outcomes(SAMPLES, RESULTS[:2])) == 2


def report(label: str, results: list[RequestResult]) -> EvalReport:
    cells, depth_cells = aggregate(score_outcomes(SAMPLES, results), None)
    return EvalReport(date="d", label=label, base_url="http://127.0.0.1:1", model_id="m", endpoint="chat",
                      tasks=["niah_single", "niah_multivalue", "fact_qa"], lengths=[2048, 4096], samples_per_cell=2,
                      seed=0, native_length=None, cells=cells, depth_cells=depth_cells)


def test_deltas_flag_cells_that_miss_the_goal() -> None:
    dense = report("dense", RESULTS)
    sparse_results = list(RESULTS)
    sparse_results[3] = result(3, "1, 2, 3 and 4")      # multivalue 50 -> 100
    sparse_results[4] = result(4, "sugar")               # fact_qa 100 -> 0
    sparse = report("sparse", sparse_results)
    deltas = {(d.task, d.length): d for d in cell_deltas(dense, sparse)}
    assert deltas[("niah_multivalue", 2048)].delta == 50.0 and not deltas[("niah_multivalue", 2048)].misses_goal
    assert deltas[("fact_qa", 4096)].delta == -100.0 and deltas[("fact_qa", 4096)].misses_goal
    assert deltas[("niah_single", 2048)].delta == 0.0
    assert deltas[("niah_single", 4096)].delta is None  # failed on both
    compare = EvalCompareReport(date="d", labels=["dense", "sparse"], targets={"dense": dense, "sparse": sparse},
                                deltas=list(deltas.values()))
    table = format_delta_table(compare)
    assert "| fact_qa | - | 100.0 -> 0.0 (-100.0) ! |" in table


def test_table_layout() -> None:
    text = format_table(report("dense", RESULTS))
    assert "| niah_single | 50.0 (200) | n/a (n/a) [1 failed] |" in text
    assert "| fact_qa | - | 100.0 (200) |" in text


def test_compare_reports_needs_the_same_suite() -> None:
    dense, sparse = report("dense", RESULTS), report("sparse", RESULTS)
    assert [d.delta for d in compare_reports(dense, sparse).deltas if d.delta is not None] == [0.0] * 3
    with pytest.raises(ValueError, match="seed is 0 in 'dense' but 1 in 'sparse'"):
        compare_reports(dense, sparse.model_copy(update={"seed": 1}))
    with pytest.raises(ValueError, match="both reports are labelled 'dense'"):
        compare_reports(dense, dense)
