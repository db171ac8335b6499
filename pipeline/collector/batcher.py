"""Accumulates decoded flows until a row or age bound, then hands one batch onward.

Sinks prefer few large batches (Parquet row groups, Kafka messages); the age bound keeps latency
predictable when traffic is light.

Two ways in: :meth:`Batcher.reserve` hands the decoder rows of preallocated :class:`FlowColumns` to
write into (the collector's block path: no batch per template, no concatenation), and
:meth:`Batcher.add` takes finished record batches (decoders without a block path). Either way the
batches come out in arrival order, each at most ``max_rows`` rows.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import pyarrow as pa

from pipeline.decode.columns import FlowColumns


class Ready(NamedTuple):
    """A complete batch and the monotonic time its oldest row arrived (for batch latency)."""

    batch: pa.RecordBatch
    first: float


class Batcher:
    def __init__(self, schema: pa.Schema, max_rows: int, max_seconds: float) -> None:
        self.schema = schema
        self.max_rows = max_rows
        self.max_seconds = max_seconds
        self._parts: list[pa.RecordBatch] = []
        self._open: FlowColumns | None = None
        self._pending = 0
        """Rows in ``_parts`` or ``_open``."""
        self._first: float | None = None
        self._done: list[Ready | tuple[FlowColumns, float]] = []
        """Complete, in order, not yet returned. Columns stay columns until :meth:`collect`: the
        decoder fills reserved rows after :meth:`reserve` returns."""
        self._done_rows = 0
        self.rows_in = 0
        """Rows accepted so far (both ways in)."""

    @property
    def rows(self) -> int:
        """Rows accepted and not yet returned as a batch."""
        return self._pending + self._done_rows

    def reserve(self, n: int, now: float | None = None) -> list[tuple[FlowColumns, int, int]]:
        """Room for ``n`` rows, in order, as (columns, first row, count) pieces; implements the
        decoder's ``RowSpace``. Call :meth:`collect` once the rows are filled."""
        now = time.monotonic() if now is None else now
        if self._parts:  # added batches leave first: arrival order
            self._close()
        spans = []
        while n > 0:
            if self._open is None:
                self._open = FlowColumns(self.max_rows)
            if self._first is None:
                self._first = now
            cols = self._open
            take = min(n, cols.capacity - cols.rows)
            spans.append((cols, cols.rows, take))
            cols.rows += take
            self._pending += take
            self.rows_in += take
            n -= take
            if cols.rows == cols.capacity:
                self._close()
        return spans

    def collect(self, now: float | None = None) -> list[Ready]:
        """Batches completed so far (reserved rows now filled), then the pending rows as one batch if
        the oldest has waited ``max_seconds``."""
        self._close_if_old(now)
        out = [item if isinstance(item, Ready) else Ready(item[0].to_batch(), item[1]) for item in self._done]
        self._done, self._done_rows = [], 0
        return out

    def add(self, batch: pa.RecordBatch, now: float | None = None) -> list[Ready]:
        """Queue ``batch``; return the batches that are now complete (each at most ``max_rows`` rows)."""
        if batch.num_rows:
            if self._open is not None:  # reserved rows leave first: arrival order
                self._close()
            if self._first is None:
                self._first = time.monotonic() if now is None else now
            self._parts.append(batch)
            self._pending += batch.num_rows
            self.rows_in += batch.num_rows
            while self._pending >= self.max_rows:
                first = self._first or 0.0
                whole = self._joined()
                self._parts, self._pending, self._first = [], 0, None
                self._finish(Ready(whole.slice(0, self.max_rows), first), self.max_rows)
                rest = whole.slice(self.max_rows)
                if rest.num_rows:
                    self._parts, self._pending = [rest], rest.num_rows
                    self._first = time.monotonic() if now is None else now
        return self.collect(now)

    def drain(self) -> list[Ready]:
        """Everything pending, regardless of bounds (used on stop)."""
        self._close()
        return self.collect()

    # -- internals ----------------------------------------------------------------------------------
    def _close_if_old(self, now: float | None) -> None:
        if self._first is None:
            return
        now = time.monotonic() if now is None else now
        if now - self._first >= self.max_seconds:
            self._close()

    def _close(self) -> None:
        """The open columns or the pending parts become a complete batch (never both are pending:
        each way in closes the other)."""
        first = self._first or 0.0
        if self._open is not None:
            cols, self._open = self._open, None
            self._finish((cols, first), cols.rows)
        elif self._parts:
            self._finish(Ready(self._joined(), first), self._pending)
            self._parts = []
        self._pending, self._first = 0, None

    def _finish(self, item: Ready | tuple[FlowColumns, float], rows: int) -> None:
        self._done.append(item)
        self._done_rows += rows

    def _joined(self) -> pa.RecordBatch:
        return self._parts[0] if len(self._parts) == 1 else pa.concat_batches(self._parts)
