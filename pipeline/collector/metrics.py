"""Prometheus view of the collector: per listener and per exporter, with bounded label sets.

The hot path only bumps plain integers; this module turns them, the decoder's ``stats.snapshot()``
and the kernel's ``/proc/net/udp*`` drop counters into metric families at scrape time (metrics wrap
a stage instead of living inside it). Every label is capped: the first ``max_exporters`` exporters
seen keep their own series, every later one is folded into ``exporter="other"``, and each other label
(observation domain, reason...) keeps at most ``max_label_values`` values per metric, so a spoofing
flood (10k observation domains, say) cannot explode the time-series count.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector as _PromCollector

from pipeline.collector.kernel import socket_drops
from pipeline.metrics import NAMESPACE

OTHER = "other"

# Decoder snapshot key -> (metric suffix, kind, label names after the exporter label, help).
# Keys the table does not know are still exported (generic labels) so nothing counted goes unseen.
DECODER_METRICS: dict[str, tuple[str, str, tuple[str, ...], str]] = {
    "packets": ("decoder_packets", "counter", ("version",), "Export packets decoded, by version"),
    "flows": ("decoder_flows", "counter", (), "Flow records decoded"),
    "errors": ("decoder_errors", "counter", ("reason",), "Packets or sets rejected, by reason"),
    "templates_active": ("decoder_templates_active", "gauge", (), "Templates currently known"),
    "template_misses": (
        "decoder_template_misses",
        "counter",
        (),
        "Data sets that arrived before their template",
    ),
    "pending_buffered": (
        "decoder_pending_sets_buffered",
        "counter",
        (),
        "Data sets buffered waiting for their template",
    ),
    "pending_expired": (
        "decoder_pending_sets_expired",
        "counter",
        (),
        "Buffered data sets dropped because no template came in time (or limits were hit)",
    ),
    "sequence_gaps": (
        "decoder_sequence_gaps",
        "counter",
        ("domain",),
        "Export packets (v9) or records (IPFIX) lost according to sequence numbers",
    ),
    "sequence_resets": (
        "decoder_sequence_resets",
        "counter",
        ("domain",),
        "Sequence number restarts (exporter reboot or reorder)",
    ),
    "rows_rejected": (
        "decoder_rows_rejected",
        "counter",
        ("reason",),
        "Records rejected (no address, option values out of range) or whose times were out of range (null)",
    ),
    "evictions": (
        "decoder_evictions",
        "counter",
        ("state",),
        "Templates or per-stream state dropped to stay within the decoder's global caps",
    ),
}
NOT_PER_EXPORTER = frozenset({"evictions"})
"""Snapshot keys whose first label is not an exporter."""


class CappedLabels:
    """First ``limit`` values of a label keep their name; later ones become ``other``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._known: set[str] = set()

    def __call__(self, exporter: Any) -> str:
        name = str(exporter)
        if name in self._known:
            return name
        if len(self._known) < self.limit:
            self._known.add(name)
            return name
        return OTHER


ExporterLabels = CappedLabels


