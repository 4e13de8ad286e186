"""Both images: hadolint-clean, non-root, health-checked, pass-through arguments, pinned base."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from deploy_checks import DEPLOY, REPO, Tools

DOCKERFILES = [DEPLOY / "docker" / "Dockerfile", DEPLOY / "docker" / "Dockerfile.cpu"]


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_hadolint_passes_with_no_finding_at_any_level(tools: Tools) -> None:
    done = tools.run(DEPLOY / "check.sh", "dockerfiles")
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_catches_a_regression(tools: Tools, tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text(DOCKERFILES[1].read_text().replace(
        "WORKDIR /src", "RUN apt-get update && apt-get install -y curl\nWORKDIR /src"))
    done = tools.run("hadolint", "--failure-threshold", "style", bad)
    assert done.returncode != 0
    assert "DL3008" in done.stdout  # unpinned apt package
    assert "DL3009" in done.stdout  # apt lists left in the layer


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_image_contract(dockerfile: Path) -> None:
    ins = instructions(dockerfile)
    users = [args for word, args in ins if word == "USER"]
    assert users and users[-1] == "${APP_UID}:${APP_UID}"  # numeric, so runAsNonRoot can verify it
    assert ("ARG", "APP_UID=10001") in ins
    health = [args for word, args in ins if word == "HEALTHCHECK"]
    assert len(health) == 1 and "/opt/sparse-serve/healthcheck.py" in health[0]
    assert ("ENTRYPOINT", '["/opt/sparse-serve/entrypoint.sh"]') in ins
    assert ins[-1] == ("CMD", "[]")
    env = " ".join(args for word, args in ins if word == "ENV")
    assert "SPARSE_SERVE_HOST=0.0.0.0" in env and "SPARSE_SERVE_PORT=8000" in env
    run = " ".join(args for word, args in ins if word == "RUN")
    for script in ("entrypoint.sh", "healthcheck.py", "ray_wait_nodes.py"):
        assert f"deploy/docker/{script}" in run


def test_gpu_base_is_the_vllm_release_the_package_pins() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    (vllm_pin,) = [d for d in project["optional-dependencies"]["gpu"] if d.startswith("vllm")]
    version = vllm_pin.split("==")[1]
    ins = instructions(DOCKERFILES[0])
    assert ("ARG", f"BASE_IMAGE=vllm/vllm-openai:v{version}") in ins


def test_cpu_image_prepares_the_default_model_and_drops_broken_or_gpu_only_packages() -> None:
    run = " ".join(args for word, args in instructions(DOCKERFILES[1]) if word == "RUN")
    assert '"./[cpu]"' in run
    # Same RUN as the install, so the removed files never land in a layer.
    assert "pip uninstall -y torchvision torchaudio torchcodec triton" in run
    assert 'sparse-serve prepare-model --cache-dir "${SPARSE_SERVE_CACHE_DIR}"' in run


def test_dockerignore_keeps_envs_caches_and_weights_out() -> None:
    patterns = set((REPO / ".dockerignore").read_text().split())
    assert {".venv/", ".cache/", ".git/", "/models/", "**/*.safetensors", "**/*.gguf"} <= patterns
    # What the Dockerfiles COPY and install must stay in the context.
    for needed in ("pyproject.toml", "README.md", "server/", "deploy/docker/", "deploy/"):
        assert needed not in patterns
