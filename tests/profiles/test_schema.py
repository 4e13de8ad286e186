"""Profile schema: strict validation with file + JSON path in errors, fingerprint checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from profiles.schema import (
    CalibrationSettings,
    HeadProfile,
    KvChoice,
    LayerProfile,
    ModelFingerprint,
    Profile,
    ProfileError,
    check_fingerprint,
    fingerprint_from_config,
    load_profile,
    save_profile,
)

FP = ModelFingerprint(architecture="LlamaForCausalLM", num_layers=2, num_q_heads=2, num_kv_heads=1, head_dim=16, rope_theta=1e4)


def make_profile() -> Profile:
    heads = [
        HeadProfile(head=0, prefill={"pattern": "a_shape", "n_local": 256}, kv=KvChoice(policy="streaming"), recall=0.97, density=0.2),
        HeadProfile(head=1, prefill={"pattern": "dense"}, kv=KvChoice(policy="full"), recall=1.0, density=1.0),
    ]
    layers = [LayerProfile(layer=i, heads=heads) for i in range(2)]
    return Profile(model=FP, calibration=CalibrationSettings(lengths=[512], target_recall=0.95, query_rows=32), layers=layers)


def test_save_and_load_roundtrip(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    save_profile(make_profile(), path)
    assert load_profile(path) == make_profile()


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    return path


def test_bad_field_error_names_file_and_json_path(tmp_path: Path) -> None:
    data = make_profile().model_dump(mode="json")
    data["layers"][1]["heads"][0]["prefill"]["n_local"] = -5
    path = write(tmp_path, data)
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    assert str(path) in str(info.value)
    assert "$.layers[1].heads[0].prefill.a_shape.n_local" in str(info.value)


def test_unknown_pattern_and_extra_field(tmp_path: Path) -> None:
    data = make_profile().model_dump(mode="json")
    data["layers"][0]["heads"][1]["prefill"] = {"pattern": "magic"}
    data["calibration"]["surprise"] = 1
    with pytest.raises(ProfileError, match=r"\$\.calibration\.surprise"):
        load_profile(write(tmp_path, data))


def test_wrong_head_and_layer_counts(tmp_path: Path) -> None:
    data = make_profile().model_dump(mode="json")
    data["layers"][0]["heads"].pop()
    with pytest.raises(ProfileError, match="layer 0 lists 1 heads but the model has 2"):
        load_profile(write(tmp_path, data))
    data = make_profile().model_dump(mode="json")
    data["layers"].pop()
    with pytest.raises(ProfileError, match="1 layers listed but the fingerprint says 2"):
        load_profile(write(tmp_path, data))


def test_not_json_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text("{nope")
    with pytest.raises(ProfileError, match=r"x\.json: not valid JSON \(line 1"):
        load_profile(path)
    with pytest.raises(ProfileError, match="cannot read"):
        load_profile(tmp_path / "missing.json")


def test_wrong_schema_version(tmp_path: Path) -> None:
    data = make_profile().model_dump(mode="json")
    data["schema_version"] = 99
    with pytest.raises(ProfileError, match=r"\$\.schema_version"):
        load_profile(write(tmp_path, data))


def test_fingerprint_mismatch_lists_fields() -> None:
    other = FP.model_copy(update={"num_kv_heads": 2, "rope_theta": 5e5})
    with pytest.raises(ProfileError) as info:
        check_fingerprint(make_profile(), other, source="f.json")
    text = str(info.value)
    assert "f.json" in text and "$.model.num_kv_heads" in text and "$.model.rope_theta" in text
    check_fingerprint(make_profile(), FP)


def test_fingerprint_from_llama_config() -> None:
    from transformers import LlamaConfig

    config = LlamaConfig(num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=2, hidden_size=96, rope_theta=5e5)
    fp = fingerprint_from_config(config)
    assert (fp.num_layers, fp.num_q_heads, fp.num_kv_heads, fp.head_dim, fp.rope_theta) == (3, 6, 2, 16, 5e5)
