"""Alerts topic format: one JSON object per (flow, indicator, side) hit, keyed by indicator id.

The key keeps one indicator's alerts in one partition, in order, so a consumer aggregating per
indicator (confirmation, sightings) sees them without cross-partition joins. The JSON Schema is
``schemas/alert/v1.json``; a header names it.
"""

from __future__ import annotations

import json
from typing import Any

SCHEMA_HEADER = "shoal-schema"
ALERT_SCHEMA_VALUE = b"alert/1"


def encode_alert(alert: dict[str, Any]) -> tuple[bytes, bytes]:
    """(key, value) of one alert as produced by :func:`detectors.matcher.alerts_to_dicts`."""
    value = json.dumps(alert, separators=(",", ":"), default=str).encode()
    return str(alert["indicator_id"]).encode(), value


def decode_alert(value: bytes | None) -> dict[str, Any]:
    if not value:
        raise ValueError("empty alert message")
    return json.loads(value)
