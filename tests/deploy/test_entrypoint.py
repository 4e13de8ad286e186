"""deploy/docker/entrypoint.sh: arguments pass through to `serve`; the API key can come from a file."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from deploy_checks import DEPLOY

ENTRYPOINT = DEPLOY / "docker" / "entrypoint.sh"


@pytest.fixture()
def recording_cli(tmp_path: Path) -> Path:
    """A `sparse-serve` earlier on PATH that records its argv and key-related environment."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    record = tmp_path / "record.json"
    script = bindir / "sparse-serve"
    script.write_text(
        "#!/usr/bin/env python3\n"
        "import json, os, sys\n"
        f"open({str(record)!r}, 'w').write(json.dumps({{'argv': sys.argv[1:], "
        "'key': os.environ.get('SPARSE_SERVE_API_KEY'), "
        "'key_file': os.environ.get('SPARSE_SERVE_API_KEY_FILE')}))\n")
    script.chmod(0o755)
    return tmp_path


def run_entrypoint(root: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SPARSE_SERVE_API_KEY")}
    base["PATH"] = f"{root / 'bin'}:{base['PATH']}"
    done = subprocess.run(["sh", str(ENTRYPOINT), *args], capture_output=True, text=True,
                          env={**base, **env}, timeout=30)
    record = root / "record.json"
    return done, (json.loads(record.read_text()) if record.exists() else {})


def test_arguments_go_to_serve_verbatim(recording_cli: Path) -> None:
    done, seen = run_entrypoint(recording_cli, "--model", "/models/my model", "--max-model-len", "4096")
    assert done.returncode == 0, done.stderr
    assert seen["argv"] == ["serve", "--model", "/models/my model", "--max-model-len", "4096"]
    assert seen["key"] is None


def test_api_key_file_becomes_the_key(recording_cli: Path, tmp_path: Path) -> None:
    key_file = tmp_path / "api-key"
    key_file.write_text("s3cret-key")
    done, seen = run_entrypoint(recording_cli, SPARSE_SERVE_API_KEY_FILE=str(key_file))
    assert done.returncode == 0, done.stderr
    assert seen == {"argv": ["serve"], "key": "s3cret-key", "key_file": None}


@pytest.mark.parametrize("content", [None, ""], ids=["missing", "empty"])
def test_unusable_key_file_is_refused(recording_cli: Path, tmp_path: Path, content: str | None) -> None:
    key_file = tmp_path / "api-key"
    if content is not None:
        key_file.write_text(content)
    done, seen = run_entrypoint(recording_cli, SPARSE_SERVE_API_KEY_FILE=str(key_file))
    assert done.returncode == 2
    assert "entrypoint:" in done.stderr and str(key_file) in done.stderr
    assert seen == {}  # the server was never started
