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


class BatchRejected(SinkError):
    """This batch can never be written (its data is the problem, not the sink): retrying it would
    block the stream, so the caller drops it and counts its rows."""


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


# Optional, read with getattr by the buffered wrapper and the collector (sinks without them work):
#   check() -> None       raise SinkError at start if the sink cannot work at all (unwritable
#                         directory, unreachable broker), so nothing is accepted only to be lost.
#   confirmed_rows: int   rows the destination has confirmed (file complete, broker acknowledged);
#                         what "written" reports.
#   rows_lost: int        rows accepted by write() and lost afterwards (file could not be completed,
#                         delivery failed); counted with the dropped rows.
