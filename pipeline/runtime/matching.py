"""The matcher as a stage behind the collector's sink interface, so the embedded runtime runs the very
same collector and matcher code as the Kafka deployment, with an in-process hand-over between them."""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily

from detectors.matcher import MatcherHandle, alerts_to_dicts, one_batch
from pipeline.metrics import NAMESPACE, LabelCap, tlp_label
from pipeline.runtime.alerts import AlertOutput
from pipeline.sinks.base import SinkError

if TYPE_CHECKING:
    from pipeline.confirm.stage import PartialsStage

log = logging.getLogger(__name__)
MAX_FEEDS = 64
"""Distinct ``feed`` label values on the alert metrics; later feeds are counted as ``other``."""
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)


class MatchingSink:
    """Matches every flow batch it is given, writes the alerts to its outputs and, with a partials
    stage, hands the batch's pre-aggregated evidence to the confirmation stage."""

    name = "matcher"

    def __init__(
        self,
        handle: MatcherHandle,
        outputs: Sequence[AlertOutput],
        registry: CollectorRegistry,
        partials: PartialsStage | None = None,
        observe_latency: bool = True,
    ) -> None:
        """``observe_latency``: the batch's alerts are final once written (embedded runtime); a Kafka
        worker passes False and calls :meth:`observe_latency` after its transaction commits."""
        self.handle = handle
        self.outputs = list(outputs)
        self.partials = partials
        self.alerts = 0
        self._observe_on_write = observe_latency
        self._feed = LabelCap(MAX_FEEDS)
        kw = {"namespace": NAMESPACE, "registry": registry}
        self.alerts_by_feed = Counter(
            "alerts", "Alerts written, by intel feed and TLP level", ["feed", "tlp"], **kw
        )  # fmt: skip
        self.latency = Histogram(
            "pipeline_latency_seconds",
            "From a batch's oldest flow arriving at the collector to the batch's alerts being written "
            "(embedded) or committed (Kafka workers)",
            buckets=LATENCY_BUCKETS, **kw,
        )  # fmt: skip
        registry.register(_MatcherMetrics(self))

    def write(self, batch: pa.RecordBatch | pa.Table) -> None:
        try:
            matcher = self.handle.matcher  # one index for the whole batch, even if intel swaps meanwhile
            flows = one_batch(batch)
            hits = matcher.find(flows)
            alerts = alerts_to_dicts(matcher.alerts(flows, hits))
            partials = self.partials.of(flows, hits, matcher.index) if self.partials is not None else []
        except Exception as exc:  # a matcher bug must not lose the collector: the batch is retried, counted
            log.exception("matcher failed on a batch of %d flows", batch.num_rows)
            raise SinkError(f"matcher: {exc}") from exc
        for output in self.outputs:
            try:
                output.write(alerts)
            except OSError as exc:
                raise SinkError(f"alert output: {exc}") from exc
        if self.partials is not None:
            self.partials.write(partials)
        self.alerts += len(alerts)
        # One metric update per (feed, TLP) of the batch, not per alert: a hit storm stays cheap.
        for (feed, tlp), n in collections.Counter((a.get("source"), a.get("tlp")) for a in alerts).items():
            self.alerts_by_feed.labels(self._feed(feed), tlp_label(tlp)).inc(n)
        if self._observe_on_write:
            self.observe_latency(batch)

    def observe_latency(self, batch: pa.RecordBatch | pa.Table) -> None:
        """Age of the batch's oldest flow (``time_received``, µs since the epoch) now."""
        if batch.num_rows == 0:
            return
        oldest = pc.min(batch.column("time_received").cast(pa.int64())).as_py()
        if oldest is not None:
            self.latency.observe(max(0.0, time.time() - oldest / 1e6))

    def flush(self) -> None:
        pass

    def close(self) -> None:
        for output in self.outputs:
            output.close()


class _MatcherMetrics:
    """Exports the matcher's plain counters at scrape time."""

    def __init__(self, sink: MatchingSink) -> None:
        self.sink = sink

    def describe(self) -> list:
        return []

    def collect(self) -> Iterator[CounterMetricFamily]:
        stats = self.sink.handle.matcher.stats
        flows = CounterMetricFamily(f"{NAMESPACE}_matcher_flows", "Flows matched against intel")
        flows.add_metric([], stats.flows)
        yield flows
        hits = CounterMetricFamily(
            f"{NAMESPACE}_matcher_alerts", "Alerts raised, by intel source", labels=["source"]
        )
        for source, count in stats.hits.items():
            hits.add_metric([source], count)
        yield hits
        suppressed = CounterMetricFamily(
            f"{NAMESPACE}_matcher_suppressed", "Hits suppressed by allowlists, by list", labels=["allowlist"]
        )
        for name, count in stats.suppressed.items():
            suppressed.add_metric([name], count)
        yield suppressed
        inactive = CounterMetricFamily(
            f"{NAMESPACE}_matcher_inactive_hits",
            "Hits on indicators not valid at the flow's time (expired, not yet valid)",
        )
        inactive.add_metric([], stats.inactive)
        yield inactive
