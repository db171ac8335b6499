"""Outcome of each intel source in ``shoal intel sync`` rounds, for the SOC's "is our intel fresh"."""

from __future__ import annotations

import re
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from pipeline.metrics import NAMESPACE

OUTCOMES = ("ok", "load_error", "publish_error")


def source_label(source: str) -> str:
    """The source as given, less any ``user:password@`` in a URL (labels end up on dashboards)."""
    return re.sub(r"(://)[^/@\s]*@", r"\1", source)


class SyncMetrics:
    """``source`` labels are the sources given on the command line (a fixed, operator-chosen set)."""

    def __init__(self, registry: CollectorRegistry, sources: list[str]) -> None:
        kw: dict[str, Any] = {"namespace": NAMESPACE, "registry": registry}
        self.rounds = Counter(
            "intel_sync_rounds", "Sync rounds per source, by outcome", ["source", "outcome"], **kw
        )
        self.indicators = Gauge("intel_sync_indicators", "Indicators the source yielded in its last good round",
                                ["source"], **kw)  # fmt: skip
        self.success = Gauge("intel_sync_last_success_timestamp_seconds",
                             "When the source was last loaded and published", ["source"], **kw)  # fmt: skip
        for source in sources:  # every outcome exists from the start, so rates and alerts see zeros
            for outcome in OUTCOMES:
                self.rounds.labels(source_label(source), outcome)

    def outcome(self, source: str, outcome: str, indicators: int | None = None) -> None:
        source = source_label(source)
        self.rounds.labels(source, outcome).inc()
        if outcome == "ok":
            self.success.labels(source).set_to_current_time()
            if indicators is not None:
                self.indicators.labels(source).set(indicators)
