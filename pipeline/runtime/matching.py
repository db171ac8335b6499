"""The matcher as a stage behind the collector's sink interface, so the embedded runtime runs the very
same collector and matcher code as the Kafka deployment, with an in-process hand-over between them."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import pyarrow as pa
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily

from detectors.matcher import MatcherHandle, alerts_to_dicts, one_batch
from pipeline.metrics import NAMESPACE
from pipeline.runtime.alerts import AlertOutput
from pipeline.sinks.base import SinkError

if TYPE_CHECKING:
    from pipeline.confirm.stage import PartialsStage

log = logging.getLogger(__name__)


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
    ) -> None:
        self.handle = handle
        self.outputs = list(outputs)
        self.partials = partials
        self.alerts = 0
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
