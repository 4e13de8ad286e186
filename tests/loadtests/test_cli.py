"""`python -m loadtests` end to end: files, JSON fields, errors, compare, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loadtests.__main__ import main

VLLM_FIELDS = (
    "completed", "failed", "duration", "total_input_tokens", "total_output_tokens", "request_throughput",
    "request_goodput", "output_throughput", "total_token_throughput", "mean_ttft_ms", "median_ttft_ms",
    "p99_ttft_ms", "mean_tpot_ms", "p99_tpot_ms", "mean_itl_ms", "p99_itl_ms", "mean_e2el_ms", "p99_e2el_ms",
)
REPORT_FILES = ("index.html", "ttft_vs_input.png", "latency_cdf.png", "throughput.png")


def common(tokenizer, out: Path) -> list[str]:
    return ["--tokenizer", tokenizer.source, "--json", str(out / "run.json"), "--report-dir", str(out / "report"),
            "--no-progress", "--input-len", "120", "--output-len", "4"]


def test_run_with_faults_writes_everything(fault_server, smollm_tokenizer, tmp_path: Path, capsys) -> None:
    # slow_first waits 2 s, far past the 1 s goal; the others answer in milliseconds, with a wide margin
    # for a loaded CI host (a 300 ms goal against a 0.4 s delay once failed there).
    _, url = fault_server(modes=("ok", "slow_first", "http500", "drop", "malformed", "stream_error"),
                          slow_first_s=2.0)
    rc = main(["--base-url", url, "--num-prompts", "12", "--num-warmups", "0", "--goodput", "ttft:1000",
               "--save-detailed", *common(smollm_tokenizer, tmp_path)])
    assert rc == 0
    report = json.loads((tmp_path / "run.json").read_text())
    assert all(report[f] is not None for f in VLLM_FIELDS)
    assert (report["completed"], report["failed"]) == (4, 8)
    assert sum(report["error_counts"].values()) == 8 and len(report["error_counts"]) == 4
    assert report["request_goodput"] * report["duration"] == pytest.approx(2)  # slow_first misses 1 s
    assert report["input_len_bucket"]["128"]["completed"] == 4
    assert report["server_metrics"]["deltas"]["sparse_serve:requests_total"] == 12
    assert len(report["requests"]) == len(report["ttfts"]) == 12
    for name in REPORT_FILES:
        assert (tmp_path / "report" / name).stat().st_size > 1000
    assert "Failed requests                      8" in capsys.readouterr().out


def test_compare_reports_ratios(fault_server, smollm_tokenizer, tmp_path: Path) -> None:
    _, fast = fault_server(token_delay_s=0.005)
    _, slow = fault_server(token_delay_s=0.005, modes=("slow_first",), slow_first_s=1.0)
    rc = main(["--compare", f"fast={fast}", f"slow={slow}", "--num-prompts", "4", "--max-concurrency", "2",
               "--compare-round-size", "2", *common(smollm_tokenizer, tmp_path)])
    assert rc == 0
    report = json.loads((tmp_path / "run.json").read_text())
    assert report["labels"] == ["fast", "slow"]
    assert report["targets"]["fast"]["completed"] == report["targets"]["slow"]["completed"] == 4
    assert report["ratios"]["all"]["mean_ttft_ms"] > 2  # 1 s added to each first token; fast ones take ~0.1 s (more on a busy host)
    assert report["ratios"]["128"]["mean_ttft_ms"] == pytest.approx(report["ratios"]["all"]["mean_ttft_ms"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--base-url", "http://10.1.2.3:8000"], "loopback"),
     (["--goodput", "ttft=5"], "goodput"),
     (["--base-url", "http://127.0.0.1:9"], "cannot reach"),
     (["--compare", "http://127.0.0.1:1", "http://127.0.0.1:2", "--base-url", "http://127.0.0.1:3"], "not both"),
     (["--length-mix", "1024:x"], "length-mix")],
)
def test_bad_input_is_a_clear_error(argv: list[str], message: str, capsys) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_ctrl_c_writes_partial_report(fault_server, smollm_tokenizer, tmp_path: Path) -> None:
    server, url = fault_server(modes=("ok", "ok", "ok", "slow_first"), slow_first_s=60.0)
    command = [sys.executable, "-m", "loadtests", "--base-url", url, "--num-prompts", "8", "--max-concurrency", "4",
               "--num-warmups", "0", *common(smollm_tokenizer, tmp_path)]
    # as from a terminal: a background job of a non-interactive shell (e.g. `nohup make test &`) inherits
    # SIGINT ignored, and Python then installs no KeyboardInterrupt handler
    process = subprocess.Popen(command, cwd=Path(__file__).parents[2], env=os.environ | {"PYTHONUNBUFFERED": "1"},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while server.requests < 5 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    time.sleep(2.0)  # let the fast requests finish; the slow one holds for 60 s (0.5 s was too short on a loaded host)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 130, output
    report = json.loads((tmp_path / "run.json").read_text())
    assert report["interrupted"] is True
    assert report["completed"] >= 3 and report["completed"] < 8
    assert (tmp_path / "report" / "index.html").exists()


@pytest.mark.slow
def test_live_server_run(live_server, tmp_path: Path) -> None:
    """20 short requests against the real default-model server."""
    argv = ["--base-url", live_server.url, "--tokenizer", str(live_server.model_dir), "--num-prompts", "20",
            "--input-len", "256", "--range-ratio", "0.5", "--output-len", "8", "--max-concurrency", "4",
            "--endpoint", "chat", "--goodput", "ttft:5000", "tpot:500", "--json", str(tmp_path / "run.json"),
            "--report-dir", str(tmp_path / "report"), "--no-progress", "--save-detailed"]
    if live_server.api_key:
        argv += ["--api-key", live_server.api_key]
    assert main(argv) == 0
    report = json.loads((tmp_path / "run.json").read_text())
    assert report["completed"] == 20 and report["failed"] == 0
    assert report["model_id"] == live_server.model
    for field in VLLM_FIELDS:
        assert report[field] is not None and report[field] >= 0, field
    assert report["mean_ttft_ms"] > 0 and report["mean_e2el_ms"] >= report["mean_ttft_ms"]
    assert report["total_output_tokens"] > 20 and report["mean_itl_ms"] > 0
    assert 100 <= report["total_input_tokens"] / 20 <= 500
    assert set(report["input_len_bucket"]) <= {"128", "256", "512"}
    for name in REPORT_FILES:
        assert (tmp_path / "report" / name).stat().st_size > 1000
