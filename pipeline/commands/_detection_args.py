"""The ``--detections FILE`` option shared by run, detect and confirm."""

from __future__ import annotations

import argparse
import sys
from typing import Any

DETECTIONS_HELP = ("TOML file: [detections] (network identity, window, emit step, rules as [[detections.rules]]), "
                   "[constituency] (cidrs, asns, files) and [scan]; env SHOAL_DETECTIONS__SECTION__KEY "
                   "overrides it. See docs/detections.md")  # fmt: skip


def add_detection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--detections", metavar="FILE", dest="detections_config", help=DETECTIONS_HELP)


def detection_settings(path: str | None) -> Any:
    from pipeline.config import ConfigError
    from pipeline.confirm.settings import load_detection_settings

    try:
        return load_detection_settings(path)
    except ConfigError as exc:
        print(f"shoal: detections configuration: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
