"""Exactness of sparse prefill in the engine: every head's pattern made exhaustive (full budget),
threshold 256, 512-token prefill chunks. Greedy outputs must equal plain vLLM's bit for bit (float32),
which proves the paged KV reads, chunk boundaries, prefix-cache hits, GQA and the head mapping."""

from __future__ import annotations

import concurrent.futures as cf

import pytest

from live_client import ALL_PATTERNS_PROFILE, FULL_CHUNK, FULL_THRESHOLD, complete, counter, document, metrics
from profiles.schema import load_profile, save_profile
from profiles.variants import full_budget

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def full_budget_server(launch_server, tmp_path_factory):
    path = tmp_path_factory.mktemp("profile") / "full-budget.json"
    save_profile(full_budget(load_profile(ALL_PATTERNS_PROFILE)), path)
    with launch_server("--profile", str(path), "--sparse-threshold", str(FULL_THRESHOLD),
                       "--max-num-batched-tokens", str(FULL_CHUNK)) as (_, server):
        yield server


def test_full_budget_chunked_sparse_equals_dense_one_shot(full_budget_server, dense_server) -> None:
    before = metrics(full_budget_server)
    for lines in (70, 100):  # ~1.3K and ~1.9K tokens: 3 and 4 chunks of 512
        prompt = document(lines, f"{lines}-")
        ours, n = complete(full_budget_server, prompt, max_tokens=24)
        assert n > 2 * FULL_CHUNK
        assert ours == complete(dense_server, prompt, max_tokens=24)[0]
    after = metrics(full_budget_server)
    sparse = counter(after, "sparse_prefill_tokens_total") - counter(before, "sparse_prefill_tokens_total")
    assert sparse >= 2 * (1300 - FULL_CHUNK)
    assert counter(after, "sparse_fallbacks_total", reason="error") == 0
    densities = {k: v for k, v in after.items() if "sparse_layer_density" in k}
    assert len(densities) == 30 and all(v == pytest.approx(1.0) for v in densities.values())


def test_prefix_cache_hit_still_matches_dense(full_budget_server, dense_server) -> None:
    prefix = document(100, "shared-")
    complete(full_budget_server, prefix + " First question: which gate stores the most crates?")
    before = metrics(full_budget_server)
    prompt = prefix + " Second question: how many crates are at gate 5?"
    ours, n = complete(full_budget_server, prompt)
    after = metrics(full_budget_server)
    computed = sum(counter(after, name) - counter(before, name)
                   for name in ("sparse_prefill_tokens_total", "dense_prefill_tokens_total"))
    assert computed < n / 2, "the shared prefix was recomputed instead of read from the prefix cache"
    assert ours == complete(dense_server, prompt)[0]


def test_concurrent_long_and_short_requests_match_single(full_budget_server) -> None:
    prompts = [document(60 + 5 * i, f"c{i}-") for i in range(4)] + [f"Count from {i} to {i + 5}:" for i in range(4)]
    single = [complete(full_budget_server, p)[0] for p in prompts]
    with cf.ThreadPoolExecutor(len(prompts)) as pool:
        together = list(pool.map(lambda p: complete(full_budget_server, p)[0], prompts))
    assert together == single
