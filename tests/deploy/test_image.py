"""The container image's Dockerfile: hadolint clean at warning level, multi-stage, the final stage
unprivileged and without a compiler, and numba's cache compiled in the builder."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from deploy_tools import ROOT, tool

DOCKERFILE = ROOT / "Dockerfile"


def test_hadolint_warning_level() -> None:
    res = subprocess.run([tool("hadolint"), "--failure-threshold", "warning", str(DOCKERFILE)],
                         capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr


def test_hadolint_catches_a_warning(tmp_path) -> None:
    """The lint can fail: the same file with an unpinned apt-get install and no USER."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:bookworm\nRUN apt-get update && apt-get install -y gcc\n")
    res = subprocess.run([tool("hadolint"), "--failure-threshold", "warning", str(bad)],
                         capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert res.returncode != 0 and "DL3008" in res.stdout


def test_final_stage_is_small_and_unprivileged() -> None:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages = re.split(r"^FROM ", text, flags=re.MULTILINE)[1:]
    assert len(stages) == 2
    build, final = stages
    assert "import detectors.kernels" in build and "NUMBA_CACHE_DIR" in build
    assert re.search(r"^USER 10001", final, re.MULTILINE)
    assert not re.search(r"\b(gcc|g\+\+|build-essential|clang|apt-get install|pip install)\b", final)
    assert "COPY --from=build /opt/shoal /opt/shoal" in final


def test_chart_default_intel_is_in_the_image() -> None:
    """Without intelSync.sources the chart syncs the sample intel from the path the image puts it at."""
    from test_chart import render

    sync = next(
        d for d in render() if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-intel-sync")
    )
    path = sync["spec"]["template"]["spec"]["containers"][0]["args"][-1]
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    copied = re.search(r"cp (pipeline/samples/\S+) (pipeline/samples/\S+) (/opt/shoal/samples)/", text)
    assert copied, "the builder no longer copies the samples"
    assert path in {f"{copied.group(3)}/{Path(p).name}" for p in copied.group(1, 2)}
    assert (ROOT / "pipeline" / "samples" / Path(path).name).exists()
