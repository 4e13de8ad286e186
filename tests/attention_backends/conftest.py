"""Fixtures for the sparse attention tests: the prepared model and real q/k/v captures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

MODEL_DIR = Path(os.environ.get("SPARSE_SERVE_CACHE_DIR", Path.home() / ".cache" / "sparse-serve")) / "models" / "smollm2-135m-instruct"


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """The prepared default model, or skip (``make test`` prepares it before the tests)."""
    try:
        from server.model_prep import default_model_dir

        path = default_model_dir()
    except ImportError:
        path = MODEL_DIR
    if not (path / "config.json").is_file():
        pytest.skip(f"model not prepared at {path}: run `sparse-serve prepare-model`")
    return path


@pytest.fixture(scope="session")
def captured(model_dir: Path):
    """Real q/k/v of three layers on a 2K-token synthetic document (cached on disk)."""
    from attention_backends.capture import CaptureConfig, capture_qkv

    return capture_qkv(CaptureConfig(model_dir=model_dir, seq_len=2048, layers=(1, 8, 16)))
