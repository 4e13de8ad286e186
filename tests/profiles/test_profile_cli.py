"""`profile build / show / check` on the tiny Llama, and clear CLI errors."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from profiles.cli import add_arguments, run


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return run(parser.parse_args(list(argv)))


def test_build_show_check(tiny_llama: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "tiny.json"
    assert cli("--model", str(tiny_llama), "--out", str(out), "--lengths", "512", "--query-rows", "16", "--dense-layers", "1",
               "--quiet") == 0
    data = json.loads(out.read_text())
    assert data["calibration"]["lengths"] == [512] and "--lengths 512" in data["calibration"]["command"]
    assert data["calibration"]["dense_layers"] == 1 and "--dense-layers 1" in data["calibration"]["command"]
    assert {h["prefill"]["pattern"] for h in data["layers"][0]["heads"]} == {"dense"}
    assert cli("show", str(out)) == 0
    shown = capsys.readouterr().out
    assert "mean prefill density" in shown and "patterns:" in shown and "first 1 layers dense" in shown
    assert cli("check", str(out), "--model", str(tiny_llama)) == 0
    data["model"]["num_layers"] = 3
    out.write_text(json.dumps(data))
    assert cli("check", str(out), "--model", str(tiny_llama)) == 2
    assert "2 layers listed but the fingerprint says 3" in capsys.readouterr().err


def test_check_against_other_model(tiny_llama: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from transformers import LlamaConfig

    other = tmp_path / "other"
    LlamaConfig(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, hidden_size=64, head_dim=16).save_pretrained(other)
    out = tmp_path / "tiny.json"
    assert cli("--model", str(tiny_llama), "--out", str(out), "--lengths", "512", "--query-rows", "16", "--dense-layers", "0",
               "--quiet") == 0
    capsys.readouterr()
    assert cli("check", str(out), "--model", str(other)) == 2
    err = capsys.readouterr().err
    assert "built for another model" in err and "$.model.num_kv_heads" in err


def test_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("show") == 2
    assert "needs a FILE" in capsys.readouterr().err
    assert cli("--model", str(tmp_path), "--lengths", "512") == 2
    assert "--out" in capsys.readouterr().err
    assert cli("--model", str(tmp_path), "--out", str(tmp_path / "x.json"), "--lengths", "512") == 2
    assert "no model config" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli("--lengths", "8k")
    assert cli("--model", str(tmp_path), "--out", str(tmp_path / "x.json"), "--retrieval-heads", "1.5") == 2
    assert "--retrieval-heads must be in [0, 1); got 1.5" in capsys.readouterr().err
    assert cli("--model", str(tmp_path), "--out", str(tmp_path / "x.json"), "--retrieval-top-k", "32") == 2
    assert "--retrieval-top-k must be a positive block count and needs --retrieval-heads; got 32" in capsys.readouterr().err


def test_dense_layers_errors(tiny_llama: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "tiny.json"
    assert cli("--model", str(tiny_llama), "--out", str(out), "--dense-layers", "-1") == 2
    assert "--dense-layers must be >= 0; got -1" in capsys.readouterr().err
    assert cli("--model", str(tiny_llama), "--out", str(out), "--lengths", "512", "--quiet") == 2  # default 3 > 2 layers
    assert "dense_layers 3 exceeds the model's 2 layers" in capsys.readouterr().err
    assert not out.exists()
