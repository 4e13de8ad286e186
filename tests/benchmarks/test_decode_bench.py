"""benchmarks/decode.py: the steady-window rate and the /metrics parsing it reports from."""

from __future__ import annotations

import math

from benchmarks.decode import parse_kv_metrics, pool_bytes_per_request, steady_rate


def test_steady_rate_counts_tokens_after_every_stream_warmed_up() -> None:
    # two streams, one token per 0.1 s; the second starts 1 s later (its prefill)
    a = [0.1 * i for i in range(1, 31)]
    b = [1.0 + 0.1 * i for i in range(1, 31)]
    rate = steady_rate([a, b])
    assert math.isclose(rate, 20.0, rel_tol=0.05)  # 2 streams x 10 tok/s in the shared window
    assert math.isnan(steady_rate([[0.1, 0.2, 0.3], [5.0, 5.1, 5.2]]))  # no shared window


def test_parse_kv_metrics_reads_counters_gauges_and_policy_heads() -> None:
    text = "\n".join([
        "# HELP sparse_serve:kv_decode_steps_total Decode steps.",
        'sparse_serve:kv_decode_steps_total{model_name="m"} 42.0',
        'sparse_serve:kv_pool_bytes{model_name="m"} 1.5e+06',
        'sparse_serve:kv_cache_usage_perc{model_name="m"} 0.25',
        'sparse_serve:kv_policy_heads{model_name="m",policy="nosa"} 8.0',
        'sparse_serve:kv_policy_heads{model_name="m",policy="full"} 76.0',
        'sparse_serve:prompt_tokens_total{model_name="m"} 9.0',
    ])
    got = parse_kv_metrics(text)
    assert got["kv_decode_steps"] == 42.0 and got["kv_pool_bytes"] == 1.5e6
    assert got["kv_policy_heads:nosa"] == 8.0 and got["kv_policy_heads:full"] == 76.0
    assert "kv_cache_usage_perc" not in got and "prompt_tokens" not in got


def test_pool_bytes_per_request_keeps_only_the_window_of_windowed_layers() -> None:
    per_layer_token = 3 * 2 * 64 * 2  # 3 KV heads, K and V, 64 dims, bf16
    dense = pool_bytes_per_request(32768, 30, 0, 0, per_layer_token)
    assert dense == 30 * 32768 * per_layer_token
    # 30 windowed layers with a 4096-token window keep 257 blocks each: 7.97x fewer pool bytes at 32K
    windowed = pool_bytes_per_request(32768, 30, 30, 4096, per_layer_token)
    assert windowed == 30 * 257 * 16 * per_layer_token
    assert pool_bytes_per_request(1000, 30, 30, 4096, per_layer_token) == 30 * 63 * 16 * per_layer_token
    assert pool_bytes_per_request(32768, 30, 1, 4096, per_layer_token) == (29 * 2048 + 257) * 16 * per_layer_token
