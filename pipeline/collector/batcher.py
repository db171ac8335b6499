"""Accumulates decoded record batches until a row or age bound, then hands one batch onward.

Sinks prefer few large batches (Parquet row groups, Kafka messages); the age bound keeps latency
predictable when traffic is light.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import pyarrow as pa


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
        self._rows = 0
        self._first: float | None = None

    @property
    def rows(self) -> int:
        return self._rows

    @property
    def oldest(self) -> float | None:
        """Monotonic time the oldest pending row arrived (for batch latency)."""
        return self._first

    def add(self, batch: pa.RecordBatch, now: float | None = None) -> list[Ready]:
        """Queue ``batch``; return the batches that are now complete (each at most ``max_rows`` rows)."""
        if batch.num_rows == 0:
            return self.poll(now)
        if self._first is None:
            self._first = time.monotonic() if now is None else now
        self._parts.append(batch)
        self._rows += batch.num_rows
        out: list[Ready] = []
        while self._rows >= self.max_rows:
            first = self._first
            whole = self._take().batch
            out.append(Ready(whole.slice(0, self.max_rows), first or 0.0))
            rest = whole.slice(self.max_rows)
            if rest.num_rows:
                self._parts, self._rows = [rest], rest.num_rows
                self._first = time.monotonic() if now is None else now
        out.extend(self.poll(now))
        return out

    def poll(self, now: float | None = None) -> list[Ready]:
        """The pending rows as one batch if the oldest has waited ``max_seconds``."""
        if self._first is None:
            return []
        now = time.monotonic() if now is None else now
        if now - self._first >= self.max_seconds:
            return [self._take()]
        return []

    def drain(self) -> list[Ready]:
        """Everything pending, regardless of bounds (used on stop)."""
        return [self._take()] if self._rows else []

    def _take(self) -> Ready:
        parts, first = self._parts, self._first or 0.0
        self._parts, self._rows, self._first = [], 0, None
        return Ready(parts[0] if len(parts) == 1 else pa.concat_batches(parts), first)