class CollectorMetrics(_PromCollector):
    """Registered once per collector in the given registry."""

    def __init__(
        self, registry: CollectorRegistry, max_exporters: int = 64, max_label_values: int = 256
    ) -> None:
        self.exporter_label = CappedLabels(max_exporters)
        self.max_label_values = max_label_values
        self._other_labels: dict[tuple[str, int], CappedLabels] = {}
        """(snapshot key, label position) -> its cap, for every label after the exporter."""
        self._lock = threading.Lock()
        self._rejected: collections.Counter[str] = collections.Counter()
        self._flows: collections.Counter[str] = collections.Counter()
        self._decode_seconds: collections.Counter[str] = collections.Counter()
        self._decoder_crashes: collections.Counter[str] = collections.Counter()
        self._batches = 0
        self._rows_out = 0
        self._sockets: list = []
        self._decoder = None
        self._batcher = None
        self._snapshot: Mapping[str, Mapping[Any, float]] = {}
        self.batch_latency = Histogram(
            "collector_batch_latency_seconds",
            "Age of a batch's oldest flow when the batch was handed to the sinks",
            namespace=NAMESPACE,
            registry=registry,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 1.5, 2, 3, 5, 10, 30),
        )
        registry.register(self)

    # -- wiring and hot-path counting ----------------------------------------------------------
    def attach(self, sockets: list, sinks: list, decoder: Any, batcher: Any) -> None:
        self._sockets, self._decoder, self._batcher = sockets, decoder, batcher
        del sinks  # sinks export their own metrics (pipeline.sinks.buffered.SinkMetrics)

    @staticmethod
    def listener(sock: Any) -> str:
        return sock.label

    def rejected(self, sock: Any, n: int) -> None:
        with self._lock:
            self._rejected[self.listener(sock)] += n

    def decoded(self, sock: Any, rows: int, seconds: float) -> None:
        lst = self.listener(sock)
        with self._lock:
            self._flows[lst] += rows
            self._decode_seconds[lst] += seconds

    def decoder_crash(self, sock: Any, n: int) -> None:
        with self._lock:
            self._decoder_crashes[self.listener(sock)] += n

    def batch_written(self, batch: Any, latency: float) -> None:
        self.batch_latency.observe(latency)
        with self._lock:
            self._batches += 1
            self._rows_out += batch.num_rows

    def total_flows(self) -> int:
        with self._lock:
            return sum(self._flows.values())

    def total_rejected(self) -> int:
        with self._lock:
            return sum(self._rejected.values())

    def refresh(self) -> None:
        """Take the decoder's snapshot (called from the decoding thread, so it is consistent)."""
        if self._decoder is not None:
            self._snapshot = self._decoder.stats.snapshot()

    # -- scrape ---------------------------------------------------------------------------------
    def describe(self) -> Iterator:
        return iter(())

    def collect(self) -> Iterator:
        ns = NAMESPACE
        with self._lock:
            rejected, flows = dict(self._rejected), dict(self._flows)
            seconds, crashes = dict(self._decode_seconds), dict(self._decoder_crashes)
            batches, rows_out = self._batches, self._rows_out

        socks = list(self._sockets)
        fam = CounterMetricFamily(
            f"{ns}_collector_packets_received",
            "UDP datagrams received (allowlist not yet applied), by listener and exporter",
            labels=["listener", "exporter"],
        )
        for s in socks:
            # The receiver bounds its own exporter set; fold again so the total stays bounded too.
            folded: collections.Counter[str] = collections.Counter()
            for exp, n in list(s.exporter_packets.items()):
                folded[exp if exp == OTHER else self.exporter_label(exp)] += n
            for exp, n in folded.items():
                fam.add_metric([s.label, exp], n)
        yield fam

        per_listener = [
            ("collector_packets_rejected", "Datagrams from exporters outside the allowlist", rejected),
            ("collector_flows_decoded", "Flow records decoded", flows),
            ("collector_decode_seconds", "Time spent decoding", seconds),
            ("collector_decoder_failures", "Datagrams lost because the decoder raised", crashes),
        ]
        for name, doc, data in per_listener:
            fam = CounterMetricFamily(f"{ns}_{name}", doc, labels=["listener"])
            for lst, n in data.items():
                fam.add_metric([lst], n)
            yield fam

        drops = socket_drops(s.inode for s in socks)
        families = {
            "bytes": CounterMetricFamily(
                f"{ns}_collector_bytes_received", "UDP payload bytes received", labels=["listener"]
            ),
            "truncated": CounterMetricFamily(
                f"{ns}_collector_packets_truncated",
                "Datagrams larger than receive.max_datagram (not decoded)",
                labels=["listener"],
            ),
            "errors": CounterMetricFamily(
                f"{ns}_collector_receive_errors", "recvmmsg failures", labels=["listener"]
            ),
            "drops": CounterMetricFamily(
                f"{ns}_collector_kernel_drops",
                "Datagrams the kernel dropped because the socket receive queue was full",
                labels=["listener"],
            ),
            "rcvbuf": GaugeMetricFamily(
                f"{ns}_collector_socket_receive_buffer_bytes",
                "SO_RCVBUF granted by the kernel",
                labels=["listener"],
            ),
        }
        for s in socks:
            lst = [self.listener(s)]
            families["bytes"].add_metric(lst, s.stats.bytes)
            families["truncated"].add_metric(lst, s.stats.truncated)
            families["errors"].add_metric(lst, s.stats.errors)
            families["drops"].add_metric(lst, drops.get(s.inode, 0))
            families["rcvbuf"].add_metric(lst, s.rcvbuf)
        yield from families.values()

        fam = CounterMetricFamily(f"{ns}_collector_batches", "Batches handed to the sinks")
        fam.add_metric([], batches)
        yield fam
        fam = CounterMetricFamily(f"{ns}_collector_rows", "Flow rows handed to the sinks")
        fam.add_metric([], rows_out)
        yield fam
        fam = GaugeMetricFamily(f"{ns}_collector_pending_rows", "Decoded rows waiting to form a batch")
        fam.add_metric([], self._batcher.rows if self._batcher is not None else 0)
        yield fam

        yield from self._decoder_families(self._snapshot)

    def _decoder_families(self, snapshot: Mapping[str, Any]) -> Iterator:
        for key, raw in snapshot.items():
            values = raw if isinstance(raw, Mapping) else {(): raw}
            suffix, kind, extra, doc = DECODER_METRICS.get(
                key, (f"decoder_{key}", "counter", (), f"Decoder counter {key}")
            )
            folded: collections.Counter[tuple[str, ...]] = collections.Counter()
            width = 0
            per_exporter = key not in NOT_PER_EXPORTER
            for key_labels, value in values.items():
                labels = key_labels if isinstance(key_labels, tuple) else (key_labels,)
                width = max(width, len(labels))
                if labels:
                    first = 1 if per_exporter else 0
                    head = (self.exporter_label(labels[0]),) if per_exporter else ()
                    labels = (*head, *(self._capped(key, i, v) for i, v in enumerate(labels[first:], first)))
                folded[labels] += value
            names = ["exporter", *extra][:width] if per_exporter and width else list(extra)[:width]
            names += [f"label{i}" for i in range(len(names), width)]
            cls = GaugeMetricFamily if kind == "gauge" else CounterMetricFamily
            fam = cls(f"{NAMESPACE}_{suffix}", doc, labels=names)
            for labels, value in folded.items():
                fam.add_metric(list(labels) + [""] * (width - len(labels)), value)
            yield fam

    def _capped(self, key: str, position: int, value: Any) -> str:
        cap = self._other_labels.get((key, position))
        if cap is None:
            cap = self._other_labels[(key, position)] = CappedLabels(self.max_label_values)
        return cap(value)
