"""Percentile, TPOT, ITL, goodput and timeline math on hand-made timings."""

from __future__ import annotations

import pytest

from loadtests.client import RequestResult
from loadtests.metrics import (
    SLO, bucket_breakdown, is_good, latency_stats_ms, max_concurrency, output_token_timeline,
    parse_goodput, summarize, tpot_s,
)


def result(index: int, ttft: float | None, itl: list[float], out: int, start: float = 0.0,
           bucket: str = "1024", success: bool = True, inp: int = 100) -> RequestResult:
    e2el = None if ttft is None else ttft + sum(itl)
    return RequestResult(index=index, target="t", bucket=bucket, success=success, start_s=start,
                         ttft_s=ttft, itl_s=itl, e2el_s=e2el, input_tokens=inp, output_tokens=out,
                         error="" if success else "boom")


@pytest.fixture
def results() -> list[RequestResult]:
    return [
        result(0, 0.1, [0.02, 0.03, 0.05], 4, start=0.0),   # e2el 0.2, tpot 0.1/3
        result(1, 0.3, [0.1], 2, start=0.5, bucket="4096"),  # e2el 0.4, tpot 0.1
        result(2, None, [], 0, start=0.6, success=False),
        result(3, 0.2, [], 1, start=1.0),                    # one token: no tpot
    ]


def test_tpot_definition(results: list[RequestResult]) -> None:
    assert tpot_s(results[0]) == pytest.approx(0.1 / 3)
    assert tpot_s(results[1]) == pytest.approx(0.1)
    assert tpot_s(results[2]) is None
    assert tpot_s(results[3]) is None


def test_latency_stats_are_linear_percentiles() -> None:
    stats = latency_stats_ms([0.1, 0.3, 0.2])
    assert stats["mean"] == pytest.approx(200)
    assert stats["median"] == pytest.approx(200)
    assert stats["p90"] == pytest.approx(280)  # 200 + 0.8 * 100
    assert stats["p99"] == pytest.approx(298)
    assert stats["std"] == pytest.approx(81.6497, rel=1e-4)
    assert latency_stats_ms([]) == {"mean": 0.0, "median": 0.0, "std": 0.0, "p90": 0.0, "p99": 0.0}


def test_summary_numbers(results: list[RequestResult]) -> None:
    summary = summarize(results, duration_s=2.0, slo=SLO(ttft=250, tpot=50))
    assert (summary.completed, summary.failed) == (3, 1)
    assert summary.total_input_tokens == 300 and summary.total_output_tokens == 7
    assert summary.request_throughput == pytest.approx(1.5)
    assert summary.output_throughput == pytest.approx(3.5)
    assert summary.total_token_throughput == pytest.approx(153.5)
    assert summary.mean_ttft_ms == pytest.approx(200)
    assert summary.mean_tpot_ms == pytest.approx((100 / 3 + 100) / 2)
    # ITL pools every gap: 20, 30, 50, 100 ms
    assert summary.mean_itl_ms == pytest.approx(50)
    assert summary.median_itl_ms == pytest.approx(40)
    assert summary.p90_itl_ms == pytest.approx(85)
    assert summary.mean_e2el_ms == pytest.approx((200 + 400 + 200) / 3)
    # good: #0 (100 ms, 33 ms/tok) and #3 (200 ms, tpot counts as 0); #1 misses ttft
    assert summary.request_goodput == pytest.approx(1.0)
    assert summary.max_concurrent_requests == 1


def test_goodput_absent_without_slo(results: list[RequestResult]) -> None:
    assert summarize(results, 2.0, SLO()).request_goodput is None


def test_is_good_checks_every_slo(results: list[RequestResult]) -> None:
    assert is_good(results[0], SLO(ttft=100.0001, tpot=34))
    assert not is_good(results[0], SLO(tpot=33))
    assert not is_good(results[0], SLO(e2el=199))
    assert not is_good(results[2], SLO(ttft=1e9))


def test_parse_goodput() -> None:
    assert parse_goodput(["ttft:500", "e2el:2000"]) == SLO(ttft=500, e2el=2000)
    for bad in (["ttft"], ["latency:5"], ["tpot:abc"], ["tpot:-1"]):
        with pytest.raises(ValueError, match="goodput"):
            parse_goodput(bad)


def test_timeline_and_concurrency() -> None:
    rows = [result(0, 0.5, [0.4, 0.4], 3, start=0.0), result(1, 0.1, [1.0], 4, start=0.2)]
    # tokens of #0 at 0.5, 0.9, 1.3 (1 each); #1 chunks at 0.3 and 1.3 carrying 2 tokens each
    assert output_token_timeline(rows) == [4.0, 3.0]
    assert output_token_timeline(rows, bin_s=0.5) == [2 / 0.5, 2 / 0.5, 3 / 0.5]
    assert max_concurrency(rows) == 2
    assert max_concurrency([result(0, 0.1, [], 1, start=0.0), result(1, 0.1, [], 1, start=0.1)]) == 1


def test_bucket_breakdown_is_numeric_order(results: list[RequestResult]) -> None:
    rows = results + [result(9, 0.1, [], 1, bucket="512")]
    breakdown = bucket_breakdown(rows, 2.0, SLO())
    assert list(breakdown) == ["512", "1024", "4096"]
    assert breakdown["1024"].completed == 2 and breakdown["1024"].failed == 1
    assert breakdown["4096"].mean_ttft_ms == pytest.approx(300)
