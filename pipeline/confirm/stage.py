"""The matcher side of confirmation: each batch's evidence as partial aggregates, handed to an output
(the worker's Kafka transaction, or the in-process confirmer of ``shoal run``)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import pyarrow as pa
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily

from detectors.constituency import Constituency
from detectors.index import IndicatorIndex
from detectors.matcher import Hits
from detectors.partials import indicator_partials
from detectors.scans import ScanStats, scan_partials
from pipeline.confirm.engine import Confirmer
from pipeline.confirm.settings import DetectionSettings
from pipeline.metrics import NAMESPACE, LabelCap, tlp_label
from pipeline.runtime.alerts import AlertOutput
from pipeline.runtime.matching import MAX_FEEDS

log = logging.getLogger(__name__)


class PartialOutput(Protocol):
    def write(self, partials: list[dict[str, Any]]) -> None: ...


class PartialsStage:
    def __init__(
        self, settings: DetectionSettings, output: PartialOutput, registry: CollectorRegistry
    ) -> None:
        self.settings = settings
        self.window = settings.detections.window_seconds
        self.constituency = Constituency.from_config(settings.constituency)
        self.scans = settings.scan.enabled and bool(self.constituency)
        if settings.scan.enabled and not self.constituency:
            log.info("scan detection is off: no constituency configured (the [constituency] section)")
        self.output = output
        self.scan_stats = ScanStats()
        self.count = Counter(f"{NAMESPACE}_partials", "Partial aggregates sent to confirmation, by kind",
                             ["kind"], registry=registry)  # fmt: skip
        registry.register(_ScanMetrics(self.scan_stats))

    def of(self, batch: pa.RecordBatch, hits: Hits, index: IndicatorIndex) -> list[dict[str, Any]]:
        partials = indicator_partials(batch, hits, index, self.window)
        if self.scans:
            scan = self.settings.scan
            partials += scan_partials(batch, self.constituency, self.window, scan.tlp, scan.max_groups_per_batch,
                                      self.scan_stats)  # fmt: skip
        return partials

    def write(self, partials: list[dict[str, Any]]) -> None:
        if not partials:
            return
        self.output.write(partials)
        scans = sum(p["kind"] == "scan" for p in partials)
        self.count.labels("scan").inc(scans)
        self.count.labels("indicator").inc(len(partials) - scans)


class DetectionMetrics:
    """What both confirmation runtimes export: detection versions by kind, state, feed and TLP (feeds
    capped like the alert metrics), and the groups held."""

    def __init__(self, registry: CollectorRegistry, open_groups: Callable[[], int]) -> None:
        self._feed = LabelCap(MAX_FEEDS)
        self.versions = Counter(f"{NAMESPACE}_detections", "Detection versions emitted, by kind, state, first "
                                "source feed (scans: this network) and TLP", ["kind", "state", "feed", "tlp"],
                                registry=registry)  # fmt: skip
        gauge = Gauge(f"{NAMESPACE}_confirm_open_groups", "Detection groups held: open windows and closed ones' "
                      "markers", registry=registry)  # fmt: skip
        gauge.set_function(open_groups)

    def emitted(self, detections: list[dict[str, Any]]) -> None:
        for d in detections:
            feed = self._feed(d["sources"][0] if d["sources"] else "none")
            self.versions.labels(d["kind"], d["state"], feed, tlp_label(d["tlp"])).inc()


class InProcessConfirmation:
    """``shoal run``'s confirmation: partials merged at once, detections written to outputs, a timer
    emitting what became due and closing windows."""

    def __init__(
        self,
        settings: DetectionSettings,
        outputs: Sequence[AlertOutput],
        registry: CollectorRegistry,
        tick_seconds: float = 1.0,
    ) -> None:
        self.confirmer = Confirmer(settings.detections)
        self.outputs = list(outputs)
        self.tick_seconds = tick_seconds
        self.lock = threading.Lock()
        self.latest: dict[str, dict[str, Any]] = {}
        """The latest version of every detection emitted (what the detections topic would hold)."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="confirm-timer", daemon=True)
        self.metrics = DetectionMetrics(registry, lambda: len(self.confirmer.groups))

    def start(self) -> None:
        self._thread.start()

    def write(self, partials: list[dict[str, Any]]) -> None:
        with self.lock:
            emit = [d for p in partials for d in self.confirmer.add(p)]
        self._emit(emit)

    def _run(self) -> None:
        while not self._stop.wait(self.tick_seconds):
            with self.lock:
                emit = self.confirmer.tick()
            self._emit(emit)

    def _emit(self, detections: list[dict[str, Any]]) -> None:
        if not detections:
            return
        self.metrics.emitted(detections)
        for d in detections:
            self.latest[d["id"]] = d
        for output in self.outputs:
            try:
                output.write(detections)
            except OSError:
                log.exception("detection output failed")

    def stop(self) -> None:
        """Close every open window (final versions) and stop the timer."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        with self.lock:
            emit = self.confirmer.close_all()
        self._emit(emit)
        for output in self.outputs:
            output.close()


class _ScanMetrics:
    """The scan detector's counters, read at scrape time."""

    def __init__(self, stats: ScanStats) -> None:
        self.stats = stats

    def describe(self) -> list:
        return []

    def collect(self) -> Iterator[CounterMetricFamily]:
        s = self.stats
        for name, value, doc in (
            ("scan_probe_flows", s.probe_flows, "Inbound probe flows (outside to inside, unanswered-looking)"),
            ("scan_partials", s.partials, "Scan partials produced"),
            ("scan_groups_dropped", s.groups_dropped,
             "Probing groups beyond scan.max_groups_per_batch in a batch (fewest targets dropped first)"),
            ("scan_untimed_flows", s.untimed_flows, "Flows without any time: no window, not counted"),
        ):  # fmt: skip
            family = CounterMetricFamily(f"{NAMESPACE}_{name}", doc)
            family.add_metric([], value)
            yield family
