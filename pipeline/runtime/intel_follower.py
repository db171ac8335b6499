"""Keeps a worker's matcher equal to the indicators topic: read it whole at start, then follow it.

At start the topic's live chunks (:class:`pipeline.intel.topic.TopicState`) go straight into one
index build, as Arrow columns: no object per indicator. Afterwards, when a feed's manifest changes,
the difference between what the main index was built from and what the topic now holds is worked
out by chunk and row, never by id: chunks the main index does not hold go into a small *delta* index
beside it, and the positions of rows withdrawn since (a withdrawals chunk, a chunk a manifest no
longer names) are dropped from its hits (:class:`detectors.layers.LayeredIndex`). The pair is swapped
in atomically, so a change is active within a second whatever the size of the main index. Past
``merge_at`` changes the main index is rebuilt from the live chunks in a background thread, updates
going on meanwhile; a change too large for a delta (a new large feed, a rewrite) waits for that
rebuild, the previous index answering meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from confluent_kafka import Consumer
from prometheus_client import CollectorRegistry, Counter, Histogram

from detectors.index import IndicatorIndex
from detectors.layers import LayeredIndex
from detectors.matcher import Matcher, MatcherHandle
from pipeline.intel.allowlists import Allowlist
from pipeline.intel.model import Indicator
from pipeline.intel.progress import Progress
from pipeline.intel.table import IndicatorTable
from pipeline.intel.topic import REASONS, LiveChunk, TopicState
from pipeline.metrics import NAMESPACE
from pipeline.runtime.index_metrics import IndexMetrics
from pipeline.transport.client import KafkaConnection, connection
from pipeline.transport.indicators import (
    READER_SETTINGS,
    assign_from_beginning,
    old_layout_error,
    read_to_end,
)

log = logging.getLogger(__name__)
MAX_SETTLE_SECONDS = 1.0
"""A topic that never goes quiet (a large publish in progress) still gets its changes applied this often."""
MERGE_AT = 50_000
"""Changes (delta indicators and withdrawn positions) past which the main index is rebuilt in the
background; a change of more delta indicators than this waits for that rebuild."""


@dataclass(frozen=True)
class MainIndex:
    """A main index and where each chunk's rows sit in it: digest -> (first position, the rows built
    (None: all of them), how many). Rows chunks are built whole, their withdrawn rows dropped from
    the hits like later withdrawals (no copy of a chunk with a few withdrawn rows); objects chunks
    (few) without their withdrawn and unreadable objects."""

    index: IndicatorIndex
    spans: dict[str, tuple[int, np.ndarray | None, int]]
    withdrawn: int
    """Rows built although already withdrawn: positions dropped from the start, not changes since."""

    @classmethod
    def build(cls, live: list[LiveChunk], allowlist: Allowlist | None) -> MainIndex:
        """Objects first (the index puts them first), then the rows of every chunk."""
        objects: list[Indicator] = []
        parts: list[IndicatorTable] = []
        spans: dict[str, tuple[int, np.ndarray | None, int]] = {}
        for item in (i for i in live if i.chunk.kind == "objects"):
            kept = item.kept()
            alive = item.chunk.objects if kept is None else [item.chunk.objects[r] for r in kept.tolist()]
            spans[item.chunk.digest] = (len(objects), kept, len(alive))
            objects += alive  # type: ignore[arg-type]  # unreadable ones are withdrawn (dead)
        position, withdrawn = len(objects), 0
        for item in (i for i in live if i.chunk.kind == "rows"):
            spans[item.chunk.digest] = (position, None, item.chunk.size)
            parts.append(item.chunk.rows)
            position += item.chunk.size
            withdrawn += item.chunk.size - item.alive
        return cls(IndicatorIndex.build(objects, allowlist, IndicatorTable.concat(parts)), spans, withdrawn)

    def layered(self, live: list[LiveChunk], allowlist: Allowlist | None) -> LayeredIndex:
        """This index with ``live`` laid over it: chunks it lacks as a delta, rows it holds that are
        not live (withdrawn, or of a chunk no manifest names) as withdrawn positions."""
        removed: list[np.ndarray] = []
        delta_objects: list[Indicator] = []
        delta_rows: list[IndicatorTable] = []
        held = set()
        for item in live:
            chunk, span = item.chunk, self.spans.get(item.chunk.digest)
            if span is None:
                kept = item.kept()
                if chunk.kind == "objects":
                    delta_objects += [
                        o for k, o in enumerate(chunk.objects) if kept is None or not item.dead[k]
                    ]  # type: ignore[index, misc]
                else:
                    delta_rows.append(chunk.rows if kept is None else chunk.rows.take(kept))
                continue
            held.add(chunk.digest)
            start, built, _ = span
            if item.dead is not None:  # withdrawn rows, at their positions in the build
                dead = item.dead if built is None else item.dead[built]
                removed.append(start + np.flatnonzero(dead))
        for digest, (start, _, count) in self.spans.items():
            if digest not in held:  # a chunk no manifest names any more
                removed.append(np.arange(start, start + count))
        positions = np.concatenate([np.empty(0, np.int64), *removed]).astype(np.int32)
        return LayeredIndex(
            self.index, positions, delta_objects, IndicatorTable.concat(delta_rows), allowlist
        )

    def changes(self, layered: LayeredIndex) -> int:
        """Indicators added or withdrawn since this index was built (what a rebuild would fold in)."""
        return layered.delta.count + len(layered.removed) - self.withdrawn


def delta_size(main: MainIndex, live: list[LiveChunk]) -> int:
    """Indicators ``live`` holds that ``main`` does not (what a delta index would hold)."""
    return sum(item.alive for item in live if item.chunk.digest not in main.spans)


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
        self.state = TopicState()
        self.handle: MatcherHandle | None = None
        self.index: LayeredIndex | None = None
        self.main: MainIndex | None = None
        self._pending = False  # the live view changed since the index in use was made
        self._merged: MainIndex | None = None
        self._merging: threading.Thread | None = None
        self._kafka = connection(kafka)
        self._consumer = Consumer(self._kafka.config(**{"group.id": f"shoal-intel-{time.time_ns()}",
                                                        **READER_SETTINGS}))  # fmt: skip
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="intel-follower", daemon=True)
        kw: dict[str, Any] = {"namespace": NAMESPACE, "registry": registry}
        self.index_metrics = IndexMetrics(registry)
        self.builds = Counter("intel_index_builds", "Index builds from the indicators topic", **kw)
        self.build_seconds = Histogram("intel_index_build_seconds", "Time to build an index",
                                       buckets=(0.01, 0.1, 0.5, 1, 5, 15, 60, 300), **kw)  # fmt: skip
        self.bad = Counter("intel_bad_messages", "Indicators-topic messages (or parts) that could not be used",
                           ["reason"], **kw)  # fmt: skip
        for reason in REASONS:
            self.bad.labels(reason)
        self.updates = Counter(
            "intel_index_updates", "Indicators added or withdrawn through a delta beside the main index", **kw
        )

    @property
    def changes(self) -> int:
        """Indicators added or withdrawn since the main index in use was built."""
        return 0 if self.main is None or self.index is None else self.main.changes(self.index)

    def start(self, timeout: float = 120.0) -> MatcherHandle:
        """Read the topic to its end, build the first index, then follow the topic in a thread.
        A topic that still holds indicator/1 messages is refused (IndicatorTopicError)."""
        started = time.monotonic()
        ends = assign_from_beginning(self._consumer, self.topic, kafka=self._kafka)
        with Progress(self.topic, None) as progress:
            read_to_end(self._consumer, ends, self._apply, timeout, progress)
        if self.state.old_layout:
            raise old_layout_error(self.topic, len(self.state.old_layout))
        self._first_index()
        assert self.index is not None and self.handle is not None
        log.info("intel: %d indicators from %d feeds in %.1f s", self.index.count, len(self.state.manifests),
                 time.monotonic() - started)  # fmt: skip
        self._thread.start()
        return self.handle

    def _first_index(self) -> None:
        live = self.state.live()
        self.main = self._build(live)
        self.index = self.main.layered(live, self.allowlist)
        self._pending = False
        self.index_metrics.built(self.index)
        self.handle = MatcherHandle(Matcher(self.index, self.geoip))

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        self._consumer.close()

    def _build(self, live: list[LiveChunk]) -> MainIndex:
        started = time.monotonic()
        main = MainIndex.build(live, self.allowlist)
        self.build_seconds.observe(time.monotonic() - started)
        self.builds.inc()
        return main

    def _apply(self, msg: Any) -> bool:
        before = self.state.errors.copy()
        changed = self.state.apply(msg.key(), msg.value(), msg.headers())
        for reason, n in (self.state.errors - before).items():
            self.bad.labels(reason).inc(n)
        if (
            msg.value() is not None
            and msg.key() is not None
            and msg.key().decode(errors="replace") in self.state.old_layout
        ):
            self.bad.labels("old_layout").inc()
            log.warning("indicators topic: %s is an indicator/1 message (old layout); ignored", msg.key())
        self._pending |= changed
        return changed

    def _apply_pending(self) -> None:
        """Lay the live view over the main index in use and swap it in, or (a change too large for a
        delta) leave the index in use to the background rebuild."""
        assert self.index is not None and self.handle is not None and self.main is not None
        self._pending = False
        live = self.state.live()
        large = delta_size(self.main, live) > self.merge_at
        if not large:
            previous, self.index = self.index, self.main.layered(live, self.allowlist)
            self.handle.swap(self.index)
            self.updates.inc(_changes(previous, self.index))
            self.index_metrics.built(self.index)
            log.info("intel: changes applied (%d indicators; %d changes since the main build)", self.index.count,
                     self.changes)  # fmt: skip
        if (large or self.changes >= self.merge_at) and self._merging is None:
            log.info("intel: rebuilding the main index in the background (%s)",
                     "a change too large for a delta" if large else f"{self.changes} changes")  # fmt: skip
            self._merging = threading.Thread(
                target=self._merge, args=(live,), name="intel-merge", daemon=True
            )
            self._merging.start()

    def _merge(self, live: list[LiveChunk]) -> None:
        try:
            self._merged = self._build(live)
        except Exception:  # keep the layered index; the next change tries again
            log.exception("intel: rebuilding the main index failed; the delta stays in use")
            self._merged = None
            self._merging = None

    def _take_merged(self) -> None:
        """Swap in the rebuilt main index, with the changes that arrived during its build laid over it."""
        assert self._merged is not None and self.handle is not None
        self.main, self._merged, self._merging = self._merged, None, None
        self.index = self.main.layered(self.state.live(), self.allowlist)
        self._pending = False
        self.handle.swap(self.index)
        self.index_metrics.built(self.index)
        log.info("intel: main index rebuilt (%d indicators, %d changes laid over it)", self.index.count,
                 self.changes)  # fmt: skip
        if self.changes >= self.merge_at or delta_size(self.main, self.state.live()) > self.merge_at:
            self._pending = True  # still too far behind: the next round starts another rebuild

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
                changed_at = changed_at or (now if self._pending else None)
            if changed_at is None or self.handle is None:
                continue
            quiet = now - last_message >= self.settle_seconds
            if quiet or now - changed_at >= MAX_SETTLE_SECONDS:
                try:
                    self._apply_pending()
                except Exception:  # keep matching with the old index; try again on the next change
                    log.exception("intel: applying changes failed; the previous index stays in use")
                changed_at = None


def _changes(before: LayeredIndex, after: LayeredIndex) -> int:
    """Indicators added to or withdrawn from what is answered, between two layered indexes of one main."""
    if before.main is not after.main:
        return after.pending
    moved = np.setxor1d(before.removed, after.removed)
    return len(moved) + abs(after.delta.count - before.delta.count)
