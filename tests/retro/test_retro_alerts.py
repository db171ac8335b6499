"""The hunt's column-wise alert conversion gives exactly what the row-wise ``alerts_to_dicts`` gives,
and ``Matcher.candidates`` never misses a row that ``Matcher.find`` reports."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "detectors"))
from flowbatch import flow_batch

from detectors.index import IndicatorIndex
from detectors.matcher import Matcher, alerts_to_dicts
from pipeline.intel import Condition, Indicator
from pipeline.intel.lists import parse_entry
from pipeline.retro.alerts import alert_records
from pipeline.schemas import FLOW_SCHEMA

T0 = datetime(2026, 11, 1, tzinfo=UTC)
ADDRESSES = ["203.0.113.66", "198.51.100.7", "2001:db8:bad::1", "192.0.2.1", "192.0.2.77", "2001:db8::5"]


def indicators() -> list[Indicator]:
    out = [
        Indicator(id=f"list:{v}", value=v, source="list", conditions=(parse_entry(v),))
        for v in ["203.0.113.66", "198.51.100.0/28", "2001:db8:bad::1", "192.0.2.77|443"]
    ]
    out.append(Indicator(id="as", value="AS64500", source="as-feed", conditions=(Condition(asn=64500),),
                         valid_from=T0, valid_until=T0 + timedelta(hours=5), confidence=80))  # fmt: skip
    return out


def random_flows(rng: np.random.Generator, n: int) -> pa.RecordBatch:
    flows = []
    for _ in range(n):
        start = T0 + timedelta(microseconds=int(rng.integers(0, 6 * 3600 * 10**6)))
        if rng.integers(0, 3) == 0:
            start = start.replace(microsecond=0)
        end = start + timedelta(seconds=int(rng.integers(0, 60)))
        flows.append({"src": str(rng.choice(ADDRESSES)), "dst": str(rng.choice(ADDRESSES)),
                      "sport": int(rng.integers(1, 65536)), "dport": int(rng.choice([443, 80])),
                      "time": None if rng.integers(0, 5) == 0 else start, "end": None if rng.integers(0, 5) == 0 else end,
                      "received": end + timedelta(seconds=1), "src_as": int(rng.choice([0, 64500, 64501])),
                      "dst_as": int(rng.choice([0, 64500]))})  # fmt: skip
    for f in flows:  # an address family per flow
        if (":" in f["src"]) != (":" in f["dst"]):
            f["dst"] = "2001:db8::5" if ":" in f["src"] else "192.0.2.1"
    return flow_batch(flows)


def test_alert_records_equal_alerts_to_dicts() -> None:
    matcher = Matcher(IndicatorIndex.build(indicators()))
    table = matcher.match(random_flows(np.random.default_rng(3), 3000))
    assert table.num_rows > 1000
    assert {"valid_until", "flow_start", "exporter"} <= set(table.column_names)
    assert table.column("flow_start").null_count and table.column("valid_until").null_count
    assert alert_records(table) == alerts_to_dicts(table)
    assert alert_records(table.slice(0, 0)) == []


def test_times_python_cannot_hold_still_fail_as_before() -> None:
    """A flow end in the year 33658: the row-wise conversion raises, so does the hunt's (match_rows
    then drops that alert alone and counts it)."""
    matcher = Matcher(IndicatorIndex.build(indicators()))
    batch = flow_batch([{"src": "203.0.113.66", "dst": "192.0.2.1", "time": T0, "end": T0, "received": T0}])
    end = pa.array([10**18], pa.int64()).cast(FLOW_SCHEMA.field("flow_end").type)
    batch = batch.set_column(batch.schema.get_field_index("flow_end"), "flow_end", end)
    table = matcher.match(batch)
    with pytest.raises((OverflowError, ValueError)):
        alerts_to_dicts(table)
    with pytest.raises((OverflowError, ValueError)):
        alert_records(table)


def test_candidates_cover_every_hit() -> None:
    matcher = Matcher(IndicatorIndex.build(indicators()))
    batch = random_flows(np.random.default_rng(5), 4000)
    hits = matcher.find(batch)
    candidates = matcher.candidates(batch)
    assert len(hits.rows) > 1000
    assert set(hits.rows.tolist()) <= set(candidates.tolist())
    assert list(candidates) == sorted(set(candidates.tolist()))
    assert set(matcher.candidate_columns()) == {"src_addr", "dst_addr", "src_as", "dst_as"}
    as_only = [i for i in indicators() if i.id != "as"]
    assert Matcher(IndicatorIndex.build(as_only)).candidate_columns() == ["src_addr", "dst_addr"]
