"""Detections (the latest version of each id) grouped per what is shared and window, the shares each
group yields, and which input offsets are safe to commit.

Why the whole detections topic is read at start: a sighting sums every host's detection of its
indicator and window, and those detections may sit on both sides of the committed offset. The
sharer therefore rebuilds its groups from the (compacted, 30-day) topic, treats what lies before the
committed offset as delivered (``replay=True``: nothing is sent for it) and sends what any later
message changed, in full. At least once, never a partial count under an old version.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from pipeline.share.build import ShareBuilder, stix_moment, stix_time
from pipeline.share.destinations.base import Share


def _epoch(text: str) -> float:
    return stix_moment(text).timestamp()


def _unstamped(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k != "modified"}


def _content(share: Share) -> tuple[dict[str, Any], ...]:
    """A share's objects without their version stamps."""
    return tuple(_unstamped(o) for o in share.objects)


def _later_than(old: Share | None, share: Share) -> Share:
    """``share`` as a version later than ``old``. Its time is its detections' latest update, which
    does not move when an older detection arrives late (another partition, a replay): partners take
    (id, modified) as the version (TAXII servers keep one object per pair, MISP the newer timestamp),
    so the same stamp with a new count would be dropped as a duplicate. Changed objects are stamped
    a millisecond after the old version, unchanged ones kept as partners hold them."""
    if old is None or share.modified > old.modified:
        return share
    modified = stix_time(stix_moment(old.modified) + timedelta(milliseconds=1))
    before = {o["id"]: o for o in old.objects}

    def restamped(obj: dict[str, Any]) -> dict[str, Any]:
        held = before.get(obj["id"])
        if held is not None and _unstamped(held) == _unstamped(obj):
            return held
        return {**obj, "modified": modified} if "modified" in obj else obj

    objects = tuple(restamped(o) for o in share.objects)
    return Share(**{**share.__dict__, "modified": modified, "objects": objects})


@dataclass
class _Group:
    window_end: float
    detections: dict[str, dict[str, Any]] = field(default_factory=dict)
    shares: dict[str, Share] = field(default_factory=dict)
    unsettled: dict[str, str] = field(default_factory=dict)
    """Share id -> the version not yet sent (or refused)."""
    offsets: dict[int, int] = field(default_factory=dict)
    """Partition -> the earliest offset whose change is not settled yet."""


@dataclass
class AggregatorStats:
    detections: int = 0
    stale_versions: int = 0
    too_old: int = 0
    unshareable: int = 0
    """Confirmed detections of indicators with no STIX id partners could refer to (plain lists)."""
    evicted: int = 0


