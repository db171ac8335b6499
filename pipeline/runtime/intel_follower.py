"""Keeps a worker's matcher equal to the indicators topic: read it whole at start, then follow it and
rebuild the index off the hot path whenever it changes, swapping it in atomically."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any

from confluent_kafka import Consumer
from prometheus_client import CollectorRegistry, Counter, Histogram

from detectors.index import IndicatorIndex
from detectors.matcher import Matcher, MatcherHandle
from pipeline.intel.allowlists import Allowlist
from pipeline.metrics import NAMESPACE
from pipeline.runtime.index_metrics import IndexMetrics
from pipeline.transport.client import KafkaConnection, connection
from pipeline.transport.indicators import IndicatorState, assign_from_beginning, read_to_end

log = logging.getLogger(__name__)
MAX_SETTLE_SECONDS = 5.0
"""A topic that never goes quiet (a large publish in progress) still gets a rebuild this often."""


class IntelFollower:
    def __init__(
        self,
        kafka: KafkaConnection | str,
        topic: str,
        registry: CollectorRegistry,
        allowlist: Allowlist | None = None,
        geoip: Any = None,
        settle_seconds: float = 0.3,
    ) -> None:
        self.topic = topic
        self.allowlist = allowlist
        self.geoip = geoip
        self.settle_seconds = settle_seconds
        self.state = IndicatorState()
        self.handle: MatcherHandle | None = None
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

    def start(self, timeout: float = 120.0) -> MatcherHandle:
        """Read the topic to its end, build the first index, then follow the topic in a thread."""
        ends = assign_from_beginning(self._consumer, self.topic, kafka=self._kafka)
        read_to_end(self._consumer, ends, self._apply, timeout)
        self.handle = MatcherHandle(Matcher(self._build(), self.geoip))
        self._thread.start()
        return self.handle

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        self._consumer.close()

    def _build(self) -> IndicatorIndex:
        started = time.monotonic()
        index = IndicatorIndex.build(list(self.state.indicators.values()), self.allowlist)
        self.build_seconds.observe(time.monotonic() - started)
        self.builds.inc()
        self.index_metrics.built(index)
        return index

    def _apply(self, msg: Any) -> bool:
        errors = self.state.errors
        changed = self.state.apply(msg.key(), msg.value())
        self.bad.inc(self.state.errors - errors)
        return changed

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
            if changed_at is None or self.handle is None:
                continue
            quiet = now - last_message >= self.settle_seconds
            if quiet or now - changed_at >= MAX_SETTLE_SECONDS:
                try:
                    self.handle.swap(self._build())
                    log.info("intel: index rebuilt with %d indicators", len(self.state.indicators))
                except Exception:  # keep matching with the old index; try again on the next change
                    log.exception("intel: index build failed; the previous index stays in use")
                changed_at = None
