"""Failure handling for ANY sink: bounded in-memory buffering, counted drops, automatic recovery.

A sink raising :class:`SinkError` (disk full, permission, broker away) must not stop the collector nor
grow memory without bound. :class:`BufferedSink` keeps failed batches in order up to a row and byte
budget, drops the oldest beyond it (counted in ``shoal_sink_dropped_rows_total``), and retries the
backlog before new data, no more often than ``retry_seconds``. Metrics for every wrapped sink share
one set of families per registry, labelled by sink name.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import weakref

import pyarrow as pa
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from pipeline.metrics import NAMESPACE
from pipeline.sinks.base import BatchRejected, Sink, SinkError

log = logging.getLogger(__name__)


class SinkMetrics:
    """One set of sink metric families per registry (several sinks share it through the label)."""

    _per_registry: weakref.WeakKeyDictionary[CollectorRegistry, SinkMetrics] = weakref.WeakKeyDictionary()
    _lock = threading.Lock()

    def __init__(self, registry: CollectorRegistry) -> None:
        kw = {"namespace": NAMESPACE, "registry": registry, "labelnames": ["sink"]}
        self.batches = Counter("sink_batches_written", "Batches accepted by the sink", **kw)
        self.rows = Counter("sink_rows_written", "Flow rows accepted by the sink", **kw)
        self.bytes = Counter("sink_bytes_written", "Arrow bytes of the batches accepted by the sink", **kw)
        self.errors = Counter("sink_errors", "Writes or flushes the sink refused (SinkError)", **kw)
        self.dropped_rows = Counter(
            "sink_dropped_rows",
            "Flow rows lost: failure buffer full or closed, batch rejected by the sink, or lost by the sink "
            "after it took them (file not completed, delivery failed)",
            **kw,
        )
        self.dropped_batches = Counter("sink_dropped_batches", "Batches dropped (see dropped rows)", **kw)
        self.buffered_rows = Gauge("sink_buffered_rows", "Flow rows waiting for a failed sink", **kw)
        self.buffered_bytes = Gauge("sink_buffered_bytes", "Arrow bytes waiting for a failed sink", **kw)
        self.write_seconds = Histogram(
            "sink_write_seconds",
            "Time to write one batch to the sink",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            **kw,
        )

    @classmethod
    def for_registry(cls, registry: CollectorRegistry) -> SinkMetrics:
        with cls._lock:
            found = cls._per_registry.get(registry)
            if found is None:
                found = cls._per_registry[registry] = cls(registry)
            return found


class BufferedSink:
    """Wraps ``inner``; implements :class:`Sink` but never raises :class:`SinkError` from ``write``.

    Thread-safe: the collector's writer thread writes while the service may flush on stop.
    """

    def __init__(
        self,
        inner: Sink,
        registry: CollectorRegistry | None = None,
        *,
        max_rows: int = 2_000_000,
        max_bytes: int = 512 * 1024 * 1024,
        retry_seconds: float = 1.0,
        clock=time.monotonic,
    ) -> None:
        self.inner = inner
        self.name = inner.name
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.retry_seconds = retry_seconds
        self._clock = clock
        self._backlog: collections.deque[tuple[pa.RecordBatch, int]] = collections.deque()
        """Batches not yet written, each with its size (``nbytes`` walks every buffer: ~50 µs for a
        64k-row flow batch, so it is taken once)."""
        self._rows = 0
        self._bytes = 0
        self._next_retry = 0.0
        self._lock = threading.RLock()
        self.failing = False
        self.dropped_rows = 0
        """Rows lost for good: buffer overflow, batches the sink rejected, rows it lost after
        accepting them (``rows_lost``)."""
        self.accepted_rows = 0
        self._lost_seen = 0
        m = SinkMetrics.for_registry(registry) if registry is not None else None
        self._m = m
        if m is not None:
            lbl = (self.name,)
            self._c_batches, self._c_rows = m.batches.labels(*lbl), m.rows.labels(*lbl)
            self._c_bytes, self._c_errors = m.bytes.labels(*lbl), m.errors.labels(*lbl)
            self._c_drop_rows = m.dropped_rows.labels(*lbl)
            self._c_drop_batches = m.dropped_batches.labels(*lbl)
            self._g_rows, self._g_bytes = m.buffered_rows.labels(*lbl), m.buffered_bytes.labels(*lbl)
            self._h_write = m.write_seconds.labels(*lbl)

    @property
    def buffered_rows(self) -> int:
        return self._rows

    @property
    def written_rows(self) -> int:
        """Rows the destination confirmed when the sink says (``confirmed_rows``), else accepted."""
        confirmed = getattr(self.inner, "confirmed_rows", None)
        return self.accepted_rows if confirmed is None else int(confirmed)

    def check(self) -> None:
        """The inner sink's start-up check (raises :class:`SinkError` when it cannot work)."""
        check = getattr(self.inner, "check", None)
        if check is not None:
            check()

    def _count_lost(self) -> None:
        """Rows the inner sink lost after accepting them join the dropped rows (and the metric)."""
        lost = int(getattr(self.inner, "rows_lost", 0) or 0)
        if lost > self._lost_seen:
            self._drop_rows(lost - self._lost_seen, batches=0)
            self._lost_seen = lost

    def write(self, batch: pa.RecordBatch) -> None:
        """Write ``batch`` after any backlog; on failure keep it (bounded) for a later retry."""
        if batch.num_rows == 0:
            return
        with self._lock:
            size = batch.nbytes
            self._backlog.append((batch, size))
            self._rows += batch.num_rows
            self._bytes += size
            self._drain(force=False)
            self._enforce_bounds()
            self._count_lost()
            self._gauges()

    def retry(self) -> None:
        """Try the backlog again if the retry interval has passed (call periodically when idle)."""
        with self._lock:
            if self._backlog:
                self._drain(force=False)
                self._gauges()
            self._count_lost()

    def flush(self) -> None:
        """Deliver the backlog and flush the inner sink; raises :class:`SinkError` if that fails."""
        with self._lock:
            self._drain(force=True)
            self._gauges()
            if self._backlog:
                raise SinkError(f"{self.name}: {self._rows} rows still buffered")
            try:
                self.inner.flush()
            except SinkError:
                self._error()
                raise
            finally:
                self._count_lost()

    def close(self) -> None:
        """Final flush; whatever cannot be delivered now is dropped and counted, never hidden."""
        with self._lock:
            try:
                self.flush()
            except SinkError as exc:
                log.error("%s: closing with undelivered data: %s", self.name, exc)
            while self._backlog:
                self._drop_oldest()
            self._gauges()
            try:
                self.inner.close()
            except SinkError as exc:
                self._error()
                log.error("%s: close failed: %s", self.name, exc)
            self._count_lost()

    # -- internals ------------------------------------------------------------------------------
    def _drain(self, force: bool) -> None:
        now = self._clock()
        if self.failing and not force and now < self._next_retry:
            return
        while self._backlog:
            batch, size = self._backlog[0]
            start = time.perf_counter()
            try:
                self.inner.write(batch)
            except BatchRejected as exc:  # retrying cannot help: drop it, count it, go on
                self._error()
                log.error("%s: batch of %d rows rejected, dropped: %s", self.name, batch.num_rows, exc)
                self._drop_oldest()
                continue
            except SinkError as exc:
                self._error()
                if not self.failing:
                    log.error("%s: write failed, buffering: %s", self.name, exc)
                self.failing = True
                self._next_retry = now + self.retry_seconds
                return
            self._backlog.popleft()
            self._rows -= batch.num_rows
            self._bytes -= size
            self.accepted_rows += batch.num_rows
            if self._m is not None:
                self._h_write.observe(time.perf_counter() - start)
                self._c_batches.inc()
                self._c_rows.inc(batch.num_rows)
                self._c_bytes.inc(size)
            if self.failing:
                log.warning("%s: recovered", self.name)
                self.failing = False

    def _enforce_bounds(self) -> None:
        while self._backlog and (self._rows > self.max_rows or self._bytes > self.max_bytes):
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        batch, size = self._backlog.popleft()
        self._rows -= batch.num_rows
        self._bytes -= size
        self._drop_rows(batch.num_rows, batches=1)

    def _drop_rows(self, rows: int, batches: int) -> None:
        self.dropped_rows += rows
        if self._m is not None:
            self._c_drop_rows.inc(rows)
            self._c_drop_batches.inc(batches)

    def _error(self) -> None:
        if self._m is not None:
            self._c_errors.inc()

    def _gauges(self) -> None:
        if self._m is not None:
            self._g_rows.set(self._rows)
            self._g_bytes.set(self._bytes)
