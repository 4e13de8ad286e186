"""benchmarks/prefill_ceiling.py: the oracle table, and the gap to a prefill_ops report (small random inputs)."""

from __future__ import annotations

import json

import pytest

from benchmarks.prefill_ceiling import main
from benchmarks.prefill_ops import main as prefill_ops


def test_ceiling_table_per_layer_and_pooled_and_the_gap_to_measured_patterns(tmp_path) -> None:
    common = ["--random", "--seq-len", "320", "--layers", "0", "1"]
    patterns = tmp_path / "p.json"
    patterns.write_text(json.dumps([{"pattern": "block_sparse", "top_k": 2, "block_size": 64}]))
    measured = prefill_ops([*common, "--patterns", str(patterns), "--recall-rows", "320", "--repeats", "1",
                            "--backend", "gather", "--json", str(tmp_path / "ops.json")])
    report = main([*common, "--rows", "320", "--targets", "0.5", "0.9", "--compare", str(tmp_path / "ops.json"),
                   "--json", str(tmp_path / "ceiling.json")])
    assert {(r.layer, r.granularity, r.target) for r in report.rows} == {
        (layer, g, t) for layer in ("0", "1", "all") for g in (64, 1) for t in (0.5, 0.9)
    }
    for r in report.rows:
        assert 0 < r.density_pooled <= r.density_per_head + 1e-4 <= 1 + 1e-4
        assert r.ceiling_pooled == pytest.approx(1 / r.density_pooled, rel=0.01)
        assert r.rows == 320
    by_key = {(r.layer, r.granularity, r.target): r for r in report.rows}
    assert by_key[("all", 1, 0.9)].density_pooled < by_key[("all", 64, 0.9)].density_pooled
    assert by_key[("all", 64, 0.5)].density_pooled < by_key[("all", 64, 0.9)].density_pooled
    (gap,) = report.compared
    assert gap.recall == measured.rows[0].recall
    # no block-sparse estimator beats the tile oracle at its own recall (recall on every row here)
    assert gap.oracle_density_pairs < gap.oracle_density_tiles <= gap.density + 1e-3
    assert json.loads((tmp_path / "ceiling.json").read_text())["compared"][0]["pattern"] == "block_sparse"


def test_bad_targets_are_refused() -> None:
    with pytest.raises(SystemExit):
        main(["--random", "--targets", "1.5"])
