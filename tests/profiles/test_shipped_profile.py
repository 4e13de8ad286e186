"""The shipped SmolLM2 profile: valid for the default model, and its recall target holds when re-measured."""

from __future__ import annotations

from pathlib import Path

import pytest

from attention_backends import DenseParams, attention_recall, estimate_index
from attention_backends.capture import CaptureConfig, run_capture
from profiles.schema import check_fingerprint, fingerprint_from_dir, load_profile
from profiles.scoring import late_rows

from profiles.cli import DEFAULT_MODEL_DIR as DEFAULT_MODEL

SHIPPED = Path(__file__).resolve().parents[2] / "profiles" / "smollm2-135m-instruct.json"
REDUCED_LENGTH = 2048
LAYERS = (0, 9, 19, 29)
TOLERANCE = 0.02


@pytest.fixture(scope="module")
def shipped():
    if not SHIPPED.is_file():
        pytest.skip(f"{SHIPPED} not built yet")
    return load_profile(SHIPPED)


def test_shipped_profile_matches_default_model(shipped) -> None:
    if not (DEFAULT_MODEL / "config.json").is_file():
        pytest.skip(f"no model at {DEFAULT_MODEL}")
    check_fingerprint(shipped, fingerprint_from_dir(DEFAULT_MODEL), source=str(SHIPPED))


@pytest.mark.slow
def test_recall_target_holds_at_reduced_length(shipped) -> None:
    if not (DEFAULT_MODEL / "config.json").is_file():
        pytest.skip(f"no model at {DEFAULT_MODEL}")
    captures = run_capture(CaptureConfig(model_dir=DEFAULT_MODEL, seq_len=REDUCED_LENGTH, layers=LAYERS, seed=shipped.calibration.seed))
    rows = late_rows(REDUCED_LENGTH, shipped.calibration.query_rows)
    target = shipped.calibration.target_recall
    checked = 0
    for cap in captures:
        for head in shipped.layers[cap.layer].heads:
            if isinstance(head.prefill, DenseParams):
                continue
            index = estimate_index(cap.q, cap.k, head.prefill)
            recall = float(attention_recall(cap.q, cap.k, index, rows=rows)[head.head])
            assert recall >= target - TOLERANCE, f"layer {cap.layer} head {head.head} {head.prefill.pattern.value}: {recall:.3f}"
            checked += 1
    assert checked > 0
