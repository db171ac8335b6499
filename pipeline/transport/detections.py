"""Message formats of the confirmation stage: partials in, detections out, analysts' feedback.

Partials are keyed so that one group's evidence meets in one partition: an indicator's by its id, a
scanner's by its address (every port it probes). Detections are keyed by their id on a compacted
topic, so the latest version of each is what a reader keeps. Feedback is keyed by the detection's
(kind, key, host), so a later verdict on the same key replaces the earlier one.
"""

from __future__ import annotations

import json
from typing import Any

SCHEMA_HEADER = "shoal-schema"
PARTIAL_SCHEMA = b"partial/1"
DETECTION_SCHEMA = b"detection/1"
FEEDBACK_SCHEMA = b"feedback/1"
VERDICTS = ("confirm", "false_positive")


def _dumps(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def partial_key(partial: dict[str, Any]) -> bytes:
    if partial["kind"] == "scan":
        return f"scan|{partial['scan']['scanner']}".encode()
    return str(partial["key"]).encode()


def encode_partial(partial: dict[str, Any]) -> tuple[bytes, bytes]:
    return partial_key(partial), _dumps(partial)


def encode_detection(detection: dict[str, Any]) -> tuple[bytes, bytes]:
    return detection["id"].encode(), _dumps(detection)


def feedback_key(kind: str, key: str, host: str | None) -> str:
    return f"{kind}|{key}|{host or ''}"


def encode_feedback(feedback: dict[str, Any]) -> tuple[bytes, bytes]:
    return feedback_key(feedback["kind"], feedback["key"], feedback["internal_host"]).encode(), _dumps(feedback)


class MessageError(ValueError):
    """A message of the confirmation topics that cannot be used (counted and skipped, never fatal)."""


def decode_json(value: bytes | None, required: tuple[str, ...]) -> dict[str, Any]:
    if not value:
        raise MessageError("empty message")
    try:
        data = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MessageError(f"not JSON: {exc}") from None
    if not isinstance(data, dict) or any(k not in data for k in required):
        raise MessageError(f"not an object with {', '.join(required)}")
    return data
