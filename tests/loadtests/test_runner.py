"""Pacing, concurrency cap, warm-up, duration cap, ABBA interleaving, cancellation."""

from __future__ import annotations

import asyncio
import time

import pytest

from loadtests.client import RequestSpec, StreamOptions
from loadtests.runner import RunPlan, RunState, abba_rounds, run_targets
from loadtests.target import Target


def specs(n: int, max_tokens: int = 3) -> list[RequestSpec]:
    return [RequestSpec(index=i, prompt=f"request number {i}", input_tokens=3, max_tokens=max_tokens, bucket="4") for i in range(n)]


def run(targets: list[Target], plan: RunPlan, n: int = 6, warmups: int = 0, max_tokens: int = 3) -> RunState:
    state = RunState([t.label for t in targets])
    warm = [RequestSpec(index=0, prompt="warm up", input_tokens=2, max_tokens=1, bucket="2")] * warmups
    asyncio.run(run_targets(targets, specs(n, max_tokens), warm, StreamOptions(timeout_s=10), plan, state, progress=False))
    return state


def target(url: str, label: str = "t") -> Target:
    return Target(label=label, base_url=url, model="fault-model")


def test_abba_rounds() -> None:
    rounds = abba_rounds(5, 2, ["A", "B"])
    assert [(list(r), order) for r, order in rounds] == [
        ([0, 1], ["A", "B"]), ([2, 3], ["B", "A"]), ([4], ["A", "B"]),
    ]


def test_faults_are_counted_and_the_run_finishes(fault_server) -> None:
    server, url = fault_server(modes=("ok", "slow_first", "http500", "drop", "malformed", "stream_error"))
    state = run([target(url)], RunPlan(), n=12)
    results = state.results["t"]
    assert len(results) == 12 and server.requests == 12
    assert sum(r.success for r in results) == 4 and sum(not r.success for r in results) == 8
    assert state.server_metrics["t"].available
    assert state.server_metrics["t"].deltas["sparse_serve:requests_total"] == 12


def test_warmups_are_not_recorded(fault_server) -> None:
    server, url = fault_server()
    state = run([target(url)], RunPlan(), n=3, warmups=2)
    assert server.requests == 5 and len(state.results["t"]) == 3
    assert state.server_metrics["t"].deltas["sparse_serve:requests_total"] == 3


def test_max_concurrency_and_rate(fault_server) -> None:
    _, url = fault_server(token_delay_s=0.05)
    state = run([target(url)], RunPlan(max_concurrency=2), n=6)
    rows = state.results["t"]
    assert len(rows) == 6
    for r in rows:  # never more than 2 in flight when a request starts
        assert sum(1 for other in rows if other.start_s <= r.start_s < other.start_s + other.e2el_s) <= 2
    paced = run([target(url)], RunPlan(request_rate=10.0, burstiness=1e6, seed=0), n=5)
    starts = sorted(r.start_s for r in paced.results["t"])
    assert starts[-1] == pytest.approx(0.4, abs=0.1)  # near-constant 100 ms gaps


def test_duration_cap_stops_dispatch(fault_server) -> None:
    _, url = fault_server()
    state = run([target(url)], RunPlan(request_rate=5.0, burstiness=1e6, duration_s=0.5), n=20)
    sent = len(state.results["t"])
    assert 2 <= sent <= 4 and state.not_sent["t"] == 20 - sent


def test_compare_sends_the_same_sequence_interleaved(fault_server) -> None:
    server_a, url_a = fault_server()
    server_b, url_b = fault_server()
    state = run([target(url_a, "A"), target(url_b, "B")], RunPlan(round_size=2, max_concurrency=1), n=5)
    prompts_a = [b["prompt"] for b in server_a.bodies]
    assert prompts_a == [b["prompt"] for b in server_b.bodies] == [f"request number {i}" for i in range(5)]
    # ABBA: round 0 A then B, round 1 B then A, round 2 A then B
    first_start = {label: {r.index: r.start_s for r in rows} for label, rows in state.results.items()}
    assert first_start["A"][0] < first_start["B"][0]
    assert first_start["B"][2] < first_start["A"][2]
    assert first_start["A"][4] < first_start["B"][4]
    assert state.busy_s["A"] > 0 and state.busy_s["B"] > 0


def test_cancel_keeps_partial_results(fault_server) -> None:
    _, url = fault_server(modes=("ok", "ok", "slow_first"), slow_first_s=5.0)

    async def go() -> RunState:
        state = RunState(["t"])
        task = asyncio.create_task(run_targets([target(url)], specs(3), [], StreamOptions(timeout_s=10), RunPlan(), state, progress=False))
        await asyncio.sleep(1.0)
        task.cancel()
        return await task

    started = time.perf_counter()
    state = asyncio.run(go())
    assert time.perf_counter() - started < 4
    assert state.interrupted and len(state.results["t"]) == 2
