"""Prometheus text parsing and before/after deltas."""

from __future__ import annotations

import pytest

from loadtests.server_metrics import Snapshot, metrics_delta, parse_metrics, parse_snapshot

BEFORE = """# TYPE sparse_serve:prompt_tokens counter
sparse_serve:prompt_tokens_total 100.0
# TYPE sparse_serve:time_to_first_token_seconds histogram
sparse_serve:time_to_first_token_seconds_bucket{le="0.5"} 1.0
sparse_serve:time_to_first_token_seconds_bucket{le="+Inf"} 2.0
sparse_serve:time_to_first_token_seconds_count 2.0
sparse_serve:time_to_first_token_seconds_sum 1.5
# TYPE process_cpu_seconds counter
process_cpu_seconds_total 3.0
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="m"} 0.0
# TYPE sparse_serve:sparse_layer_density gauge
sparse_serve:sparse_layer_density{layer="0"} 0.5
"""
AFTER = BEFORE.replace("_total 100.0", "_total 1300.0").replace("_count 2.0", "_count 6.0") \
    .replace("_sum 1.5", "_sum 3.5").replace("process_cpu_seconds_total 3.0", "process_cpu_seconds_total 9.0") \
    .replace('{layer="0"} 0.5', '{layer="0"} 0.25')


def test_parse_keeps_prefixed_samples_only() -> None:
    samples = parse_metrics(BEFORE)
    assert samples["sparse_serve:prompt_tokens_total"] == 100.0
    assert samples['vllm:num_requests_running{model_name="m"}'] == 0.0
    assert not any(k.startswith("process_") or "_bucket" in k for k in samples)


def test_delta_and_histogram_mean() -> None:
    delta = metrics_delta(parse_snapshot(BEFORE), parse_snapshot(AFTER))
    assert delta.available
    assert delta.deltas == {
        "sparse_serve:prompt_tokens_total": 1200.0,
        "sparse_serve:time_to_first_token_seconds_count": 4.0,
        "sparse_serve:time_to_first_token_seconds_sum": 2.0,
    }
    assert delta.histogram_means == {"sparse_serve:time_to_first_token_seconds": pytest.approx(0.5)}
    # a gauge is a level, not a count: reported at the end of the run, never differenced
    assert delta.gauges == {'sparse_serve:sparse_layer_density{layer="0"}': 0.25,
                            'vllm:num_requests_running{model_name="m"}': 0.0}


def test_unavailable() -> None:
    delta = metrics_delta(None, Snapshot({"a": 1.0}, {}), "GET /metrics returned 404")
    assert not delta.available and "404" in delta.error
