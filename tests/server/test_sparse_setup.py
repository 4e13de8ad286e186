"""Start-up checks of sparse prefill: the profile is resolved and validated before any engine starts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from attention_backends.plugin_config import ENV_VAR, PluginConfig
from profiles.schema import ProfileError
from kvcache.vllm_connector import kv_transfer_config
from server.engine import engine_args
from server.settings import ServerSettings
from server.rope_variant import yarn_variant
from server.sparse_setup import SHIPPED_PROFILE, SparseSetupError, arm, resolve_profile


def _shipped_json() -> dict:
    return json.loads(SHIPPED_PROFILE.read_text())


def _serve(model_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "server.cli", "serve", "--model", str(model_dir),
                           "--port", "0", *extra], capture_output=True, text=True, timeout=120)


def test_shipped_profile_is_the_default_for_the_default_model(model_dir: Path) -> None:
    path, profile = resolve_profile(ServerSettings(model=model_dir), model_dir)
    assert path == SHIPPED_PROFILE and profile.model.num_layers == 30


@pytest.mark.slow
def test_profile_of_another_model_stops_startup_naming_file_and_field(model_dir: Path, tmp_path: Path) -> None:
    data = _shipped_json()
    data["model"]["rope_theta"] = 500000.0
    bad = tmp_path / "other-model.json"
    bad.write_text(json.dumps(data))
    proc = _serve(model_dir, "--profile", str(bad))
    assert proc.returncode == 1
    assert str(bad) in proc.stderr and "$.model.rope_theta" in proc.stderr
    assert "engine ready" not in proc.stderr


@pytest.mark.slow
def test_corrupt_profile_stops_startup_naming_file_and_field(model_dir: Path, tmp_path: Path) -> None:
    data = _shipped_json()
    data["layers"][3]["heads"][2]["prefill"] = {"pattern": "vertical_slash", "n_vertical": -5}
    bad = tmp_path / "corrupt.json"
    bad.write_text(json.dumps(data))
    proc = _serve(model_dir, "--profile", str(bad))
    assert proc.returncode == 1
    assert str(bad) in proc.stderr and "$.layers[3].heads[2].prefill.vertical_slash.n_vertical" in proc.stderr


@pytest.mark.slow
def test_unreadable_profile_json_names_the_line(model_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "truncated.json"
    bad.write_text(SHIPPED_PROFILE.read_text()[:500])
    proc = _serve(model_dir, "--profile", str(bad))
    assert proc.returncode == 1 and str(bad) in proc.stderr and "not valid JSON" in proc.stderr


def test_a_model_without_matching_profile_needs_profile_or_no_sparse(tmp_path: Path, monkeypatch) -> None:
    from transformers import LlamaConfig

    model = tmp_path / "other"
    LlamaConfig(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, hidden_size=64).save_pretrained(model)
    with pytest.raises(SparseSetupError, match="--profile, or pass --no-sparse"):
        resolve_profile(ServerSettings(model=model), model)
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert arm(ServerSettings(model=model, sparse=False), model) is None
    assert PluginConfig.from_env() is None


def test_arm_exports_the_plugin_config_and_creates_counters(model_dir: Path, monkeypatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    setup = arm(ServerSettings(model=model_dir, sparse_threshold=2048), model_dir)
    try:
        config = PluginConfig.from_env()
        assert config == setup.config and config.threshold == 2048 and config.profile == SHIPPED_PROFILE
        assert config.stats_path.is_file() and setup.stats.active_layers == 0
        with pytest.raises(SparseSetupError, match="did not select the sparse-serve attention backend"):
            setup.verify_engine()
    finally:
        setup.close()
    assert PluginConfig.from_env() is None and not config.stats_path.exists()


def test_kv_policies_are_exported_with_their_head_counts_and_need_sparse(model_dir: Path, monkeypatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(SparseSetupError, match="--kv-policies needs the sparse backend"):
        arm(ServerSettings(model=model_dir, sparse=False, kv_policies=True), model_dir)
    setup = arm(ServerSettings(model=model_dir, kv_policies=True, kv_threshold=1024), model_dir)
    try:
        config = PluginConfig.from_env()
        assert config.kv_policies and config.kv_threshold == 1024
        assert sum(setup.kv_counts.values()) == 30 * 3  # KV heads, after the GQA merge
    finally:
        setup.close()
    plain = arm(ServerSettings(model=model_dir), model_dir)
    try:
        assert plain.kv_counts is None and not PluginConfig.from_env().kv_policies
    finally:
        plain.close()
    # the engine loads the KV connector (request naming, prompts, store lifecycle) whenever prefill is sparse
    args = engine_args(ServerSettings(model=model_dir, kv_policies=True), model_dir)
    assert args.kv_transfer_config == kv_transfer_config()
    assert engine_args(ServerSettings(model=model_dir), model_dir).kv_transfer_config == kv_transfer_config()
    assert engine_args(ServerSettings(model=model_dir, sparse=False), model_dir).kv_transfer_config is None


def test_window_layers_give_fully_compressed_layers_a_sliding_window_and_turn_prefix_caching_off(
        model_dir: Path, monkeypatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(SparseSetupError, match="--kv-window-layers needs --kv-policies"):
        arm(ServerSettings(model=model_dir, kv_window_layers=True), model_dir)
    settings = ServerSettings(model=model_dir, kv_policies=True, kv_window_layers=True, kv_threshold=2048,
                              kv_cache_memory_bytes=1 << 30)
    setup = arm(settings, model_dir)
    try:
        assert setup.windowed_layers == (13, 16, 18)  # the shipped profile compresses every KV head of these only
        overrides = setup.engine_overrides()
        types = overrides["hf_overrides"]["layer_types"]
        assert types[13] == types[16] == types[18] == "sliding_attention" and types.count("full_attention") == 27
        assert overrides["hf_overrides"]["sliding_window"] == 2048
        args = engine_args(settings, model_dir, overrides)
        assert not args.enable_prefix_caching and args.hf_overrides == overrides["hf_overrides"]
        assert args.kv_cache_memory_bytes == 1 << 30
    finally:
        setup.close()
    plain = arm(ServerSettings(model=model_dir, kv_policies=True), model_dir)
    try:
        assert plain.windowed_layers == () and plain.engine_overrides() == {}
        assert engine_args(ServerSettings(model=model_dir), model_dir, {}).enable_prefix_caching
    finally:
        plain.close()


def test_profile_errors_are_profile_errors(tmp_path: Path, model_dir: Path) -> None:
    with pytest.raises(ProfileError, match="cannot read profile"):
        resolve_profile(ServerSettings(model=model_dir, profile=tmp_path / "missing.json"), model_dir)


@pytest.mark.parametrize("factor", [4, 8])
def test_a_yarn_variant_gets_the_profile_calibrated_on_it_or_a_clear_refusal(model_dir: Path, factor: int) -> None:
    variant = yarn_variant(model_dir, 8192 * factor)
    settings = ServerSettings(model=variant)
    if factor == 4:
        path, profile = resolve_profile(settings, variant)
        assert path.name == "smollm2-135m-instruct-yarn4x.json"
        assert profile.model.rope_type == "yarn" and profile.model.rope_factor == 4.0
    else:
        with pytest.raises(SparseSetupError, match=r"\$\.model\.rope_factor: profile has 4\.0, model has 8\.0"):
            resolve_profile(settings, variant)
