"""Paths and runners shared by the deploy tests: the installed validators and deploy/ scripts."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
CHART = DEPLOY / "helm" / "sparse-serve"
INSTALL_TIMEOUT_S = 900
TOOL_TIMEOUT_S = 120


@dataclass(frozen=True)
class Tools:
    """The installed validators (``.cache/tools/bin`` unless SPARSE_SERVE_TOOLS_DIR says otherwise)."""

    bin: Path

    def __getitem__(self, name: str) -> str:
        return str(self.bin / name)

    def run(self, *args: str | Path, input: str | None = None,
            env: dict[str, str] | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
        """Run a command (first arg: a tool name in bin/ or a path), capturing text output."""
        cmd = [str(a) for a in args]
        if (self.bin / cmd[0]).exists():
            cmd[0] = self[cmd[0]]
        return subprocess.run(cmd, input=input, capture_output=True, text=True, cwd=cwd,
                              env={**os.environ, **(env or {})}, timeout=TOOL_TIMEOUT_S)

    def helm(self, *args: str | Path) -> subprocess.CompletedProcess[str]:
        """``deploy/helm_tool.py`` (Helm's Go SDK) under the tools venv's Python."""
        return self.run("python", DEPLOY / "helm_tool.py", *args)


def load_deploy_module(name: str, relative: str) -> ModuleType:
    """Import a script under deploy/ (not a package) as a module."""
    spec = importlib.util.spec_from_file_location(name, DEPLOY / relative)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
