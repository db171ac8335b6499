"""Delivery: per destination, shares from the detections topic, the policy applied, sent with a rate
limit and retried with backoff, input offsets committed only past what is settled.

Each destination reads the detections topic in a consumer group of its own (``<group>.<destination>``),
so a destination that is down holds back only its own offsets: the others go on, and when it comes back
it resumes from its committed offsets, re-sending by id (idempotent) what it had not confirmed.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from pipeline.metrics import NAMESPACE
from pipeline.share.aggregate import Aggregator
from pipeline.share.build import ShareBuilder
from pipeline.share.decide import check
from pipeline.share.destinations.base import DeliveryError, Destination, Share
from pipeline.share.guard import ConstituencyGuard
from pipeline.share.policy import DestinationConfig, SharingPolicy

log = logging.getLogger("shoal.share")
MAX_BACKOFF = 60.0
MAX_PENDING = 20_000
"""Shares waiting for one destination before its input is paused (updates of one id coalesce)."""


class ShareMetrics:
    """Per destination; every label value comes from the policy (destinations) or a fixed list."""

    def __init__(self, registry: CollectorRegistry) -> None:
        kw: dict[str, Any] = {"namespace": NAMESPACE, "registry": registry}
        self.sent = Counter("share_sent", "Shares delivered (a sighting, a new indicator with its sighting, a "
                            "false positive), by destination and kind", ["destination", "kind"], **kw)  # fmt: skip
        self.objects = Counter("share_objects_sent", "STIX objects (or MISP items) delivered, by destination",
                               ["destination"], **kw)  # fmt: skip
        self.refused = Counter("share_refused", "Shares the sharing policy refused, by destination and reason",
                               ["destination", "reason"], **kw)  # fmt: skip
        self.failed = Counter("share_failed", "Shares a delivery attempt failed for (retried with backoff)",
                              ["destination"], **kw)  # fmt: skip
        self.retries = Counter("share_retries", "Delivery attempts after a failure", ["destination"], **kw)
        self.pending = Gauge("share_pending", "Shares waiting to be sent", ["destination"], **kw)
        self.queue_age = Gauge("share_queue_age_seconds", "Age of the oldest share waiting to be sent",
                               ["destination"], **kw)  # fmt: skip
        self.inputs = Counter("share_detections", "Detection messages read, by destination and outcome (used, "
                              "bad, stale: an older version, too_old: window beyond retention, unshareable: "
                              "an indicator without a STIX id)", ["destination", "outcome"], **kw)  # fmt: skip
        self.up = Gauge(
            "share_destination_up", "1 when the last delivery attempt succeeded", ["destination"], **kw
        )


@dataclass
class Outbox:
    """One destination's waiting shares (the latest version of each id), rate limit and backoff."""

    config: DestinationConfig
    destination: Destination
    guard: ConstituencyGuard
    metrics: ShareMetrics | None = None
    clock: Callable[[], float] = time.monotonic
    pending: dict[str, Share] = field(default_factory=dict)
    since: dict[str, float] = field(default_factory=dict)
    refusals: list[tuple[Share, str, list[str]]] = field(default_factory=list)
    _tokens: float = 0.0
    _last: float = 0.0
    _backoff: float = 0.0
    _retry_at: float = 0.0
    _failing: bool = False

    def __post_init__(self) -> None:
        self._tokens = float(self.config.batch)
        self._last = self.clock()

    def offer(self, share: Share) -> None:
        self.pending[share.id] = share
        self.since.setdefault(share.id, self.clock())

    def _allowance(self, now: float) -> int:
        if not self.config.rate_per_minute:
            return self.config.batch
        rate = self.config.rate_per_minute / 60.0
        self._tokens = min(float(self.config.batch), self._tokens + (now - self._last) * rate)
        self._last = now
        return int(self._tokens)

    def step(self) -> list[Share]:
        """Decide and send one batch if due; returns the shares settled (sent, or refused for good)."""
        now = self.clock()
        if not self.pending or now < self._retry_at:
            self._gauges(now)
            return []
        allowance = self._allowance(now)
        if allowance < 1:
            self._gauges(now)
            return []
        settled: list[Share] = []
        batch: list[Share] = []
        for sid in list(self.pending)[: max(allowance, 1) * 4]:
            share = self.pending[sid]
            reason, found = check(share, self.config, self.destination.payload(share), self.guard)
            if reason is not None:
                self._refuse(share, reason, found)
                settled.append(share)
                continue
            batch.append(share)
            if len(batch) >= allowance:
                break
        if batch:
            settled += self._send(batch, now)
        self._gauges(self.clock())
        return settled

    def _refuse(self, share: Share, reason: str, found: list[str]) -> None:
        del self.pending[share.id]
        self.since.pop(share.id, None)
        self.refusals.append((share, reason, found))
        del self.refusals[:-1000]
        if self.metrics:
            self.metrics.refused.labels(self.config.name, reason).inc()
        # Never the constituent addresses themselves in the log: how many, not which.
        log.info("%s: refused %s %s (%s%s)", self.config.name, share.kind, share.id, reason,
                 f", {len(found)} constituent address(es)" if found else "")  # fmt: skip

    def _send(self, batch: list[Share], now: float) -> list[Share]:
        name = self.config.name
        if self._failing and self.metrics:
            self.metrics.retries.labels(name).inc()
        try:
            self.destination.send(batch)
        except DeliveryError as exc:
            failed = {s.id for s in batch} if exc.failed is None else exc.failed & {s.id for s in batch}
            self._backoff = min(MAX_BACKOFF, max(0.5, self._backoff * 2))
            self._retry_at = now + self._backoff
            if not self._failing:
                log.warning("%s: delivery failed (%s); retrying with backoff", name, exc)
            self._failing = True
            if self.metrics:
                self.metrics.failed.labels(name).inc(len(failed))
                self.metrics.up.labels(name).set(0)
            done = [s for s in batch if s.id not in failed]
        else:
            if self._failing:
                log.warning("%s: delivering again", name)
            self._failing, self._backoff = False, 0.0
            if self.metrics:
                self.metrics.up.labels(name).set(1)
            done = batch
        if self.config.rate_per_minute:
            self._tokens = max(0.0, self._tokens - len(batch))
        for share in done:
            # A newer version may have arrived while this one was in flight: keep that one waiting.
            if self.pending.get(share.id) is share:
                del self.pending[share.id]
                self.since.pop(share.id, None)
            if self.metrics:
                self.metrics.sent.labels(name, share.kind).inc()
                self.metrics.objects.labels(name).inc(len(share.objects))
        return done

    def _gauges(self, now: float) -> None:
        if self.metrics:
            self.metrics.pending.labels(self.config.name).set(len(self.pending))
            oldest = min(self.since.values(), default=now)
            self.metrics.queue_age.labels(self.config.name).set(max(0.0, now - oldest))


