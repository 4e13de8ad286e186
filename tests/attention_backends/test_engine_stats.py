"""The shared counters file: what the engine writes, the server reads back."""

from __future__ import annotations

from pathlib import Path

import pytest

from attention_backends.engine_stats import FALLBACK_REASONS, EngineStats


def test_writer_and_reader_share_counters(tmp_path: Path) -> None:
    path = tmp_path / "stats.bin"
    server = EngineStats(path, num_layers=4, create=True)
    engine = EngineStats(path, num_layers=4)
    assert server.cache_layout is None
    engine.mark_active()
    engine.mark_active()
    engine.set_cache_layout("amx")
    engine.add_tokens(sparse=1000, dense=24)
    engine.add_fallback("short_segment")
    engine.add_pairs(2, kept=30, causal=100)
    engine.add_pairs(2, kept=20, causal=100)
    assert server.active_layers == 2 and server.cache_layout == "amx"
    assert (server.sparse_tokens, server.dense_tokens) == (1000, 24)
    assert server.fallbacks() == {r: int(r == "short_segment") for r in FALLBACK_REASONS}
    assert server.layer_density() == {2: pytest.approx(0.25)}


def test_reader_refuses_a_file_of_another_layout(tmp_path: Path) -> None:
    EngineStats(tmp_path / "s.bin", num_layers=4, create=True)
    with pytest.raises(ValueError, match="does not match 30 layers"):
        EngineStats(tmp_path / "s.bin", num_layers=30)


def test_unknown_fallback_reason_is_an_error(tmp_path: Path) -> None:
    stats = EngineStats(tmp_path / "s.bin", num_layers=1, create=True)
    with pytest.raises(ValueError):
        stats.add_fallback("because")
