"""Scored outcomes, the task x length table, depth cells and A/B deltas (JSON schema)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, Field

from accuracy.sample import Sample
from accuracy.scoring import score
from loadtests.client import RequestResult

GOAL_POINTS = 1.0  # sparse may lose at most this many accuracy points vs dense


class SampleOutcome(BaseModel):
    """One sample's answer and score on one server."""

    task: str
    length: int
    index: int
    depth: float | None
    prompt_tokens: int
    answers: list[str]
    prediction: str
    success: bool
    error: str = ""
    score: float | None = Field(description="0..1, None when the request failed")
    ttft_ms: float | None


class Cell(BaseModel):
    """Accuracy (percent, over completed samples) and mean TTFT of one task x length."""

    task: str
    length: int
    beyond_native: bool
    samples: int
    completed: int
    failed: int
    accuracy: float | None
    mean_ttft_ms: float | None


class DepthCell(BaseModel):
    """Accuracy of a needle task at one depth and length."""

    task: str
    length: int
    depth: float
    samples: int
    accuracy: float | None


class EvalReport(BaseModel):
    """Everything one server scored."""

    date: str
    label: str
    base_url: str
    model_id: str
    endpoint: str
    tasks: list[str]
    lengths: list[int]
    samples_per_cell: int
    seed: int
    native_length: int | None
    interrupted: bool = False
    cells: list[Cell]
    depth_cells: list[DepthCell]
    outcomes: list[SampleOutcome] | None = None


class CellDelta(BaseModel):
    """B - A accuracy of one cell; `misses_goal` when B < A - GOAL_POINTS."""

    task: str
    length: int
    a: float | None
    b: float | None
    delta: float | None
    misses_goal: bool


class EvalCompareReport(BaseModel):
    """Same samples on two servers, with per-cell deltas."""

    date: str
    labels: list[str]
    goal_points: float = GOAL_POINTS
    targets: dict[str, EvalReport]
    deltas: list[CellDelta]


def score_outcomes(samples: Sequence[Sample], results: Sequence[RequestResult]) -> list[SampleOutcome]:
    """Match results to samples by index (results[i].index == position in samples) and score."""
    by_index = {r.index: r for r in results}
    outcomes = []
    for position, sample in enumerate(samples):
        result = by_index.get(position)
        if result is None:
            continue  # never sent (interrupted run)
        outcomes.append(
            SampleOutcome(
                task=sample.task, length=sample.length, index=sample.index, depth=sample.depth,
                prompt_tokens=sample.prompt_tokens, answers=sample.answers, prediction=result.generated_text,
                success=result.success, error=result.error,
                score=score(result.generated_text, sample.answers, sample.metric) if result.success else None,
                ttft_ms=None if result.ttft_s is None else result.ttft_s * 1000,
            )
        )
    return outcomes


def _mean(values: Sequence[float], scale: float = 1.0) -> float | None:
    return float(np.mean(values)) * scale if values else None


def aggregate(outcomes: Sequence[SampleOutcome], native_length: int | None) -> tuple[list[Cell], list[DepthCell]]:
    """Per task x length cells and per task x length x depth cells (order of first appearance)."""
    cells, depth_cells = [], []
    keys = list(dict.fromkeys((o.task, o.length) for o in outcomes))
    for task, length in keys:
        group = [o for o in outcomes if o.task == task and o.length == length]
        done = [o for o in group if o.success]
        cells.append(Cell(
            task=task, length=length, beyond_native=native_length is not None and length > native_length,
            samples=len(group), completed=len(done), failed=len(group) - len(done),
            accuracy=_mean([o.score for o in done if o.score is not None], 100.0),
            mean_ttft_ms=_mean([o.ttft_ms for o in done if o.ttft_ms is not None]),
        ))
        for depth in sorted({o.depth for o in group if o.depth is not None}):
            at_depth = [o for o in done if o.depth == depth]
            depth_cells.append(DepthCell(
                task=task, length=length, depth=depth, samples=len(at_depth),
                accuracy=_mean([o.score for o in at_depth if o.score is not None], 100.0),
            ))
    return cells, depth_cells


def cell_deltas(a: EvalReport, b: EvalReport, goal_points: float = GOAL_POINTS) -> list[CellDelta]:
    """B - A per cell present in both reports."""
    b_cells = {(c.task, c.length): c for c in b.cells}
    deltas = []
    for cell in a.cells:
        other = b_cells.get((cell.task, cell.length))
        if other is None:
            continue
        both = cell.accuracy is not None and other.accuracy is not None
        delta = other.accuracy - cell.accuracy if both else None
        deltas.append(CellDelta(
            task=cell.task, length=cell.length, a=cell.accuracy, b=other.accuracy, delta=delta,
            misses_goal=delta is not None and delta < -goal_points,
        ))
    return deltas


SUITE_FIELDS = ("endpoint", "tasks", "lengths", "samples_per_cell", "seed")
"""What two reports must share to be compared cell by cell (same generated samples)."""


def compare_reports(a: EvalReport, b: EvalReport) -> EvalCompareReport:
    """B against A; ValueError when they did not run the same suite or share a label."""
    for field in SUITE_FIELDS:
        if getattr(a, field) != getattr(b, field):
            raise ValueError(f"the reports ran different suites: {field} is {getattr(a, field)!r} "
                             f"in {a.label!r} but {getattr(b, field)!r} in {b.label!r}")
    if a.label == b.label:
        raise ValueError(f"both reports are labelled {a.label!r}; label the servers (LABEL=URL)")
    return EvalCompareReport(date=a.date, labels=[a.label, b.label], targets={a.label: a, b.label: b},
                             deltas=cell_deltas(a, b))


def _fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def format_table(report: EvalReport) -> str:
    """Markdown table: tasks as rows, lengths as columns, "accuracy% (TTFT ms)"."""
    cells = {(c.task, c.length): c for c in report.cells}
    header = "| task | " + " | ".join(
        f"{n}{' (beyond native)' if cells.get((report.tasks[0], n)) and cells[(report.tasks[0], n)].beyond_native else ''}"
        for n in report.lengths
    ) + " |"
    lines = [f"{report.label}: accuracy % (mean TTFT ms)", header, "|---|" + "---|" * len(report.lengths)]
    for task in report.tasks:
        row = []
        for n in report.lengths:
            c = cells.get((task, n))
            row.append("-" if c is None else f"{_fmt(c.accuracy)} ({_fmt(c.mean_ttft_ms, 0)})" + (f" [{c.failed} failed]" if c.failed else ""))
        lines.append(f"| {task} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def format_delta_table(report: EvalCompareReport) -> str:
    """Markdown table of "A -> B (delta)" per cell; cells missing the goal are flagged."""
    a, b = report.labels
    lengths = report.targets[a].lengths
    deltas = {(d.task, d.length): d for d in report.deltas}
    lines = [f"accuracy {a} -> {b} (B - A points; ! = misses the -{report.goal_points:g} point goal)",
             "| task | " + " | ".join(str(n) for n in lengths) + " |", "|---|" + "---|" * len(lengths)]
    for task in report.targets[a].tasks:
        row = []
        for n in lengths:
            d = deltas.get((task, n))
            row.append("-" if d is None else f"{_fmt(d.a)} -> {_fmt(d.b)} ({'+' if (d.delta or 0) >= 0 else ''}{_fmt(d.delta)}){' !' if d.misses_goal else ''}")
        lines.append(f"| {task} | " + " | ".join(row) + " |")
    return "\n".join(lines)
