"""The shipped SmolLM2 profiles: valid for the default model; the defaults and profiles/duo/ follow the
retrieval-head rule; profiles/recall/'s recall target holds when re-measured on its calibration prompts."""

from __future__ import annotations

from pathlib import Path

import pytest

from attention_backends import DenseParams, attention_recall, estimate_index
from attention_backends.capture import load_model, stream_layers
from profiles.calibration import calibration_inputs
from profiles.schema import check_fingerprint, fingerprint_from_dir, load_profile
from profiles.scoring import late_rows

from profiles.cli import DEFAULT_MODEL_DIR as DEFAULT_MODEL

PROFILES = Path(__file__).resolve().parents[2] / "profiles"
SHIPPED = PROFILES / "recall" / "smollm2-135m-instruct.json"  # the recall-target one
REDUCED_LENGTH = 2048
LAYERS = (0, 9, 19, 29)
TOLERANCE = 0.02


@pytest.fixture(scope="module")
def shipped():
    if not SHIPPED.is_file():
        pytest.skip(f"{SHIPPED} not built yet")
    return load_profile(SHIPPED)


@pytest.mark.parametrize("folder", ["", "duo", "recall"])
def test_shipped_profile_matches_default_model(folder: str) -> None:
    if not (DEFAULT_MODEL / "config.json").is_file():
        pytest.skip(f"no model at {DEFAULT_MODEL}")
    path = PROFILES / folder / SHIPPED.name
    check_fingerprint(load_profile(path), fingerprint_from_dir(DEFAULT_MODEL), source=str(path))


@pytest.mark.slow
def test_recall_target_holds_at_reduced_length(shipped) -> None:
    """Every non-dense head of the sampled layers keeps the target recall on the calibration prompts at 2K."""
    if not (DEFAULT_MODEL / "config.json").is_file():
        pytest.skip(f"no model at {DEFAULT_MODEL}")
    model, tokenizer = load_model(DEFAULT_MODEL, REDUCED_LENGTH)
    target = shipped.calibration.target_recall
    checked = 0
    for item in calibration_inputs(tokenizer, REDUCED_LENGTH, shipped.calibration.seed):
        row_sets = (late_rows(item.ids.numel(), shipped.calibration.query_rows), item.question_rows)

        def check(cap) -> None:
            nonlocal checked
            for head in shipped.layers[cap.layer].heads:
                if isinstance(head.prefill, DenseParams):
                    continue
                index = estimate_index(cap.q, cap.k, head.prefill)
                recall = min(float(attention_recall(cap.q, cap.k, index, rows=rows)[head.head]) for rows in row_sets)
                where = f"{item.task}: layer {cap.layer} head {head.head} {head.prefill.pattern.value}"
                assert recall >= target - TOLERANCE, f"{where}: {recall:.3f}"
                checked += 1

        stream_layers(model, item.ids, LAYERS, check)
    assert checked > 0


@pytest.mark.parametrize("name", ["smollm2-135m-instruct.json", "smollm2-135m-instruct-yarn4x.json"])
@pytest.mark.parametrize(("folder", "fraction"), [("", 0.2), ("duo", 0.1)])
def test_retrieval_head_profiles_follow_their_rule(folder: str, fraction: float, name: str) -> None:
    """The defaults (F = 0.20) and profiles/duo/ (F = 0.10): the fraction F of heads with the lowest streaming
    recall block-sparse top_k 32 (2,048 keys per query block), every other head A-shape 64 + 256; none dense."""
    split = load_profile(PROFILES / folder / name)
    recall = load_profile(PROFILES / "recall" / name)
    assert split.model == recall.model  # the same RoPE variant as the recall-target file of that name
    assert split.calibration.retrieval_heads == fraction and split.calibration.retrieval_top_k == 32
    assert split.calibration.dense_layers == 0
    heads = [h for layer in split.layers for h in layer.heads]
    retrieval = [h for h in heads if h.prefill.pattern.value == "block_sparse"]
    streaming = [h for h in heads if h.prefill.pattern.value != "block_sparse"]
    assert len(retrieval) == round(fraction * len(heads))
    assert all(h.prefill.top_k == 32 for h in retrieval)
    assert all(h.prefill.pattern.value == "a_shape" and h.prefill.n_local == 256 for h in streaming)
    assert max(h.kv.params["streaming_recall"] for h in retrieval) <= min(h.kv.params["streaming_recall"] for h in streaming)
