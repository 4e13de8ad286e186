"""The task catalogue and the sample grid (task x length x sample index)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tqdm import tqdm

from accuracy.sample import Sample
from accuracy.tasks.context import SampleContext
from accuracy.tasks.fact_qa import fact_qa
from accuracy.tasks.needles import niah_multikey, niah_multiquery, niah_multivalue, niah_single
from accuracy.tasks.variable_tracking import variable_tracking
from accuracy.tasks.word_frequency import common_words, frequent_words
from loadtests.tokenizer import PromptTokenizer


@dataclass(frozen=True)
class Task:
    """A task generator and whether its samples have a needle depth."""

    make: Callable[[SampleContext], Sample]
    has_depth: bool


TASKS: dict[str, Task] = {
    "niah_single": Task(niah_single, True),
    "niah_multikey": Task(niah_multikey, True),
    "niah_multivalue": Task(niah_multivalue, True),
    "niah_multiquery": Task(niah_multiquery, True),
    "variable_tracking": Task(variable_tracking, False),
    "common_words": Task(common_words, False),
    "frequent_words": Task(frequent_words, False),
    "fact_qa": Task(fact_qa, True),
}
DEFAULT_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


def parse_tasks(text: str) -> list[str]:
    """Comma-separated task names ("all" for every task); raises ValueError on unknown names."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    if names == ["all"]:
        return list(TASKS)
    unknown = [n for n in names if n not in TASKS]
    if unknown or not names:
        raise ValueError(f"unknown task(s) {unknown or text!r}; choose from {', '.join(TASKS)} or 'all'")
    return names


def parse_numbers(text: str, kind: type, what: str) -> list:
    """Comma-separated ints or floats, e.g. "2048,4096"; raises ValueError with the option name."""
    try:
        return [kind(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise ValueError(f"bad {what} {text!r}: expected comma-separated numbers") from exc


def generate_samples(
    tokenizer: PromptTokenizer,
    tasks: Sequence[str],
    lengths: Sequence[int],
    samples: int,
    seed: int,
    endpoint: str = "chat",
    depths: Sequence[float] = DEFAULT_DEPTHS,
    progress: bool = True,
) -> list[Sample]:
    """All samples of the grid; sample i of a needle task sits at depths[i % len(depths)]."""
    if samples < 1:
        raise ValueError(f"--samples must be >= 1, got {samples}")
    if not depths or any(not 0.0 <= d <= 1.0 for d in depths):
        raise ValueError(f"depths must be in [0, 1], got {list(depths)}")
    grid = [(t, n, i) for t in tasks for n in lengths for i in range(samples)]
    out = []
    for task, length, index in tqdm(grid, desc="generating samples", disable=not progress, leave=False):
        depth = depths[index % len(depths)] if TASKS[task].has_depth else None
        ctx = SampleContext(task=task, tokenizer=tokenizer, length=length, index=index, depth=depth, seed=seed, endpoint=endpoint)
        out.append(TASKS[task].make(ctx))
    return out
