"""The sink interface between the collector (or any stage producing flow batches) and storage/transport.

Kept tiny on purpose: buffering, retry and drop accounting wrap a sink from outside, so every sink
(Parquet, Kafka, ...) gets the same failure behaviour.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import pyarrow as pa


class SinkError(Exception):
    """A sink could not accept a batch now (disk full, broker away...). The batch was not written;
    the caller may retry it later."""


@runtime_checkable
class Sink(Protocol):
    """Accepts Arrow record batches in the flow schema."""

    name: str

    def write(self, batch: pa.RecordBatch) -> None:
        """Write one batch, or raise :class:`SinkError` leaving nothing half-written."""

    def flush(self) -> None:
        """Make everything written so far durable/delivered (may raise :class:`SinkError`)."""

    def close(self) -> None:
        """Flush and release resources; the sink is unusable afterwards."""
