"""The detection configuration file (``--detections FILE``, TOML), shared by ``shoal run``, the matcher
workers (``shoal detect``) and the confirmation app (``shoal confirm``): windows, rules, the network's
identity and constituency, the scan detector.

Precedence: defaults < file < ``SHOAL_DETECTIONS__SECTION__KEY`` environment variables < options.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detectors.constituency import Constituency, ConstituencyConfig
from detectors.detections import DetectionConfig
from detectors.scans import ScanConfig
from pipeline.config import load_tree

ENV_PREFIX = "SHOAL_DETECTIONS__"


@dataclass(frozen=True)
class DetectionSettings:
    detections: DetectionConfig = field(default_factory=DetectionConfig)
    constituency: ConstituencyConfig = field(default_factory=ConstituencyConfig)
    scan: ScanConfig = field(default_factory=ScanConfig)

    def validate(self) -> DetectionSettings:
        self.detections.validate()
        self.scan.validate()
        Constituency.from_config(self.constituency)  # unreadable files and bad entries fail at start
        return self


def load_detection_settings(
    path: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> DetectionSettings:
    return load_tree(DetectionSettings, path, ENV_PREFIX, environ, overrides).validate()
