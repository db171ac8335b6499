"""What a SOC asks of the index in use: how many indicators (per feed), how much memory, how old."""

from __future__ import annotations

import collections
from typing import Any

from prometheus_client import CollectorRegistry, Gauge

from pipeline.metrics import NAMESPACE, LabelCap

MAX_FEEDS = 64
"""Distinct ``feed`` label values; later feeds are counted as ``other``."""


class IndexMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        kw: dict[str, Any] = {"namespace": NAMESPACE, "registry": registry}
        self.indicators = Gauge("intel_indicators", "Indicators in the index in use", **kw)
        self.by_feed = Gauge(
            "intel_feed_indicators", "Indicators in the index in use, by feed", ["feed"], **kw
        )
        self.bytes = Gauge("intel_index_bytes", "Memory the index in use holds (arrays and tables)", **kw)
        self.updated = Gauge("intel_index_updated_timestamp_seconds", "When the index in use was built", **kw)
        self._feed = LabelCap(MAX_FEEDS)
        self._feeds: set[str] = set()

    def built(self, index: Any) -> None:
        """Record a freshly built (or swapped-in) ``IndicatorIndex``."""
        self.indicators.set(index.count)
        self.bytes.set(index.nbytes())
        counts: collections.Counter[str] = collections.Counter()
        for source, n in index.source_counts().items():
            counts[self._feed(source)] += n
        for feed in self._feeds - counts.keys():  # a feed that disappeared reads 0, not its old count
            self.by_feed.labels(feed).set(0)
        for feed, n in counts.items():
            self.by_feed.labels(feed).set(n)
        self._feeds |= counts.keys()
        self.updated.set_to_current_time()
