"""Session fixture: the deploy validators, installed by deploy/install-tools.sh (a no-op when the
pinned versions are already in place)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# The test modules import deploy_checks: keep it importable under any pytest --import-mode.
sys.path.insert(0, str(Path(__file__).parent))

from deploy_checks import DEPLOY, INSTALL_TIMEOUT_S, REPO, Tools  # noqa: E402


@pytest.fixture(scope="session")
def tools() -> Tools:
    tools_dir = Path(os.environ.get("SPARSE_SERVE_TOOLS_DIR", REPO / ".cache" / "tools"))
    done = subprocess.run(["bash", str(DEPLOY / "install-tools.sh")], capture_output=True,
                          text=True, timeout=INSTALL_TIMEOUT_S)
    assert done.returncode == 0, f"install-tools.sh failed:\n{done.stdout}\n{done.stderr}"
    return Tools(tools_dir / "bin")
