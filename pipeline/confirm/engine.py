"""The confirmation engine: groups held in a mapping (a dict in process, a Faust table over Kafka),
partials merged in, detections emitted as they become due, windows closed.

Both runtimes drive the same object, so ``shoal run`` shows exactly the detections a Kafka deployment
would produce from the same flows.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from detectors.detections import (
    OVERFLOW_HOST,
    DetectionConfig,
    closes_at,
    due,
    group_key,
    merge,
    needs_full_check,
)
from pipeline.transport.detections import feedback_key

RECHECK_MS = 5000


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Verdicts:
    """Analysts' verdicts by (kind, key, host), each in force for ``seconds`` after it was given;
    at most ``limit`` kept (the oldest go first)."""

    seconds: int
    limit: int = 100_000
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, feedback: dict[str, Any]) -> None:
        self.entries[feedback_key(feedback["kind"], feedback["key"], feedback["internal_host"])] = feedback
        if len(self.entries) > self.limit:
            by_age = sorted(self.entries, key=lambda k: self.entries[k]["at_ms"])
            for old in by_age[: len(self.entries) - self.limit]:
                del self.entries[old]

    def __call__(self, kind: str, key: str, host: str | None) -> dict[str, Any] | None:
        feedback = self.entries.get(feedback_key(kind, key, host))
        if feedback is None or now_ms() > feedback["at_ms"] + 1000 * self.seconds:
            return None
        return feedback


class Confirmer:
    def __init__(
        self,
        config: DetectionConfig,
        groups: MutableMapping[str, dict[str, Any]] | None = None,
        verdicts: Verdicts | None = None,
    ) -> None:
        self.config = config
        self.groups: MutableMapping[str, dict[str, Any]] = {} if groups is None else groups
        self.verdicts = verdicts or Verdicts(config.suppress_seconds)
        self.partials = 0
        self.duplicates = 0
        self.late = 0
        self.closed = 0
        self.rechecks: dict[str, int] = {}
        """Group-key prefixes with a new verdict -> until when (ms) ticks check them in full."""

    def add(
        self, partial: dict[str, Any], offset: int | None = None, now: int | None = None,
        extra: dict[str, Any] | None = None,
    ) -> list[dict[str, Any]]:  # fmt: skip
        """Merge one partial; returns the detections that became due. With ``offset`` (the partial's
        position in its input partition), a partial at or below the group's last applied offset is a
        redelivery and is skipped: one state write per partial keeps the count exact across restarts."""
        now = now if now is not None else now_ms()
        key = group_key(partial)
        group = self.groups.get(key)
        if offset is not None and group is not None and offset <= group.get("offset", -1):
            self.duplicates += 1
            return []
        if group is not None and group.get("closed_at") is not None:
            self.late += 1  # its window already went out final; a marker remains to say so
            return []
        merged = merge(group, partial, self.config.max_hosts)
        merged["touched"] = now
        if offset is not None:
            merged["offset"] = offset
        if extra:
            merged.update(extra)
        touched = None  # only the detections this partial can have changed are rendered
        if not needs_full_check(group, merged, self.config):
            touched = {h["host"] or "" for h in partial["hosts"]}
            touched = {n if n in merged["hosts"] else OVERFLOW_HOST for n in touched}
        emit, merged = due(merged, self.config, now, verdicts=self.verdicts, names=touched)
        self.groups[key] = merged
        self.partials += 1
        return emit

    def feedback(self, feedback: dict[str, Any], now: int | None = None) -> None:
        """An analyst's verdict: the key's open detections take it at the next ``tick``. Nothing is
        written here (a Faust table may only be written while its partition's message is handled):
        the key is re-checked in full by the ticks of the next few seconds."""
        self.verdicts.add(feedback)
        now = now if now is not None else now_ms()
        self.rechecks[f"{feedback['kind']}|{feedback['key']}|"] = now + RECHECK_MS
        for prefix in [p for p, until in self.rechecks.items() if until < now]:
            del self.rechecks[prefix]

    def tick(self, keys: Iterable[str] | None = None, now: int | None = None) -> list[dict[str, Any]]:
        """Emit what became due since the last call; close finished windows (final versions), leaving
        a small marker for one more window length so late partials are recognised, then nothing."""
        now = now if now is not None else now_ms()
        out = []
        for key in list(self.groups if keys is None else keys):
            group = self.groups.get(key)
            if group is None:
                continue
            if group.get("closed_at") is not None:
                if now >= group["closed_at"] + 1000 * group["window_seconds"]:
                    del self.groups[key]
                continue
            final = now >= closes_at(group, self.config)
            recheck = any(key.startswith(p) and now <= until for p, until in self.rechecks.items())
            if not (final or recheck or group.get("pending")):
                continue  # nothing can be due: no render
            names = None if final or recheck else group["pending"]
            emit, updated = due(group, self.config, now, final=final, verdicts=self.verdicts, names=names)
            out += emit
            if final:
                self.groups[key] = _marker(group, now)
                self.closed += 1
            elif updated is not group:
                self.groups[key] = updated
        return out

    def close_all(self, now: int | None = None) -> list[dict[str, Any]]:
        """Final versions of every open group (the embedded runtime's stop)."""
        now = now if now is not None else now_ms()
        out = []
        for key in list(self.groups):
            if self.groups[key].get("closed_at") is None:
                out += due(self.groups[key], self.config, now, final=True, verdicts=self.verdicts)[0]
            del self.groups[key]
        return out


def _marker(group: dict[str, Any], now: int) -> dict[str, Any]:
    keep = ("kind", "key", "window_start", "window_seconds", "offset", "p")
    return {k: group[k] for k in keep if k in group} | {"closed_at": now}
