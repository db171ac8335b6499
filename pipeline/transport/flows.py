"""Flows topic format: one Arrow IPC stream (one record batch) per Kafka message.

Compressed once, by Arrow's buffer compression (zstd), so the producer's own compression stays off.
Each message stays under ``max_bytes`` (the broker's default limit is ~1 MiB) by splitting rows.
A header carries the schema name and version so consumers refuse what they cannot read.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.schemas import FLOW_SCHEMA, FLOW_SCHEMA_VERSION, bytes16_to_ip

SCHEMA_HEADER = "shoal-schema"
SCHEMA_VALUE = f"flow/{FLOW_SCHEMA_VERSION}".encode()
MAX_MESSAGE_BYTES = 900_000
_OPTIONS = pa.ipc.IpcWriteOptions(compression="zstd")


class FlowMessageError(ValueError):
    """A flows-topic message Shoal cannot read (garbage, other schema or version). ``reason`` is a
    short label for metrics: schema_header, empty, not_arrow, schema_mismatch."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def encode_batch(batch: pa.RecordBatch, max_bytes: int = MAX_MESSAGE_BYTES) -> list[bytes]:
    """``batch`` as one or more IPC payloads, each at most ``max_bytes``."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema, options=_OPTIONS) as writer:
        writer.write_batch(batch)
    payload = sink.getvalue().to_pybytes()
    if len(payload) <= max_bytes or batch.num_rows <= 1:
        return [payload]
    half = batch.num_rows // 2
    return encode_batch(batch.slice(0, half), max_bytes) + encode_batch(batch.slice(half), max_bytes)


def by_exporter(batch: pa.RecordBatch) -> list[tuple[str, pa.RecordBatch]]:
    """Split a batch per exporter (the message key), so one exporter's flows stay in one partition."""
    exporters = batch.column("exporter")
    unique = pc.unique(exporters)
    if len(unique) == 1:
        return [(str(bytes16_to_ip(unique[0].as_py())), batch)]
    return [(str(bytes16_to_ip(value.as_py())), batch.filter(pc.equal(exporters, value))) for value in unique]


def decode_message(value: bytes | None, headers: list[tuple[str, bytes]] | None) -> pa.RecordBatch:
    """One flows message back to a record batch in the current flow schema."""
    found = dict(headers or []).get(SCHEMA_HEADER)
    if found != SCHEMA_VALUE:
        raise FlowMessageError(f"schema header {found!r}, expected {SCHEMA_VALUE!r}", "schema_header")
    if not value:
        raise FlowMessageError("empty message", "empty")
    try:
        reader = pa.ipc.open_stream(value)
        batches = list(reader)
    except (pa.ArrowException, OSError) as exc:
        raise FlowMessageError(f"not an Arrow IPC stream: {exc}", "not_arrow") from exc
    if len(batches) != 1 or not batches[0].schema.equals(FLOW_SCHEMA):
        raise FlowMessageError("unexpected batch count or schema", "schema_mismatch")
    return batches[0]
