"""deploy/compose*.yaml through Docker Compose v2's own loader (schema, interpolation, merging)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from deploy_checks import DEPLOY, Tools

GPU = DEPLOY / "compose.yaml"
CPU = DEPLOY / "compose.cpu.yaml"
PASSTHROUGH = "SPARSE_SERVE_API_KEY"


def config(tools: Tools, *files: Path, profile: str | None = None,
           env: dict[str, str] | None = None) -> dict[str, Any]:
    """The resolved model `docker compose config` prints, as JSON."""
    args: list[str | Path] = ["docker-compose", "--project-directory", DEPLOY]
    for f in files:
        args += ["-f", f]
    if profile:
        args += ["--profile", profile]
    done = tools.run(*args, "config", "--format", "json",
                     env={"SPARSE_SERVE_GPUS": "1", PASSTHROUGH: "", **(env or {})})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_all_combinations_validate(tools: Tools) -> None:
    done = tools.run(DEPLOY / "check.sh", "compose")
    assert done.returncode == 0, done.stdout + done.stderr


def test_gpu_service(tools: Tools) -> None:
    svc = config(tools, GPU)["services"]["sparse-serve"]
    (device,) = svc["deploy"]["resources"]["reservations"]["devices"]
    assert device == {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
    assert svc["ipc"] == "host"
    assert svc["build"]["dockerfile"] == "deploy/docker/Dockerfile"
    assert svc["healthcheck"]["test"] == ["CMD", "python3", "/opt/sparse-serve/healthcheck.py"]
    assert svc["healthcheck"]["start_period"] == "10m0s"
    mounts = {v["target"]: v for v in svc["volumes"]}
    assert mounts["/cache"]["type"] == "volume" and mounts["/models"]["read_only"] is True
    assert svc["ports"][0]["host_ip"] == "127.0.0.1" and svc["ports"][0]["target"] == 8000


def test_gpu_count_and_server_flags_come_from_the_shell(tools: Tools) -> None:
    svc = config(tools, GPU, env={"SPARSE_SERVE_GPUS": "4", PASSTHROUGH: "k-123",
                                  "SPARSE_SERVE_ARGS": "--max-model-len 32768"})["services"]["sparse-serve"]
    assert svc["deploy"]["resources"]["reservations"]["devices"][0]["count"] == 4
    assert svc["environment"][PASSTHROUGH] == "k-123"
    assert svc["command"] == ["--max-model-len", "32768"]


def test_unset_settings_are_not_passed(tools: Tools) -> None:
    done = tools.run("docker-compose", "--project-directory", DEPLOY, "-f", GPU, "config",
                     "--format", "json", env={"SPARSE_SERVE_GPUS": "1"})
    env = json.loads(done.stdout)["services"]["sparse-serve"]["environment"]
    unset = [k for k in env if k.startswith("SPARSE_SERVE_") and env[k] is None]
    assert "SPARSE_SERVE_MODEL" in unset  # so the server keeps its own default


def test_monitoring_is_opt_in_and_mounts_existing_files(tools: Tools) -> None:
    assert set(config(tools, GPU)["services"]) == {"sparse-serve"}
    services = config(tools, GPU, profile="monitoring")["services"]
    assert set(services) == {"sparse-serve", "prometheus", "grafana"}
    for name in ("prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            if volume["type"] == "bind":
                assert Path(volume["source"]).exists(), volume["source"]


def test_cpu_override_drops_the_gpu(tools: Tools) -> None:
    svc = config(tools, GPU, CPU)["services"]["sparse-serve"]
    assert "deploy" not in svc
    assert svc["build"]["dockerfile"] == "deploy/docker/Dockerfile.cpu"
    assert svc["image"] == "sparse-serve:cpu"
    assert "/cache" not in {v["target"] for v in svc["volumes"]}  # keeps the baked model visible
    assert svc["cap_add"] == ["SYS_NICE"] and svc["ipc"] == "private"


@pytest.mark.parametrize("mutation", [
    ("    ipc: host\n", "    ipc: host\n    gpus_please: 1\n"),
    ("              count: ${SPARSE_SERVE_GPUS:-1}\n", "              count: many\n"),
], ids=["unknown-key", "bad-gpu-count"])
def test_invalid_files_fail(tools: Tools, tmp_path: Path, mutation: tuple[str, str]) -> None:
    text = GPU.read_text()
    assert mutation[0] in text
    bad = tmp_path / "compose.yaml"
    bad.write_text(text.replace(*mutation))
    done = tools.run("docker-compose", "--project-directory", DEPLOY, "-f", bad, "config", "--quiet")
    assert done.returncode != 0
    assert done.stderr.strip()
