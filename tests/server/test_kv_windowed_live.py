"""Windowed layers in the engine (``--kv-window-layers``): every layer's KV heads compressed (exact
ShadowKV or NOSA), so vLLM keeps only a 256-token sliding window of each layer in its pool; prefill chunks past
the window read the exact history on the offload tier, decode reads the stores. The pool holds many
more requests, and greedy outputs still equal plain vLLM's (float32)."""

from __future__ import annotations

import concurrent.futures as cf

import pytest

from live_client import (FULL_CHUNK, FULL_THRESHOLD, complete, counter, document, max_concurrency,
                         settled_kv_gauges)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def windowed_kv_server(launch_server, exact_kv_profile):
    with launch_server("--profile", str(exact_kv_profile), "--sparse-threshold", str(FULL_THRESHOLD), "--kv-policies",
                       "--kv-threshold", str(FULL_THRESHOLD), "--kv-window-layers",
                       "--max-num-batched-tokens", str(FULL_CHUNK)) as (_, server):
        yield server


def test_windowed_layers_free_old_pool_blocks_and_still_equal_dense(windowed_kv_server, dense_server) -> None:
    log = windowed_kv_server.log_path.read_text(errors="replace")
    assert "30 windowed layers keep a 256-token window in vLLM's pool" in log
    # the same pool bytes hold over 8x as many requests of 8,192 tokens (measured: 26.0 vs 2.84)
    assert max_concurrency(windowed_kv_server) >= 8 * max_concurrency(dense_server)
    prompts = [document(lines, f"win{lines}-") + " Which gate stores the most crates?" for lines in (40, 70)]
    dense = [complete(dense_server, p, max_tokens=24)[0] for p in prompts]
    for prompt, want in zip(prompts, dense):  # ~0.75K and ~1.3K tokens: 2 and 3 chunks, the window left mid-prefill
        ours, n = complete(windowed_kv_server, prompt, max_tokens=24)
        assert n > FULL_CHUNK
        assert ours == want
    short = "Count from 1 to 30:"  # decodes past the window: its store is built from the pool at 256 tokens
    assert complete(windowed_kv_server, short, max_tokens=260)[0] == complete(dense_server, short, max_tokens=260)[0]
    with cf.ThreadPoolExecutor(len(prompts)) as pool:
        assert list(pool.map(lambda p: complete(windowed_kv_server, p, max_tokens=24)[0], prompts)) == dense
    after = settled_kv_gauges(windowed_kv_server)
    assert counter(after, "kv_errors_total") == 0 and counter(after, "kv_unknown_request_total") == 0
    assert counter(after, "sparse_fallbacks_total", reason="no_history") == 0
    assert counter(after, "kv_stores") == 0 and counter(after, "kv_offload_bytes") == 0
