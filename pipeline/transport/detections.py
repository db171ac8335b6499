"""Message formats of the confirmation stage: partials in, detections out, analysts' feedback.

Partials are routed so that one group's evidence meets in one partition: an indicator's by its id, a
scanner's by its address (every port it probes), hashed the same way by every worker. A worker packs
the partials of one transaction bound for one partition into one message (a JSON array): the
confirmation app then pays its per-message cost once per partition and batch, not once per group.
Detections are keyed by their id on a compacted topic, so the latest version of each is what a reader
keeps. Feedback is keyed by the detection's (kind, key, host): a later verdict replaces the earlier.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator
from typing import Any

SCHEMA_HEADER = "shoal-schema"
PARTIAL_SCHEMA = b"partials/1"
"""Header value of a partials message: a JSON array of ``schemas/partial/v1.json`` objects."""
MAX_PARTIALS_PER_MESSAGE = 500
"""~250 KB of JSON at most: well under the broker's 1 MB message limit."""
DETECTION_SCHEMA = b"detection/1"
FEEDBACK_SCHEMA = b"feedback/1"
VERDICTS = ("confirm", "false_positive")


def _dumps(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def routing_key(partial: dict[str, Any]) -> bytes:
    """What decides a partial's partition: the indicator id, or the scanner's address."""
    if partial["kind"] == "scan":
        return f"scan|{partial['scan']['scanner']}".encode()
    return str(partial["key"]).encode()


def partition_of(partial: dict[str, Any], partitions: int) -> int:
    """A stable hash (CRC-32), so every worker sends one group's partials to the same partition."""
    return zlib.crc32(routing_key(partial)) % partitions


def pack_partials(partials: list[dict[str, Any]], partitions: int) -> Iterator[tuple[int, bytes, bytes]]:
    """(partition, key, value) messages: per partition, arrays of at most MAX_PARTIALS_PER_MESSAGE."""
    by_partition: dict[int, list[dict[str, Any]]] = {}
    for partial in partials:
        by_partition.setdefault(partition_of(partial, partitions), []).append(partial)
    for partition, group in sorted(by_partition.items()):
        for start in range(0, len(group), MAX_PARTIALS_PER_MESSAGE):
            chunk = group[start : start + MAX_PARTIALS_PER_MESSAGE]
            yield partition, routing_key(chunk[0]), json.dumps(chunk, separators=(",", ":")).encode()


def _loads(value: bytes | None) -> Any:
    if not value:
        raise MessageError("empty message")
    try:
        return json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MessageError(f"not JSON: {exc}") from None


def decode_partials(value: bytes | None) -> list[Any]:
    data = _loads(value)
    if not isinstance(data, list):
        raise MessageError("not an array of partials")
    return data


def encode_detection(detection: dict[str, Any]) -> tuple[bytes, bytes]:
    return detection["id"].encode(), _dumps(detection)


def feedback_key(kind: str, key: str, host: str | None) -> str:
    return f"{kind}|{key}|{host or ''}"


def encode_feedback(feedback: dict[str, Any]) -> tuple[bytes, bytes]:
    return feedback_key(feedback["kind"], feedback["key"], feedback["internal_host"]).encode(), _dumps(
        feedback
    )


class MessageError(ValueError):
    """A message of the confirmation topics that cannot be used (counted and skipped, never fatal)."""


def decode_json(value: bytes | None, required: tuple[str, ...]) -> dict[str, Any]:
    data = _loads(value)
    if not isinstance(data, dict) or any(k not in data for k in required):
        raise MessageError(f"not an object with {', '.join(required)}")
    return data
