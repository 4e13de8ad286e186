"""Settings, the CLI built from them, and the API-key guard (no engine)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from server.app import _authorized
from server.cli import build_parser, main, settings_from_args
from server.settings import ServerSettings


def test_flags_override_env_override_defaults(monkeypatch):
    monkeypatch.setenv("SPARSE_SERVE_PORT", "9001")
    monkeypatch.setenv("SPARSE_SERVE_API_KEY", "from-env")
    args = build_parser().parse_args(["serve", "--dtype", "float32", "--no-enable-prefix-caching"])
    settings = settings_from_args(args)
    assert settings.port == 9001 and settings.dtype == "float32"
    assert settings.enable_prefix_caching is False
    assert settings.api_key.get_secret_value() == "from-env"
    assert "from-env" not in repr(settings)
    args = build_parser().parse_args(["serve", "--port", "7000", "--model", "/m"])
    settings = settings_from_args(args)
    assert settings.port == 7000 and settings.model == Path("/m")


def test_defaults():
    s = ServerSettings()
    assert (s.host, s.port, s.dtype, s.api_key) == ("127.0.0.1", 8000, "auto", None)
    assert s.cpu_bind == "auto"


@pytest.mark.parametrize("field,value", [("port", 70000), ("gpu_memory_utilization", 0),
                                         ("dtype", "int3"), ("served_model_name", " ")])
def test_invalid_settings_rejected(field, value):
    with pytest.raises(ValidationError):
        ServerSettings(**{field: value})


def test_cli_reports_invalid_settings(capsys, monkeypatch):
    monkeypatch.setenv("SPARSE_SERVE_GPU_MEMORY_UTILIZATION", "2")
    assert main(["serve"]) == 2
    assert "gpu-memory-utilization" in capsys.readouterr().err


def test_cli_reports_cpu_bind_per_rank(capsys):
    assert main(["serve", "--tensor-parallel-size", "3", "--cpu-bind", "0|1"]) == 2
    err = capsys.readouterr().err
    assert "cpu-bind" in err and "2 CPU list(s) for 3 engine rank(s)" in err


def test_help_documents_every_setting():
    help_text = build_parser()._subparsers._group_actions[0].choices["serve"].format_help()
    for name in ServerSettings.model_fields:
        assert "--" + name.replace("_", "-") in help_text
        assert "SPARSE_SERVE_" + name.upper() in help_text.replace("\n", "").replace(" ", "")


@pytest.mark.parametrize("header,ok", [("Bearer k3y", True), ("bearer k3y", True),
                                       ("Bearer k3", False), ("Basic k3y", False), ("", False),
                                       (None, False)])
def test_authorized(header, ok):
    assert _authorized(header, "k3y") is ok
