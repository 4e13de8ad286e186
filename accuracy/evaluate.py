"""Send generated samples through the load-test runner and score the answers.

Reuses `loadtests` end to end: the same streaming client (TTFT per sample),
loopback guard and ABBA interleaving, so an A/B accuracy comparison sends
every sample to both servers back to back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime

from accuracy.results import EvalReport, aggregate, score_outcomes
from accuracy.sample import Sample
from loadtests.client import RequestSpec, StreamOptions
from loadtests.runner import RunPlan, RunState, run_targets
from loadtests.target import Target
from loadtests.tokenizer import PromptTokenizer

WARMUP = RequestSpec(index=0, prompt="Say hello.", input_tokens=4, max_tokens=4, bucket="warmup")


def to_specs(samples: Sequence[Sample]) -> list[RequestSpec]:
    """One request per sample; the request index is the sample's position."""
    return [
        RequestSpec(index=i, prompt=s.prompt, input_tokens=s.prompt_tokens, max_tokens=s.max_tokens, bucket=str(s.length))
        for i, s in enumerate(samples)
    ]


def run_samples(
    targets: Sequence[Target],
    samples: Sequence[Sample],
    options: StreamOptions,
    max_concurrency: int,
    tokenizer: PromptTokenizer,
    state: RunState,
    progress: bool = True,
) -> RunState:
    """Send every sample to every target (fills `state`; Ctrl-C leaves it partial)."""
    plan = RunPlan(max_concurrency=max_concurrency, round_size=max_concurrency)
    try:
        asyncio.run(run_targets(targets, to_specs(samples), [WARMUP], options, plan, state, tokenizer.count, progress))
    except KeyboardInterrupt:
        state.interrupted = True
    return state


def eval_report(
    target: Target,
    samples: Sequence[Sample],
    state: RunState,
    settings: dict,
    native: int | None,
    detailed: bool,
) -> EvalReport:
    """Score `target`'s results into a report; `settings` holds the run's knobs."""
    outcomes = score_outcomes(samples, state.results[target.label])
    cells, depth_cells = aggregate(outcomes, native)
    return EvalReport(
        date=datetime.fromtimestamp(state.started_at).isoformat(timespec="seconds"),
        label=target.label, base_url=target.base_url, model_id=target.model or "",
        native_length=native, interrupted=state.interrupted, cells=cells, depth_cells=depth_cells,
        outcomes=outcomes if detailed else None, **settings,
    )
