"""Drive a request sequence against one or more servers.

Requests are dispatched at their arrival offsets under an optional
concurrency cap and an overall duration cap. With several targets the
sequence is cut into rounds that every target replays with the same relative
timing, in ABBA order (A,B then B,A ...), so slow drift of the machine hits
both servers alike and they never compete for the CPU. Warm-up requests are
sent first and not recorded. Cancellation (Ctrl-C) stops dispatch, cancels
in-flight requests and leaves the finished results in `RunState`.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence

import httpx
import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from tqdm import tqdm

from loadtests.arrivals import arrival_offsets
from loadtests.client import RequestResult, RequestSpec, StreamOptions, stream_request
from loadtests.server_metrics import ServerMetricsDelta, Snapshot, metrics_delta, scrape
from loadtests.target import Target


class RunPlan(BaseModel):
    """How requests are paced."""

    model_config = ConfigDict(frozen=True)

    request_rate: float = Field(default=math.inf, gt=0)
    burstiness: float = Field(default=1.0, gt=0)
    max_concurrency: int | None = Field(default=None, ge=1)
    duration_s: float | None = Field(default=None, gt=0, description="stop dispatching after this")
    round_size: int = Field(default=8, ge=1, description="requests per interleaved compare round")
    seed: int = 0


class RunState:
    """Everything a run has produced so far; complete even after Ctrl-C."""

    def __init__(self, labels: Sequence[str]) -> None:
        self.results: dict[str, list[RequestResult]] = {label: [] for label in labels}
        self.busy_s: dict[str, float] = {label: 0.0 for label in labels}
        self.server_metrics: dict[str, ServerMetricsDelta] = {}
        self.warmup_failures: dict[str, int] = {label: 0 for label in labels}
        self.not_sent: dict[str, int] = {label: 0 for label in labels}
        self.interrupted = False
        self.started_at = time.time()

    def duration(self, label: str) -> float:
        """Seconds `label` was under load (at least 1 ms)."""
        return max(self.busy_s[label], 1e-3)


def abba_rounds(num_requests: int, round_size: int, labels: Sequence[str]) -> list[tuple[range, list[str]]]:
    """Request index ranges per round and the target order within each round."""
    rounds = []
    for r, start in enumerate(range(0, num_requests, round_size)):
        order = list(labels) if r % 2 == 0 else list(reversed(labels))
        rounds.append((range(start, min(start + round_size, num_requests)), order))
    return rounds


async def run_targets(
    targets: Sequence[Target],
    specs: Sequence[RequestSpec],
    warmups: Sequence[RequestSpec],
    options: StreamOptions,
    plan: RunPlan,
    state: RunState,
    count_tokens: Callable[[str], int] | None = None,
    progress: bool = True,
) -> RunState:
    """Send `specs` to every target (see module docstring); fills `state`."""
    by_label = {t.label: t for t in targets}
    single = len(targets) == 1
    offsets = arrival_offsets(len(specs), plan.request_rate, plan.burstiness, plan.seed)
    rounds = abba_rounds(len(specs), len(specs) if single else plan.round_size, list(by_label))
    limits = httpx.Limits(max_connections=plan.max_concurrency or 256)
    timeout = httpx.Timeout(options.timeout_s, connect=min(options.timeout_s, 30.0))
    bar = tqdm(total=len(specs) * len(targets), desc="requests", unit="req", disable=not progress)
    async with httpx.AsyncClient(limits=limits, timeout=timeout, trust_env=False) as client:
        before: dict[str, tuple[Snapshot | None, str]] = {}
        try:
            for target in targets:
                await _warm_up(client, target, warmups, options, state, count_tokens)
                before[target.label] = await scrape(client, target)
            run_start = time.perf_counter()
            deadline = run_start + plan.duration_s if plan.duration_s else math.inf
            for indices, order in rounds:
                for label in order:
                    chunk = [specs[i] for i in indices]
                    round_offsets = offsets[indices.start : indices.stop] - offsets[indices.start]
                    await _run_round(
                        client, by_label[label], chunk, round_offsets, options, plan, state,
                        run_start, deadline, count_tokens, bar,
                    )
        except asyncio.CancelledError:
            state.interrupted = True
        finally:
            bar.close()
        for target in targets:
            if target.label in before:
                after, error = await scrape(client, target)
                state.server_metrics[target.label] = metrics_delta(before[target.label][0], after, error or before[target.label][1])
    return state


async def _warm_up(
    client: httpx.AsyncClient,
    target: Target,
    warmups: Sequence[RequestSpec],
    options: StreamOptions,
    state: RunState,
    count_tokens: Callable[[str], int] | None,
) -> None:
    for spec in warmups:
        result = await stream_request(client, target, spec, options, time.perf_counter(), count_tokens)
        state.warmup_failures[target.label] += not result.success


async def _run_round(
    client: httpx.AsyncClient,
    target: Target,
    chunk: Sequence[RequestSpec],
    offsets: np.ndarray,
    options: StreamOptions,
    plan: RunPlan,
    state: RunState,
    run_start: float,
    deadline: float,
    count_tokens: Callable[[str], int] | None,
    bar: tqdm,
) -> None:
    """Dispatch one round against one target and wait for all its requests."""
    gate = asyncio.Semaphore(plan.max_concurrency or len(chunk) or 1)
    results = state.results[target.label]

    async def one(spec: RequestSpec) -> None:
        try:
            results.append(await stream_request(client, target, spec, options, run_start, count_tokens))
            bar.update(1)
        finally:
            gate.release()

    round_start = time.perf_counter()
    tasks: list[asyncio.Task[None]] = []
    try:
        for spec, offset in zip(chunk, offsets):
            delay = round_start + float(offset) - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await gate.acquire()
            if time.perf_counter() >= deadline:
                gate.release()
                state.not_sent[target.label] += len(chunk) - len(tasks)
                break
            tasks.append(asyncio.create_task(one(spec)))
        await asyncio.gather(*tasks)
    except asyncio.CancelledError:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    finally:
        state.busy_s[target.label] += time.perf_counter() - round_start
