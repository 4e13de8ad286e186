"""Wait until a Ray cluster has enough live nodes, then exit 0 (exit 1 on timeout).

The multi-node head runs it between ``ray start --head`` and ``sparse-serve serve
--distributed-executor-backend ray``, so vLLM's placement group (tensor-parallel GPUs on each of
the pipeline-parallel nodes) is only requested once every node has joined. Bounded in time.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Callable, Sequence

POLL_S = 5.0


def alive_nodes(nodes: Sequence[dict[str, Any]]) -> int:
    """Count the entries of ``ray.nodes()`` that are alive."""
    return sum(1 for node in nodes if node.get("Alive") or node.get("alive"))


def wait_for_nodes(list_nodes: Callable[[], Sequence[dict[str, Any]]], want: int, timeout_s: float,
                   poll_s: float = POLL_S, sleep: Callable[[float], None] = time.sleep,
                   clock: Callable[[], float] = time.monotonic) -> int:
    """Poll ``list_nodes`` until ``want`` nodes are alive; return the count (raises on timeout)."""
    if want < 1:
        raise ValueError(f"want must be >= 1 node, got {want}")
    if timeout_s <= 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout_s}")
    deadline = clock() + timeout_s
    while True:
        have = alive_nodes(list_nodes())
        print(f"ray_wait_nodes: {have}/{want} nodes alive", flush=True)
        if have >= want:
            return have
        if clock() >= deadline:
            raise TimeoutError(f"only {have} of {want} Ray nodes joined within {timeout_s:g} s")
        sleep(min(poll_s, max(0.0, deadline - clock())))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, required=True, help="live nodes to wait for")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds before giving up")
    parser.add_argument("--address", default="auto", help="Ray address (default: the local head)")
    args = parser.parse_args(argv)
    if args.nodes < 1 or args.timeout <= 0:
        parser.error("--nodes must be >= 1 and --timeout > 0")

    import ray  # only inside the serving image

    ray.init(address=args.address, logging_level="WARNING")
    try:
        wait_for_nodes(ray.nodes, args.nodes, args.timeout)
    except TimeoutError as exc:
        print(f"ray_wait_nodes: {exc}", file=sys.stderr)
        return 1
    finally:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
