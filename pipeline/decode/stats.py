"""Plain counters of the decoder. No Prometheus here: the collector exports a :meth:`snapshot`."""

from __future__ import annotations

from collections import Counter
from typing import Any


class DecoderStats:
    def __init__(self) -> None:
        self.packets: Counter[tuple[str, int]] = Counter()  # (exporter, version)
        self.flows: Counter[str] = Counter()
        self.errors: Counter[tuple[str, str]] = Counter()  # (exporter, reason)
        self.template_misses: Counter[str] = Counter()
        self.pending_buffered: Counter[str] = Counter()
        self.pending_decoded: Counter[str] = Counter()
        self.pending_expired: Counter[str] = Counter()
        self.sequence_gaps: Counter[tuple[str, int]] = Counter()  # (exporter, domain) -> lost units
        self.sequence_resets: Counter[tuple[str, int]] = Counter()
        self.templates_active: dict[str, int] = {}

    def error(self, exporter: str, reason: str, n: int = 1) -> None:
        self.errors[(exporter, reason)] += n

    def snapshot(self) -> dict[str, dict[Any, int]]:
        return {
            "packets": dict(self.packets),
            "flows": dict(self.flows),
            "errors": dict(self.errors),
            "templates_active": dict(self.templates_active),
            "template_misses": dict(self.template_misses),
            "pending_buffered": dict(self.pending_buffered),
            "pending_decoded": dict(self.pending_decoded),
            "pending_expired": dict(self.pending_expired),
            "sequence_gaps": dict(self.sequence_gaps),
            "sequence_resets": dict(self.sequence_resets),
        }
