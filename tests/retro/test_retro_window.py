"""``--since``/``--until``: what an analyst types, and the window's tests on paths, receipt ranges and
rows (checked against datetime arithmetic)."""

from __future__ import annotations

import io
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "detectors"))
from flowbatch import flow_batch

from pipeline.retro import FilePlan, ScanProgress, TimeWindow, WindowError, parse_time
from pipeline.retro.window import RECEIPT_MARGIN_US

NOW = datetime(2026, 12, 6, 15, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2026-12-01", datetime(2026, 12, 1, tzinfo=UTC)),
        ("2026-12-01T10:00Z", datetime(2026, 12, 1, 10, tzinfo=UTC)),
        ("2026-12-01T10:00:00+01:00", datetime(2026, 12, 1, 9, tzinfo=UTC)),
        ("2026-12-01 10:00", datetime(2026, 12, 1, 10, tzinfo=UTC)),
        ("2026-12-01T10:00:00.250000Z", datetime(2026, 12, 1, 10, 0, 0, 250000, tzinfo=UTC)),
        ("now", NOW),
        ("24h", NOW - timedelta(hours=24)),
        ("-24h", NOW - timedelta(hours=24)),
        ("90m", NOW - timedelta(minutes=90)),
        ("-7d", NOW - timedelta(days=7)),
        ("2w", NOW - timedelta(weeks=2)),
        ("30s", NOW - timedelta(seconds=30)),
        ("1.5h", NOW - timedelta(minutes=90)),
    ],
)
def test_times_an_analyst_types(text: str, expected: datetime) -> None:
    assert parse_time(text, NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "24", "-24x", "2026-13-01", ""])
def test_what_is_not_a_time_is_refused(text: str) -> None:
    with pytest.raises(WindowError, match="not a time"):
        parse_time(text, NOW)


def test_window_must_not_be_empty() -> None:
    with pytest.raises(WindowError, match="before --until"):
        TimeWindow.parse("2026-12-01", "2026-12-01", NOW)
    assert not TimeWindow.parse(None, None, NOW).bounded
    assert TimeWindow.parse("-1h", None, NOW).bounded


def _us(when: datetime) -> int:
    return round(when.timestamp() * 1_000_000)


def test_partition_paths_by_receipt_hour() -> None:
    window = TimeWindow.parse("2026-12-01T10:30Z", "2026-12-01T11:00Z", NOW)  # receipts 09:30 to 12:00
    keeps = {h: window.may_hold_path(f"/a/date=2026-12-01/hour={h:02d}/f.parquet") for h in range(24)}
    assert [h for h, kept in keeps.items() if kept] == [9, 10, 11]
    assert window.may_hold_path("/a/flows.parquet")  # no partition: read
    assert window.may_hold_path("/a/date=2026-12-01/f.parquet")  # a day folder holding the window
    assert not window.may_hold_path("/a/date=2026-11-30/f.parquet")
    assert not TimeWindow.parse(None, "2026-12-01", NOW).may_hold_path("/a/date=2026-12-01/hour=01/x.parquet")
    assert TimeWindow.parse(None, "2026-12-01", NOW).may_hold_path("/a/date=2026-12-01/hour=00/x.parquet")


def test_receipt_ranges_have_an_hour_of_margin() -> None:
    window = TimeWindow.parse("2026-12-01T10:00Z", "2026-12-01T11:00Z", NOW)
    low, high = _us(datetime(2026, 12, 1, 9, tzinfo=UTC)), _us(datetime(2026, 12, 1, 12, tzinfo=UTC))
    assert window.receipt_bounds() == (low, high)
    assert window.may_hold_received(low - 10, low)
    assert not window.may_hold_received(low - 10, low - 1)
    assert window.may_hold_received(high - 1, high + 10)
    assert not window.may_hold_received(high, high + 10)
    assert RECEIPT_MARGIN_US == 3_600_000_000


def test_rows_overlapping_the_window() -> None:
    since, until = datetime(2026, 12, 1, 10, tzinfo=UTC), datetime(2026, 12, 1, 11, tzinfo=UTC)
    window = TimeWindow.parse("2026-12-01T10:00Z", "2026-12-01T11:00Z", NOW)
    us = timedelta(microseconds=1)
    cases = [  # (start, end, received, in the window)
        (since - timedelta(minutes=5), since, since + timedelta(minutes=1), True),
        (since - timedelta(minutes=5), since - us, since + timedelta(minutes=1), False),
        (until, until + us, until + timedelta(minutes=1), False),
        (until - us, until + us, until + timedelta(minutes=1), True),
        (since - timedelta(hours=3), until + timedelta(hours=3), until + timedelta(minutes=59), True),
        (since - timedelta(hours=3), until + timedelta(hours=3), until + timedelta(hours=1), False),
        (None, since + timedelta(minutes=1), since + timedelta(minutes=2), True),  # start: its end
        (since - timedelta(minutes=9), None, since + us, True),  # end: its receipt
        (since - timedelta(minutes=9), None, since - us, False),
        (None, None, until - us, True),
        (None, None, until, False),
    ]
    batch = flow_batch([
        {"src": "192.0.2.1", "dst": "192.0.2.2", "time": start, "end": end, "received": received}
        for start, end, received, _ in cases
    ])  # fmt: skip
    assert window.holds(batch).tolist() == [inside for *_, inside in cases]
    assert TimeWindow().holds(batch).all()


def test_progress_lines_when_not_a_terminal() -> None:
    plans = [FilePlan("a.parquet", (0, 1), 1000), FilePlan("b.parquet", (0,), 500)]
    stream = io.StringIO()
    progress = ScanProgress(plans, stream, terminal=False, every=0)
    progress.next_file(plans[0])
    progress.advance(1000)
    progress.hits = 7
    progress.next_file(plans[1])
    progress.advance(500)
    progress.close()
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("shoal match: file 1/2, 1,000 of 1,500 flows (67%), 0 hits")
    assert lines[1].startswith("shoal match: file 2/2, 1,500 of 1,500 flows (100%), 7 hits")


def test_progress_bar_on_a_terminal() -> None:
    plans = [FilePlan("a.parquet", (0,), 2_000_000)]
    stream = io.StringIO()
    progress = ScanProgress(plans, stream, terminal=True)
    progress.next_file(plans[0])
    progress.advance(2_000_000)
    progress.close()
    assert "file 1/1" in stream.getvalue() and "2.00M/2.00M" in stream.getvalue()
