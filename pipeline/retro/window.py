"""The time window of a retro-hunt (``--since``/``--until``): parsing what an analyst types, the exact
per-flow test, and the coarser tests that let whole files and row groups go unread.

A flow is in the window when its own time span overlaps it: it ended at or after ``since`` and started
before ``until`` (half-open, so ``--since 2026-12-01 --until 2026-12-02`` is one day). A flow without
an end time counts as ending when the collector received it; without a start time, as starting at
its end.

The archive is partitioned (``date=/hour=`` folders) and has row-group statistics by the time the
collector *received* each flow, not by the flow's own times. Receipt follows a flow's end closely but
can come long after its start (exporters split long flows at an active timeout, commonly 1-30 min),
and exporter clocks drift: files and row groups are therefore skipped only when their receipt times
lie more than :data:`RECEIPT_MARGIN_US` (an hour) outside the window. So that what a hunt reports
never depends on how flows happened to be grouped into files, the same rule holds row by row: a flow
received more than an hour outside the window is not reported even if its own times overlap it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

RECEIPT_MARGIN_US = 3_600_000_000
"""How far (µs) outside the window a flow's receipt time may lie and the flow still be read."""
US_PER_HOUR = 3_600_000_000
NO_LIMIT = (-(2**63), 2**63 - 1)

_RELATIVE = re.compile(r"-?(\d+(?:\.\d+)?)\s*([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_PARTITION = re.compile(r"date=(\d{4}-\d{2}-\d{2})(?:[/\\]hour=(\d{1,2}))?")


class WindowError(ValueError):
    """A ``--since``/``--until`` value that is not a time, or a window that is empty."""


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """An ISO 8601 date or time (``2026-12-01``, ``2026-12-01T10:00Z``, ``2026-12-01 10:00+01:00``;
    no zone means UTC), ``now``, or a time before now (``24h``, ``-24h``, ``90m``, ``7d``, ``2w``)."""
    text = text.strip()
    now = now or datetime.now(UTC)
    if text.lower() == "now":
        return now
    if m := _RELATIVE.fullmatch(text.lower()):
        return now - timedelta(seconds=float(m.group(1)) * _UNIT_SECONDS[m.group(2)])
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise WindowError(
            f"{text!r} is not a time: use ISO 8601 (2026-12-01, 2026-12-01T10:00Z) or a time before "
            "now (24h, 90m, 7d)"
        ) from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def _us(when: datetime) -> int:
    delta = when - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


@dataclass(frozen=True)
class TimeWindow:
    """[since, until) in µs since the epoch; either end may be open."""

    since_us: int = NO_LIMIT[0]
    until_us: int = NO_LIMIT[1]

    @classmethod
    def parse(cls, since: str | None, until: str | None, now: datetime | None = None) -> TimeWindow:
        now = now or datetime.now(UTC)
        window = cls(
            _us(parse_time(since, now)) if since else NO_LIMIT[0],
            _us(parse_time(until, now)) if until else NO_LIMIT[1],
        )
        if window.since_us >= window.until_us:
            raise WindowError(f"--since ({since}) must be before --until ({until})")
        return window

    @property
    def bounded(self) -> bool:
        return self.since_us != NO_LIMIT[0] or self.until_us != NO_LIMIT[1]

    def may_hold_path(self, path: str) -> bool:
        """Whether a file under a ``date=YYYY-MM-DD[/hour=HH]`` partition (the collector's layout, by
        receipt time) may hold flows in the window; paths without one may."""
        if not self.bounded:
            return True
        found = _PARTITION.findall(path)
        if not found:
            return True
        day, hour = found[-1]
        try:
            start = _us(datetime.fromisoformat(day).replace(tzinfo=UTC))
        except ValueError:
            return True
        if hour:
            start += int(hour) * US_PER_HOUR
            return self.may_hold_received(start, start + US_PER_HOUR - 1)
        return self.may_hold_received(start, start + 24 * US_PER_HOUR - 1)

    def receipt_bounds(self) -> tuple[int, int]:
        """[first, last) receipt times (µs) a flow in the window may have."""
        return (
            max(self.since_us - RECEIPT_MARGIN_US, NO_LIMIT[0]),
            min(self.until_us + RECEIPT_MARGIN_US, NO_LIMIT[1]),
        )

    def may_hold_received(self, first_us: int, last_us: int) -> bool:
        """Whether flows received between ``first_us`` and ``last_us`` (inclusive) may be in the window:
        False lets a file or row group go unread."""
        low, high = self.receipt_bounds()
        return last_us >= low and first_us < high

    def holds(self, batch: pa.RecordBatch | pa.Table) -> np.ndarray:
        """Which rows of ``batch`` (with ``time_received``, ``flow_start``, ``flow_end``) are in the
        window: a boolean array. A row without a receipt time is not."""
        received = batch.column("time_received").cast(pa.int64())
        end = pc.coalesce(batch.column("flow_end").cast(pa.int64()), received)
        start = pc.coalesce(batch.column("flow_start").cast(pa.int64()), end)
        received_us, end_us, start_us = (
            np.asarray(c.to_numpy(zero_copy_only=False)) for c in (received, end, start)
        )
        low, high = self.receipt_bounds()
        inside = (
            (end_us >= self.since_us)
            & (start_us < self.until_us)
            & (received_us >= low)
            & (received_us < high)
        )
        if received.null_count:  # NaN compared false above once to_numpy made floats; be explicit
            inside &= np.asarray(received.is_valid().to_numpy(zero_copy_only=False))
        return inside


__all__ = ["RECEIPT_MARGIN_US", "TimeWindow", "WindowError", "parse_time"]
