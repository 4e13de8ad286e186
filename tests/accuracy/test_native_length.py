"""Native context length from config.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from accuracy.native_length import native_length


def test_plain_and_rope_scaled(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 8192}))
    assert native_length(tmp_path) == 8192
    (tmp_path / "config.json").write_text(json.dumps({
        "max_position_embeddings": 32768,
        "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8192},
    }))
    assert native_length(tmp_path) == 8192


def test_missing_or_broken(tmp_path: Path) -> None:
    assert native_length(tmp_path) is None
    (tmp_path / "config.json").write_text("{nope")
    with pytest.raises(ValueError, match="not valid JSON"):
        native_length(tmp_path)


def test_default_model(model_dir: Path) -> None:
    assert native_length(model_dir) == 8192
