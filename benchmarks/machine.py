"""The machine line every benchmark prints, so figures are never quoted without their hardware."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import numpy as np
import pyarrow as pa


def machine_line() -> str:
    model = "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"machine: {model}, {os.cpu_count()} cores, load {load:.2f}, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, numpy {np.__version__}, pyarrow {pa.__version__}"
    )