def dry_run(
    policy: SharingPolicy,
    detections: Iterable[dict[str, Any]],
    destinations: Iterable[Destination] | None = None,
) -> tuple[list[Share], dict[str, Outbox]]:
    """What a set of detections would share where, without sending: (every share, outbox per
    destination with its refusals); an outbox's ``pending`` holds what would go."""
    builder = ShareBuilder(policy)
    aggregator = Aggregator(builder, retention_seconds=float("inf"))
    guard = ConstituencyGuard(policy.constituency_set())
    by_name = {d.name: d for d in destinations or ()}
    outboxes = {
        c.name: Outbox(c, by_name.get(c.name) or _Offline(c.name), guard) for c in policy.destinations
    }
    shares: dict[str, Share] = {}
    for offset, detection in enumerate(detections):
        for share in aggregator.add(detection, 0, offset):
            shares[share.id] = share
    for outbox in outboxes.values():
        for share in shares.values():
            reason, found = check(share, outbox.config, outbox.destination.payload(share), guard)
            if reason is None:
                outbox.offer(share)
            else:
                outbox.refusals.append((share, reason, found))
    return list(shares.values()), outboxes


class _Offline:
    """A destination for dry runs: the STIX JSON payload, nothing sent."""

    def __init__(self, name: str) -> None:
        self.name = name

    def payload(self, share: Share) -> str:
        return json.dumps(share.objects, sort_keys=True)

    def send(self, shares: Any) -> None:
        raise DeliveryError("dry run")

    def close(self) -> None:
        pass
