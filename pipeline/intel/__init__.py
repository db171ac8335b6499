"""Intel I/O: read what partners share (STIX 2.1, MISP, TAXII 2.1, plain lists) into indicators."""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path

from pipeline.intel.load import IntelError, IntelLoad
from pipeline.intel.model import Condition, Indicator

__all__ = ["Condition", "Indicator", "IntelError", "IntelLoad", "load_source"]


def load_source(
    spec: str, min_confidence: int = 0, to_ids_only: bool = True, now: datetime | None = None
) -> IntelLoad:
    """One ``--intel`` source (see :func:`_load`), each indicator once (duplicates counted), none
    broader than the minimum prefix (``SHOAL_INTEL_MIN_PREFIX_V4`` default 8, ``_V6`` default 16)."""
    v4 = int(os.environ.get("SHOAL_INTEL_MIN_PREFIX_V4", "8"))
    v6 = int(os.environ.get("SHOAL_INTEL_MIN_PREFIX_V6", "16"))
    return _load(spec, min_confidence, to_ids_only, now).refuse_catch_alls(v4, v6).collapse_duplicates()


def _load(spec: str, min_confidence: int, to_ids_only: bool, now: datetime | None) -> IntelLoad:
    """One ``--intel`` source. ``spec`` is a path (STIX bundle or directory, MISP event JSON, MISP
    feed directory, plain list), ``csv:PATH:VALUE_COLUMN[:PORT_COLUMN]``, ``taxii:URL`` (a TAXII 2.1
    collection URL) or ``misp:URL`` (a MISP server; key from SHOAL_MISP_KEY)."""
    if spec.startswith("taxii:"):
        from pipeline.intel.taxii import load_taxii

        return load_taxii(spec.removeprefix("taxii:"), min_confidence=min_confidence, now=now)
    if spec.startswith("misp:"):
        from pipeline.intel.misp import load_misp_server

        key = os.environ.get("SHOAL_MISP_KEY")
        if not key:
            raise IntelError("misp: sources need the API key in SHOAL_MISP_KEY")
        return load_misp_server(spec.removeprefix("misp:"), key, to_ids_only)
    if spec.startswith("csv:"):
        from pipeline.intel.lists import load_csv

        parts = spec.removeprefix("csv:").split(":")
        if len(parts) < 2:
            raise IntelError(f"{spec}: expected csv:PATH:VALUE_COLUMN[:PORT_COLUMN]")
        return load_csv(Path(parts[0]), parts[1], parts[2] if len(parts) > 2 else None)
    path = Path(spec)
    if not path.exists():
        raise IntelError(f"{spec}: no such file or directory")
    if path.is_dir():
        if (path / "manifest.json").exists():
            from pipeline.intel.misp import load_misp_feed

            return load_misp_feed(path, to_ids_only)
        from pipeline.intel.stix import load_stix

        return load_stix(path, min_confidence, now)
    if path.suffix == ".json":
        try:
            head = path.read_text(encoding="utf-8")[:4096]
        except (OSError, UnicodeDecodeError) as exc:
            raise IntelError(f"{spec}: not readable as UTF-8 JSON ({exc})") from exc
        if '"Event"' in head or '"Attribute"' in head or head.lstrip().startswith('{"response"'):
            from pipeline.intel.misp import load_misp_event

            return load_misp_event(path, to_ids_only)
        from pipeline.intel.stix import load_stix

        return load_stix(path, min_confidence, now)
    from pipeline.intel.lists import load_list

    return load_list(path)


def dump_json(indicator: Indicator) -> str:
    return json.dumps(indicator.to_dict(), sort_keys=True)
