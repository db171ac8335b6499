"""Data sets that arrive before their template, held until it comes (goflow2 #330: dropping them
loses a router's first minutes after every collector restart).

Bounded per exporter and in all (sets and bytes), and by age (``pending_ttl_seconds``): data from
spoofed sources whose template never comes costs bounded memory, and is counted when refused or
expired.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from pipeline.decode.datagram import DecoderConfig
from pipeline.decode.stats import DecoderStats
from pipeline.decode.streams import TemplateKey

PendingKey = tuple[TemplateKey, int]
"""template key, template id"""


@dataclass
class Pending:
    data: bytes
    ctx: tuple
    """The packet context as the per-packet walk builds it (see :mod:`pipeline.decode.v9_ipfix`)."""
    received: float


class PendingBuffer:
    def __init__(self, config: DecoderConfig, stats: DecoderStats) -> None:
        self.config = config
        self.stats = stats
        self.queues: dict[PendingKey, deque[Pending]] = {}
        self.load: dict[str, list[int]] = {}
        """exporter -> [sets, bytes]; only while > 0."""
        self.bytes = 0
        self.sets = 0

    def add(self, tkey: TemplateKey, set_id: int, data: bytes, ctx: tuple, received: float) -> None:
        """Hold one data set for an unknown template, unless a limit refuses it (counted)."""
        exporter = tkey[0]
        self.stats.template_misses[exporter] += 1
        load = self.load.get(exporter, (0, 0))
        cfg = self.config
        if (
            load[0] >= cfg.pending_max_sets_per_exporter
            or load[1] + len(data) > cfg.pending_max_bytes_per_exporter
            or self.bytes + len(data) > cfg.pending_max_bytes
            or self.sets >= cfg.pending_max_sets
        ):
            self.stats.error(exporter, "pending_limit")
            self.stats.pending_expired[exporter] += 1
            return
        self.queues.setdefault((tkey, set_id), deque()).append(Pending(data, ctx, received))
        self._account(exporter, 1, len(data))
        self.stats.pending_buffered[exporter] += 1

    def take(self, tkey: TemplateKey, template_id: int) -> deque[Pending] | None:
        """The sets waiting for a template that just arrived, in arrival order (the caller decodes
        them and counts them as ``pending_decoded``)."""
        queue = self.queues.pop((tkey, template_id), None)
        if queue:
            self._account(tkey[0], -len(queue), -sum(len(item.data) for item in queue))
        return queue

    def waiting(self, tkey: TemplateKey, template_ids: list[int]) -> bool:
        """Whether data waits for any of these templates."""
        return bool(self.queues) and any((tkey, tid) in self.queues for tid in template_ids)

    def expire(self, now: float) -> None:
        """Drop sets older than ``pending_ttl_seconds`` (counted)."""
        for pkey, queue in list(self.queues.items()):
            while queue and now - queue[0].received > self.config.pending_ttl_seconds:
                item = queue.popleft()
                self._account(pkey[0][0], -1, -len(item.data))
                self.stats.pending_expired[pkey[0][0]] += 1
            if not queue:
                del self.queues[pkey]

    def _account(self, exporter: str, sets: int, size: int) -> None:
        """Add to an exporter's load (and the global one); an exporter whose load falls to zero
        leaves the table, so spoofed sources leave nothing behind."""
        load = self.load.get(exporter)
        if load is None:
            load = self.load[exporter] = [0, 0]
        load[0] += sets
        load[1] += size
        self.bytes += size
        self.sets += sets
        if load[0] <= 0:
            del self.load[exporter]
