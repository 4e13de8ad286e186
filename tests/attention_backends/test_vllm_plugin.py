"""The vLLM plugin entry point: installed, inactive without config, overrides CPU_ATTN with it."""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path

import pytest

from attention_backends.plugin import BACKEND_PATH, register
from attention_backends.plugin_config import ENV_VAR, PluginConfig

registry = pytest.importorskip("vllm.v1.attention.backends.registry")


@pytest.fixture
def restore_cpu_attn():
    enum = registry.AttentionBackendEnum.CPU_ATTN
    before = enum.get_path()
    yield enum
    registry.register_backend(enum, before)


def test_entry_point_is_installed_for_vllm() -> None:
    names = {ep.value for ep in entry_points(group="vllm.general_plugins")}
    assert "attention_backends.plugin:register" in names


def test_without_config_the_plugin_changes_nothing(monkeypatch, restore_cpu_attn) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    before = restore_cpu_attn.get_path()
    register()
    assert restore_cpu_attn.get_path() == before != BACKEND_PATH


def test_with_config_cpu_attn_resolves_to_the_sparse_backend(monkeypatch, restore_cpu_attn, tmp_path: Path) -> None:
    config = PluginConfig(profile=tmp_path / "p.json", threshold=4096)
    monkeypatch.setenv(ENV_VAR, config.model_dump_json())
    assert PluginConfig.from_env() == config
    register()
    assert restore_cpu_attn.get_path() == BACKEND_PATH
    backend = restore_cpu_attn.get_class()
    assert backend.get_name() == "CPU_ATTN"  # vLLM looks layers up by this member name
    assert backend.get_impl_cls().__name__ == "SparseCPUAttentionImpl"
