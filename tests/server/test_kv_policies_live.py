"""Compressed decode with real budgets in the engine: the stores' output is what the model reads (a
narrow streaming policy changes the answer), and the shipped profile's measured KV policies still find
a ~7K-token needle as plain vLLM does, reading no more than their budget per step."""

from __future__ import annotations

import pytest

from live_client import FULL_THRESHOLD, complete, counter, document, metrics
from profiles.schema import KvChoice, load_profile, save_profile
from profiles.variants import with_kv
from server.sparse_setup import SHIPPED_PROFILE

pytestmark = pytest.mark.slow


def test_narrow_streaming_kv_changes_the_output(launch_server, dense_server, tmp_path) -> None:
    """Streaming KV with 4 sinks + 16 recent tokens on every head: the stores' output is what the model reads."""
    narrow = KvChoice(policy="streaming", params={"n_sink": 4, "n_local": 16})
    path = tmp_path / "narrow-kv.json"
    save_profile(with_kv(load_profile(SHIPPED_PROFILE), narrow), path)
    prompt = document(40, "narrow-") + " Which gate stores the most crates?"
    with launch_server("--profile", str(path), "--kv-policies", "--kv-threshold", str(FULL_THRESHOLD)) as (_, server):
        ours, _ = complete(server, prompt, max_tokens=24)
        samples = metrics(server)
    assert counter(samples, "kv_policy_heads", policy="streaming") == 30 * 3
    assert counter(samples, "kv_decode_steps_total") >= 23 * 30
    assert ours != complete(dense_server, prompt, max_tokens=24)[0]


def test_needle_found_with_profile_kv_policies_as_with_dense(launch_server, needle) -> None:
    """The shipped profile's measured KV policies at their default budgets (2048 positions).

    (Every KV head ShadowKV at the defaults loses this needle: the profiler keeps such heads `full`.)
    """
    with launch_server("--kv-policies") as (_, server):
        needle.assert_found(server)
        samples = metrics(server)
    compressed = sum(counter(samples, "kv_policy_heads", policy=p) for p in ("shadowkv", "nosa", "streaming"))
    assert compressed > 0, "the shipped profile compresses no KV head"
    steps = counter(samples, "kv_decode_steps_total")
    assert steps > 0 and counter(samples, "kv_errors_total") == 0
    # the budget, not the context, bounds what a step reads (<= 2048 positions per KV head)
    assert counter(samples, "kv_positions_read_total") <= steps * 3 * 2048
