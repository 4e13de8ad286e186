"""deploy/docker/ray_wait_nodes.py: counts live Ray nodes and gives up after its timeout."""

from __future__ import annotations

import subprocess
import sys

import pytest

from deploy_checks import DEPLOY, load_deploy_module

ray_wait = load_deploy_module("ray_wait_nodes", "docker/ray_wait_nodes.py")


class FakeTime:
    """A clock that only moves when slept on (no real waiting in tests)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_alive_nodes_ignores_dead_ones() -> None:
    nodes = [{"Alive": True}, {"Alive": False}, {"alive": True}, {}]
    assert ray_wait.alive_nodes(nodes) == 2


def test_waits_until_the_workers_join() -> None:
    joins = iter([[{"Alive": True}], [{"Alive": True}], [{"Alive": True}, {"Alive": True}]])
    t = FakeTime()
    have = ray_wait.wait_for_nodes(lambda: next(joins), want=2, timeout_s=60, poll_s=5,
                                   sleep=t.sleep, clock=t.clock)
    assert have == 2
    assert t.sleeps == [5, 5]


def test_gives_up_at_the_deadline() -> None:
    t = FakeTime()
    with pytest.raises(TimeoutError, match="only 1 of 3 Ray nodes joined within 12 s"):
        ray_wait.wait_for_nodes(lambda: [{"Alive": True}], want=3, timeout_s=12, poll_s=5,
                                sleep=t.sleep, clock=t.clock)
    assert t.now == 12 and t.sleeps == [5, 5, 2]


@pytest.mark.parametrize(("want", "timeout", "message"), [(0, 10, "want"), (2, 0, "timeout")])
def test_bad_arguments_are_value_errors(want: int, timeout: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ray_wait.wait_for_nodes(lambda: [], want=want, timeout_s=timeout)


def test_cli_rejects_bad_arguments_before_touching_ray() -> None:
    done = subprocess.run([sys.executable, str(DEPLOY / "docker" / "ray_wait_nodes.py"),
                           "--nodes", "0"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "--nodes must be >= 1" in done.stderr
