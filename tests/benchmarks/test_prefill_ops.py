"""benchmarks/prefill_ops.py: the op-level table, here on vLLM's paged CPU kernel (small random inputs)."""

from __future__ import annotations

import json

import pytest


def test_paged_backend_runs_column_free_patterns_on_the_kernel(tmp_path) -> None:
    pytest.importorskip("vllm")
    from benchmarks.prefill_ops import main

    patterns = tmp_path / "p.json"
    patterns.write_text(json.dumps([{"pattern": "a_shape", "n_init": 64, "n_local": 128},
                                    {"pattern": "block_sparse", "top_k": 2}]))
    report = main(["--random", "--seq-len", "640", "--layers", "0", "--backend", "paged", "--dtype", "float32",
                   "--patterns", str(patterns), "--recall-rows", "32", "--repeats", "1",
                   "--json", str(tmp_path / "out.json")])
    assert [r.backend for r in report.rows] == ["paged", "paged"]
    assert report.dense_paged_ms is not None and report.dense_paged_ms > 0
    for row in report.rows:
        assert 0 < row.density < 1 and 0 < row.recall <= 1 and row.sparse_ms > 0
    assert json.loads((tmp_path / "out.json").read_text())["dense_paged_ms"] == report.dense_paged_ms


def test_paged_backend_is_cpu_only_and_not_compared() -> None:
    from benchmarks.prefill_ops import main

    with pytest.raises(SystemExit, match="CPU only"):
        main(["--random", "--seq-len", "64", "--backend", "paged", "--compare-cpu-backends"])
