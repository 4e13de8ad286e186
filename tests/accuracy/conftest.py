"""Fixtures for the accuracy harness tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtests.tokenizer import PromptTokenizer, load_tokenizer


@pytest.fixture(scope="session")
def tokenizer(model_dir: Path) -> PromptTokenizer:
    """The default model's tokenizer (`model_dir` comes from tests/conftest.py)."""
    return load_tokenizer(str(model_dir), None)
