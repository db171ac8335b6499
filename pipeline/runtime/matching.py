"""The matcher as a stage behind the collector's sink interface, so the embedded runtime runs the very
same collector and matcher code as the Kafka deployment, with an in-process hand-over between them."""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

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


_ISOLATION_TRIES = 64
"""Failed matcher calls spent isolating bad rows in one batch; past them, what still fails is dropped
whole (a failure that hits every row is not worth a call per row)."""


def match_rows(
    match: Callable[[pa.RecordBatch], pa.Table],
    batch: pa.RecordBatch | pa.Table,
    convert: Callable[[pa.Table], list[dict[str, Any]]] = alerts_to_dicts,
) -> tuple[list[dict[str, Any]], int, int]:
    """The alerts of ``batch`` as JSON-ready dicts, and how many flows and alerts were dropped. Rows
    that make matching fail (found by halving the batch, within a budget of tries) and alerts that
    cannot be converted by ``convert`` (a time no calendar holds, say) are dropped and counted; every
    other row's alerts go on. Retrying such a batch would fail forever and block the stream behind it."""
    tries = [_ISOLATION_TRIES]
    try:
        return _match_part(match, batch, tries, convert)
    finally:
        if tries[0] < _ISOLATION_TRIES:
            log.error(
                "matcher failed on part of a batch of %d flows; the failing rows were dropped", batch.num_rows
            )


def _match_part(
    match: Callable, batch: Any, tries: list[int], convert: Callable
) -> tuple[list[dict[str, Any]], int, int]:
    try:
        table = match(batch)
    except Exception:
        if tries[0] == _ISOLATION_TRIES:
            log.exception("matcher failed on a batch of %d flows", batch.num_rows)
        tries[0] -= 1
        if batch.num_rows <= 1 or tries[0] <= 0:
            return [], batch.num_rows, 0
        half = batch.num_rows // 2
        first, bad_first, alerts_first = _match_part(match, batch.slice(0, half), tries, convert)
        second, bad_second, alerts_second = _match_part(match, batch.slice(half), tries, convert)
        return first + second, bad_first + bad_second, alerts_first + alerts_second
    try:
        return convert(table), 0, 0
    except Exception:
        alerts, bad = [], 0
        for i in range(table.num_rows):
            try:
                alerts.extend(convert(table.slice(i, 1)))
            except Exception as exc:
                bad += 1
                log.error("alert dropped, it cannot be written: %s", exc)
        return alerts, 0, bad


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
        self.dropped = {"flows": 0, "alerts": 0}
        """Rows dropped because they made matching or alert conversion fail (see :func:`match_rows`)."""
        registry.register(_MatcherMetrics(self))

    def write(self, batch: pa.RecordBatch | pa.Table) -> None:
        matcher = self.handle.matcher  # one index for the whole batch, even if intel swaps meanwhile
        partials: list[dict[str, Any]] = []

        def match(part: pa.RecordBatch) -> pa.Table:
            hits = matcher.find(part)
            table = matcher.alerts(part, hits)
            if self.partials is not None:  # only parts that match without error give evidence
                partials.extend(self.partials.of(part, hits, matcher.index))
            return table

        alerts, bad_flows, bad_alerts = match_rows(match, one_batch(batch))
        self.dropped["flows"] += bad_flows
        self.dropped["alerts"] += bad_alerts
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
        dropped = CounterMetricFamily(
            f"{NAMESPACE}_matcher_dropped_rows",
            "Flows or alerts dropped because they made matching or alert conversion fail",
            labels=["what"],
        )
        for what, count in self.sink.dropped.items():
            dropped.add_metric([what], count)
        yield dropped
