"""Compressed decode inside the engine, exact: every KV head ShadowKV at full rank (even layers) or NOSA
with its exact keys offloaded (odd layers), at full budget (``--kv-policies``, threshold 256). Greedy outputs must equal plain vLLM's (float32), which proves the
stores' construction from the paged cache, the per-token extension, the request naming by the KV
connector, and the stores' release after finish, abort and concurrency."""

from __future__ import annotations

import concurrent.futures as cf

import pytest

from kvcache.native import load_kernel
from live_client import FULL_THRESHOLD, client, complete, counter, document, metrics, settled_kv_gauges

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exact_kv_server(launch_server, exact_kv_profile):
    with launch_server("--profile", str(exact_kv_profile), "--sparse-threshold", str(FULL_THRESHOLD), "--kv-policies",
                       "--kv-threshold", str(FULL_THRESHOLD)) as (_, server):
        yield server


def test_exact_compressed_decode_equals_dense_and_frees_its_stores(exact_kv_server, dense_server) -> None:
    before = metrics(exact_kv_server)
    for lines in (40, 70):  # ~0.75K and ~1.3K tokens
        prompt = document(lines, f"kv{lines}-") + " Which gate stores the most crates?"
        ours, n = complete(exact_kv_server, prompt, max_tokens=24)
        assert n > FULL_THRESHOLD
        assert ours == complete(dense_server, prompt, max_tokens=24)[0]
    after = settled_kv_gauges(exact_kv_server)
    steps = counter(after, "kv_decode_steps_total") - counter(before, "kv_decode_steps_total")
    assert steps >= 2 * 23 * 30  # every generated token after the first, in every layer
    native = counter(after, "kv_native_steps_total") - counter(before, "kv_native_steps_total")
    assert native == steps or load_kernel() is None  # the C kernel ran them (float32, head_dim 64, CPU)
    assert counter(after, "kv_positions_read_total") > counter(before, "kv_positions_read_total")
    assert counter(after, "kv_offload_read_bytes_total") > 0  # values come from the offload tier
    assert counter(after, "kv_errors_total") == 0 and counter(after, "kv_unknown_request_total") == 0
    assert counter(after, "kv_policy_heads", policy="shadowkv") == counter(after, "kv_policy_heads", policy="nosa") == 15 * 3
    assert counter(after, "kv_cache_hits_total") > counter(before, "kv_cache_hits_total")  # NOSA's resident tier served
    assert counter(after, "kv_stores") == 0 and counter(after, "kv_pool_bytes") == 0
    assert counter(after, "kv_offload_bytes") == 0


def test_compressed_stores_released_after_abort_concurrency_and_100_requests(exact_kv_server) -> None:
    stream = client(exact_kv_server).completions.create(model=exact_kv_server.model, prompt=document(40, "abort-"),
                                                        max_tokens=200, temperature=0, stream=True)
    for _, _chunk in zip(range(4), stream):
        pass
    stream.close()  # the server aborts the request mid-decode
    prompts = [document(30 + 4 * i, f"conc{i}-") for i in range(4)]
    single = [complete(exact_kv_server, p, max_tokens=8)[0] for p in prompts]
    with cf.ThreadPoolExecutor(len(prompts)) as pool:
        assert list(pool.map(lambda p: complete(exact_kv_server, p, max_tokens=8)[0], prompts)) == single
    before = metrics(exact_kv_server)
    requests = 100  # the issue: nothing leaks across 100 requests
    with cf.ThreadPoolExecutor(8) as pool:  # eight at a time: requests start and end while others decode
        list(pool.map(lambda i: complete(exact_kv_server, document(16, f"seq{i}-"), max_tokens=2), range(requests)))
    after = settled_kv_gauges(exact_kv_server)
    assert counter(after, "kv_decode_steps_total") - counter(before, "kv_decode_steps_total") >= requests * 30
    assert counter(after, "kv_stores") == 0
    assert counter(after, "kv_pool_bytes") == 0 and counter(after, "kv_offload_bytes") == 0
    assert counter(after, "kv_errors_total") == 0
