"""The matcher as a stage behind the collector's sink interface, so the embedded runtime runs the very
same collector and matcher code as the Kafka deployment, with an in-process hand-over between them."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pyarrow as pa
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily

from detectors.matcher import MatcherHandle, alerts_to_dicts
from pipeline.metrics import NAMESPACE
from pipeline.runtime.alerts import AlertOutput
from pipeline.sinks.base import SinkError

log = logging.getLogger(__name__)


_ISOLATION_TRIES = 64
"""Failed matcher calls spent isolating bad rows in one batch; past them, what still fails is dropped
whole (a failure that hits every row is not worth a call per row)."""


def match_rows(
    match: Callable[[pa.RecordBatch], pa.Table], batch: pa.RecordBatch | pa.Table
) -> tuple[list[dict[str, Any]], int, int]:
    """The alerts of ``batch`` as JSON-ready dicts, and how many flows and alerts were dropped. Rows
    that make matching fail (found by halving the batch, within a budget of tries) and alerts that
    cannot be converted (a time no calendar holds, say) are dropped and counted; every other row's
    alerts go on. Retrying such a batch would fail forever and block the stream behind it."""
    tries = [_ISOLATION_TRIES]
    try:
        return _match_part(match, batch, tries)
    finally:
        if tries[0] < _ISOLATION_TRIES:
            log.error(
                "matcher failed on part of a batch of %d flows; the failing rows were dropped", batch.num_rows
            )


def _match_part(match: Callable, batch: Any, tries: list[int]) -> tuple[list[dict[str, Any]], int, int]:
    try:
        table = match(batch)
    except Exception:
        if tries[0] == _ISOLATION_TRIES:
            log.exception("matcher failed on a batch of %d flows", batch.num_rows)
        tries[0] -= 1
        if batch.num_rows <= 1 or tries[0] <= 0:
            return [], batch.num_rows, 0
        half = batch.num_rows // 2
        first, bad_first, alerts_first = _match_part(match, batch.slice(0, half), tries)
        second, bad_second, alerts_second = _match_part(match, batch.slice(half), tries)
        return first + second, bad_first + bad_second, alerts_first + alerts_second
    try:
        return alerts_to_dicts(table), 0, 0
    except Exception:
        alerts, bad = [], 0
        for i in range(table.num_rows):
            try:
                alerts.extend(alerts_to_dicts(table.slice(i, 1)))
            except Exception as exc:
                bad += 1
                log.error("alert dropped, it cannot be written: %s", exc)
        return alerts, 0, bad


class MatchingSink:
    """Matches every flow batch it is given and writes the alerts to its outputs."""

    name = "matcher"

    def __init__(
        self, handle: MatcherHandle, outputs: Sequence[AlertOutput], registry: CollectorRegistry
    ) -> None:
        self.handle = handle
        self.outputs = list(outputs)
        self.alerts = 0
        self.dropped = {"flows": 0, "alerts": 0}
        """Rows dropped because they made matching or alert conversion fail (see :func:`match_rows`)."""
        registry.register(_MatcherMetrics(self))

    def write(self, batch: pa.RecordBatch) -> None:
        alerts, bad_flows, bad_alerts = match_rows(self.handle.match, batch)
        self.dropped["flows"] += bad_flows
        self.dropped["alerts"] += bad_alerts
        for output in self.outputs:
            try:
                output.write(alerts)
            except OSError as exc:
                raise SinkError(f"alert output: {exc}") from exc
        self.alerts += len(alerts)

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