class Aggregator:
    def __init__(
        self, builder: ShareBuilder, retention_seconds: float = 2 * 86400, max_groups: int = 100_000,
        clock: Callable[[], float] = time.time,
    ) -> None:  # fmt: skip
        self.builder = builder
        self.retention = retention_seconds
        self.max_groups = max_groups
        self.clock = clock
        self.groups: dict[tuple[str, str, str], _Group] = {}
        self.high: dict[int, int] = {}
        self.stats = AggregatorStats()
        self._unshareable_groups: set[tuple[str, str, str]] = set()
        self._share_group: dict[str, tuple[str, str, str]] = {}

    def add(
        self, detection: dict[str, Any], partition: int = 0, offset: int = 0, replay: bool = False
    ) -> list[Share]:
        """Take one detection version; returns the shares whose version it changed (none on replay)."""
        self.high[partition] = max(self.high.get(partition, -1), offset)
        window_end = _epoch(detection["window_end"])
        if window_end < self.clock() - self.retention:
            self.stats.too_old += 1
            return []
        gkey = (detection["kind"], detection["key"], detection["window_start"])
        group = self.groups.get(gkey)
        if group is None:
            group = self.groups[gkey] = _Group(window_end)
            self._evict()
        previous = group.detections.get(detection["id"])
        if previous is not None and previous["updated"] > detection["updated"]:
            self.stats.stale_versions += 1
            return []
        self.stats.detections += 1
        group.detections[detection["id"]] = detection
        changed = []
        for built in self._shares(gkey, group):
            old = group.shares.get(built.id)
            if old is not None and built.modified <= old.modified and _content(built) == _content(old):
                continue
            share = _later_than(old, built)
            group.shares[share.id] = share
            self._share_group[share.id] = gkey
            # A replayed detection changes a share a later message already changed: the version on its
            # way out lacked it, so the complete one must go instead.
            if replay and share.id not in group.unsettled:
                continue
            group.unsettled[share.id] = share.modified
            if not replay:
                group.offsets.setdefault(partition, offset)
            changed.append(share)
        return changed

    def _shares(self, gkey: tuple[str, str, str], group: _Group) -> list[Share]:
        detections = sorted(group.detections.values(), key=lambda d: d["id"])
        confirmed = [d for d in detections if d["state"] == "confirmed"]
        out: list[Share] = []
        if gkey[0] == "scan":
            out += [self.builder.scan(d) for d in confirmed if d.get("scan")]
            return out
        sighting = self.builder.sighting(confirmed)
        if sighting is not None:
            out.append(sighting)
        elif confirmed and gkey not in self._unshareable_groups:
            self._unshareable_groups.add(gkey)
            self.stats.unshareable += 1
        out += [
            s for d in detections if d["state"] == "false_positive" if (s := self.builder.false_positive(d))
        ]
        known = {s.id for s in out}
        # A sighting whose every detection turned out false: its last version again, revoked.
        out += [self._revoked(old, detections) for sid, old in group.shares.items()
                if sid not in known and old.kind == "sighting"]  # fmt: skip
        return out

    @staticmethod
    def _revoked(old: Share, detections: list[dict[str, Any]]) -> Share:
        """The last version of ``old``'s sighting again, revoked, at its detections' latest update
        (:func:`_later_than` makes it later than ``old`` when the verdict came at once)."""
        sighting = old.objects[-1]
        if sighting.get("revoked"):
            return old
        modified = stix_time(max(detections, key=lambda d: _epoch(d["updated"]))["updated"])
        new = {**sighting, "revoked": True, "modified": modified}
        return Share(**{**old.__dict__, "modified": modified, "objects": (*old.objects[:-1], new)})

    def settle(self, share: Share) -> None:
        """``share`` in this version was sent (or refused for good): its offsets may be committed."""
        gkey = self._share_group.get(share.id)
        group = self.groups.get(gkey) if gkey else None
        if group is None or group.unsettled.get(share.id) != share.modified:
            return
        del group.unsettled[share.id]
        if not group.unsettled:
            group.offsets.clear()

    def commit_offsets(self) -> dict[int, int]:
        """Partition -> the next offset to commit: below every unsettled change."""
        out = {p: high + 1 for p, high in self.high.items()}
        for group in self.groups.values():
            for partition, offset in group.offsets.items():
                out[partition] = min(out[partition], offset)
        return out

    def pending(self) -> int:
        return sum(len(g.unsettled) for g in self.groups.values())

    def expire(self) -> None:
        """Forget settled groups whose window ended more than the retention ago."""
        cutoff = self.clock() - self.retention
        for gkey in [k for k, g in self.groups.items() if g.window_end < cutoff and not g.unsettled]:
            self._forget(gkey)

    def _evict(self) -> None:
        if len(self.groups) <= self.max_groups:
            return
        settled = sorted((g.window_end, k) for k, g in self.groups.items() if not g.unsettled)
        for _, gkey in settled[: len(self.groups) - self.max_groups]:
            self._forget(gkey)
            self.stats.evicted += 1

    def _forget(self, gkey: tuple[str, str, str]) -> None:
        for sid in self.groups.pop(gkey).shares:
            self._share_group.pop(sid, None)
        self._unshareable_groups.discard(gkey)
