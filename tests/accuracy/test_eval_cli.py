"""`python -m accuracy` end to end against the live default-model server; bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from accuracy.__main__ import main


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--base-url", "http://192.168.0.5:8000"], "loopback"),
     (["--tasks", "niah_single,passkey"], "unknown task"),
     (["--lengths", "2k"], "--lengths"),
     (["--max-concurrency", "0"], "max-concurrency")],
)
def test_bad_input_is_a_clear_error(argv: list[str], message: str, capsys) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_from_json_compares_saved_reports(tmp_path: Path, capsys) -> None:
    from tests.accuracy.test_results import RESULTS, report, result

    dense, sparse = report("dense", RESULTS), report("sparse", [*RESULTS[:4], result(4, "sugar")])
    paths = [tmp_path / "dense.json", tmp_path / "sparse.json"]
    for r, path in zip((dense, sparse), paths):
        path.write_text(r.model_dump_json())
    out_json = tmp_path / "ab.json"
    argv = ["--from-json", *map(str, paths), "--json", str(out_json), "--report-dir", str(tmp_path / "page")]
    assert main(argv) == 0
    assert "| fact_qa | - | 100.0 -> 0.0 (-100.0) ! |" in capsys.readouterr().out
    ab = json.loads(out_json.read_text())
    assert ab["labels"] == ["dense", "sparse"] and any(d["misses_goal"] for d in ab["deltas"])
    assert (tmp_path / "page" / "index.html").is_file()
    paths[1].write_text(sparse.model_copy(update={"lengths": [2048]}).model_dump_json())
    assert main(["--from-json", *map(str, paths)]) == 2
    assert "lengths is [2048, 4096] in 'dense' but [2048] in 'sparse'" in capsys.readouterr().err
    paths[1].write_text("{")
    assert main(["--from-json", *map(str, paths)]) == 2
    assert "Invalid JSON" in capsys.readouterr().err


@pytest.mark.slow
def test_live_run_writes_table_json_and_heatmap(live_server, tmp_path: Path, capsys) -> None:
    argv = ["--base-url", live_server.url, "--tokenizer", str(live_server.model_dir),
            "--tasks", "niah_single,variable_tracking", "--lengths", "512,1024", "--samples", "2",
            "--depths", "0.25,0.75", "--json", str(tmp_path / "eval.json"), "--report-dir", str(tmp_path / "report"),
            "--save-detailed", "--no-progress"]
    if live_server.api_key:
        argv += ["--api-key", live_server.api_key]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| task | 512 | 1024 |" in out and "| niah_single |" in out and "| variable_tracking |" in out
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["model_id"] == live_server.model and report["native_length"] == 8192
    assert len(report["cells"]) == 4 and all(c["completed"] == 2 for c in report["cells"])
    assert all(0 <= c["accuracy"] <= 100 and c["mean_ttft_ms"] > 0 for c in report["cells"])
    assert {(d["length"], d["depth"]) for d in report["depth_cells"]} == {(512, 0.25), (512, 0.75), (1024, 0.25), (1024, 0.75)}
    assert len(report["outcomes"]) == 8 and all(o["success"] for o in report["outcomes"])
    assert all(o["prediction"] for o in report["outcomes"])
    assert (tmp_path / "report" / "needle_depth_heatmap.png").stat().st_size > 5000
    assert (tmp_path / "report" / "index.html").stat().st_size > 5000
