"""Keeps a worker's matcher equal to the indicators topic: read it whole at start, then follow it.

A change (new, changed or withdrawn indicators) is applied as a small delta beside the main index
(:class:`detectors.layers.LayeredIndex`): a build of the changed indicators only, swapped in
atomically, so an update is active within a second whatever the size of the main index. When the
delta grows past ``merge_at`` changes, the main index is rebuilt from the whole state in a background
thread while updates go on; the changes that arrived meanwhile are laid over the new main index
before it is swapped in."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any

from confluent_kafka import Consumer
from prometheus_client import CollectorRegistry, Counter, Histogram

from detectors.index import IndicatorIndex
from detectors.layers import IdLookup, LayeredIndex
from detectors.matcher import Matcher, MatcherHandle
from pipeline.intel.allowlists import Allowlist
from pipeline.intel.model import Indicator
from pipeline.metrics import NAMESPACE
from pipeline.runtime.index_metrics import IndexMetrics
from pipeline.transport.client import KafkaConnection, connection
from pipeline.transport.indicators import IndicatorState, assign_from_beginning, read_to_end

log = logging.getLogger(__name__)
MAX_SETTLE_SECONDS = 1.0
"""A topic that never goes quiet (a large publish in progress) still gets its changes applied this often."""
MERGE_AT = 50_000
"""Changes (delta entries and withdrawn positions) past which the main index is rebuilt in the background."""


class IntelFollower:
    def __init__(
        self,
        kafka: KafkaConnection | str,
        topic: str,
        registry: CollectorRegistry,
        allowlist: Allowlist | None = None,
        geoip: Any = None,
        settle_seconds: float = 0.3,
        merge_at: int = MERGE_AT,
    ) -> None:
        self.topic = topic
        self.allowlist = allowlist
        self.geoip = geoip
        self.settle_seconds = settle_seconds
        self.merge_at = merge_at
        self.state = IndicatorState()
        self.handle: MatcherHandle | None = None
        self.index: LayeredIndex | None = None
        self._pending: dict[
            str, Indicator | None
        ] = {}  # id -> its new form (None: withdrawn), not yet applied
        self._since_snapshot: dict[str, Indicator | None] | None = None  # changes during a background merge
        self._merged: tuple[IndicatorIndex, Allowlist | None, IdLookup] | None = None
        self._merging: threading.Thread | None = None
        self._kafka = connection(kafka)
        self._consumer = Consumer(self._kafka.config(**{
            "group.id": f"shoal-intel-{uuid.uuid4().hex}", "enable.auto.commit": False,
        }))  # fmt: skip
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="intel-follower", daemon=True)
        kw: dict[str, Any] = {"namespace": NAMESPACE, "registry": registry}
        self.index_metrics = IndexMetrics(registry)
        self.builds = Counter("intel_index_builds", "Index builds from the indicators topic", **kw)
        self.build_seconds = Histogram("intel_index_build_seconds", "Time to build an index",
                                       buckets=(0.01, 0.1, 0.5, 1, 5, 15, 60, 300), **kw)  # fmt: skip
        self.bad = Counter("intel_bad_messages", "Indicators-topic messages that could not be read", **kw)
        self.updates = Counter(
            "intel_index_updates", "Changes applied as a delta beside the main index", **kw
        )

    def start(self, timeout: float = 120.0) -> MatcherHandle:
        """Read the topic to its end, build the first index, then follow the topic in a thread."""
        ends = assign_from_beginning(self._consumer, self.topic, kafka=self._kafka)
        read_to_end(self._consumer, ends, self._apply, timeout)
        self._first_index()
        self._thread.start()
        assert self.handle is not None
        return self.handle

    def _first_index(self) -> None:
        self._pending.clear()
        self.index = LayeredIndex.of(*self._build(list(self.state.indicators.values())))
        self.index_metrics.built(self.index)
        self.handle = MatcherHandle(Matcher(self.index, self.geoip))

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        self._consumer.close()

    def _build(self, indicators: list[Indicator]) -> tuple[IndicatorIndex, Allowlist | None, IdLookup]:
        """A main index of the whole state and its id lookup (made now, so updates never wait for it)."""
        started = time.monotonic()
        index = IndicatorIndex.build(indicators, self.allowlist)
        ids = IdLookup(index.attributes.column("indicator_id"))
        self.build_seconds.observe(time.monotonic() - started)
        self.builds.inc()
        return index, self.allowlist, ids

    def _apply(self, msg: Any) -> bool:
        errors = self.state.errors
        changed = self.state.apply(msg.key(), msg.value())
        self.bad.inc(self.state.errors - errors)
        if changed and msg.key() is not None:
            name = msg.key().decode(errors="replace")
            self._pending[name] = self.state.indicators.get(name)
            if self._since_snapshot is not None:
                self._since_snapshot[name] = self._pending[name]
        return changed

    def _apply_pending(self) -> None:
        """Lay the pending changes over the index in use and swap it in."""
        assert self.index is not None and self.handle is not None
        changes, self._pending = self._pending, {}
        added = [i for i in changes.values() if i is not None]
        self.index = self.index.updated(changes.keys(), added)
        self.handle.swap(self.index)
        self.updates.inc(len(changes))
        self.index_metrics.built(self.index)
        log.info("intel: %d changes applied (%d indicators; %d changes since the main build)", len(changes),
                 self.index.count - len(self.index.removed), self.index.pending)  # fmt: skip
        if self.index.pending >= self.merge_at and self._merging is None:
            self._since_snapshot = {}
            snapshot = list(self.state.indicators.values())
            self._merging = threading.Thread(
                target=self._merge, args=(snapshot,), name="intel-merge", daemon=True
            )
            self._merging.start()

    def _merge(self, snapshot: list[Indicator]) -> None:
        try:
            self._merged = self._build(snapshot)
        except Exception:  # keep the layered index; the next change tries again
            log.exception("intel: rebuilding the main index failed; the delta stays in use")
            self._merged = None
            self._since_snapshot = None
            self._merging = None

    def _take_merged(self) -> None:
        """Swap in the merged main index, with the changes that arrived during its build laid over it."""
        assert self._merged is not None and self._since_snapshot is not None and self.handle is not None
        changes = self._since_snapshot
        index = LayeredIndex.of(*self._merged)
        added = [i for i in changes.values() if i is not None]
        self.index = index.updated(changes.keys(), added) if changes else index
        self.handle.swap(self.index)
        self.index_metrics.built(self.index)
        log.info("intel: main index rebuilt with %d indicators", self.index.count)
        self._merged, self._since_snapshot, self._merging = None, None, None

    def _follow(self) -> None:
        changed_at: float | None = None
        last_message = 0.0
        while not self._stop.is_set():
            try:
                messages = self._consumer.consume(num_messages=10_000, timeout=0.1)
            except Exception:  # a client error must not end intel updates: logged, retried
                log.exception("indicators topic: consume failed")
                time.sleep(1)
                continue
            now = time.monotonic()
            for msg in messages:
                if msg.error() is None and self._apply(msg):
                    changed_at = changed_at or now
                last_message = now
            if self._merging is not None and not self._merging.is_alive() and self._merged is not None:
                self._take_merged()
            if changed_at is None or self.handle is None:
                continue
            quiet = now - last_message >= self.settle_seconds
            if quiet or now - changed_at >= MAX_SETTLE_SECONDS:
                try:
                    self._apply_pending()
                except Exception:  # keep matching with the old index; try again on the next change
                    log.exception("intel: applying changes failed; the previous index stays in use")
                changed_at = None
