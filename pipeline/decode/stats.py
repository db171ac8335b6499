"""Plain counters of the decoder. No Prometheus here: the collector exports a :meth:`snapshot`.

Every counter is keyed by exporter first, and exporters are whatever source address a datagram
claims: the counters keep at most ``max_exporters`` apart and count later ones as ``other`` (and
the per-domain ones under domain ``other`` too), so a spoofed flood costs bounded memory.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

OTHER = "other"


class BoundedCounter(Counter):
    """A Counter that stops creating keys at ``limit``: a new key is folded (exporter -> ``other``,
    and for per-domain counters the domain too) into a bounded set of overflow keys."""

    def __init__(self, limit: int, fold_rest: bool = False) -> None:
        super().__init__()
        self.limit = limit
        self.fold_rest = fold_rest
        """Fold the labels after the exporter too (they are unbounded, like observation domains)."""

    def __setitem__(self, key: Any, value: int) -> None:
        if len(self) >= self.limit and key not in self:
            fold = self._fold(key)
            if fold != key:
                value += self.get(fold, 0) - self.get(key, 0)
                key = fold
        super().__setitem__(key, value)

    def _fold(self, key: Any) -> Any:
        if not isinstance(key, tuple):
            return OTHER
        return (OTHER, *((OTHER,) * (len(key) - 1) if self.fold_rest else key[1:]))


class DecoderStats:
    def __init__(self, max_exporters: int = 4096) -> None:
        n = max_exporters
        self.packets: Counter[tuple[str, int]] = BoundedCounter(n)  # (exporter, version)
        self.flows: Counter[str] = BoundedCounter(n)
        self.errors: Counter[tuple[str, str]] = BoundedCounter(n)  # (exporter, reason)
        self.rows_rejected: Counter[tuple[str, str]] = BoundedCounter(n)  # (exporter, reason)
        """Records decoded but not returned (no address...), or whose times were out of range."""
        self.template_misses: Counter[str] = BoundedCounter(n)
        self.pending_buffered: Counter[str] = BoundedCounter(n)
        self.pending_decoded: Counter[str] = BoundedCounter(n)
        self.pending_expired: Counter[str] = BoundedCounter(n)
        self.sequence_gaps: Counter[tuple[str, int]] = BoundedCounter(n, fold_rest=True)  # (exporter, domain)
        self.sequence_resets: Counter[tuple[str, int]] = BoundedCounter(n, fold_rest=True)
        self.templates_active: dict[str, int] = {}
        self.evictions: Counter[str] = Counter()
        """State dropped to stay within the global caps, by kind (templates, streams)."""

    def error(self, exporter: str, reason: str, n: int = 1) -> None:
        self.errors[(exporter, reason)] += n

    def snapshot(self) -> dict[str, dict[Any, int]]:
        return {
            "packets": dict(self.packets),
            "flows": dict(self.flows),
            "errors": dict(self.errors),
            "rows_rejected": dict(self.rows_rejected),
            "templates_active": dict(self.templates_active),
            "template_misses": dict(self.template_misses),
            "pending_buffered": dict(self.pending_buffered),
            "pending_decoded": dict(self.pending_decoded),
            "pending_expired": dict(self.pending_expired),
            "sequence_gaps": dict(self.sequence_gaps),
            "sequence_resets": dict(self.sequence_resets),
            "evictions": dict(self.evictions),
        }
