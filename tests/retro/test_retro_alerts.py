"""The hunt's column-wise alert conversion gives exactly what the row-wise ``alerts_to_dicts`` gives
(as dicts, and as JSON lines byte for byte what orjson makes of those dicts), ``Matcher.candidates``
never misses a row that ``Matcher.find`` reports, and ``Matcher.find_columns`` names every column
``find`` reads."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "detectors"))
from flowbatch import flow_batch

from detectors.index import IndicatorIndex
from detectors.matcher import Matcher, alerts_to_dicts
from pipeline.intel import Condition, Indicator
from pipeline.intel.lists import parse_entry
from pipeline.retro.alerts import alert_lines, alert_records
from pipeline.schemas import FLOW_SCHEMA, bytes16_to_ip, ip_to_bytes16

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


def orjson_lines(rows: list[dict]) -> list[bytes]:
    """What the hunt wrote before: one orjson line per row-wise dict."""
    return [orjson.dumps(row, default=str) + b"\n" for row in rows]


def test_alert_lines_equal_orjson_of_alerts_to_dicts() -> None:
    matcher = Matcher(IndicatorIndex.build(indicators()))
    table = matcher.match(random_flows(np.random.default_rng(3), 3000))
    assert table.column("src_addr").to_pylist().count(bytes(15) + b"\x01") == 0
    lines = alert_lines(table)
    assert lines == orjson_lines(alerts_to_dicts(table))
    assert [orjson.loads(line) for line in lines[:50]] == alerts_to_dicts(table.slice(0, 50))
    assert alert_lines(table.slice(0, 0)) == []
    assert alert_lines(table.slice(7, 1)) == lines[7:8]


def _set(table: pa.Table, name: str, values: list, type_: pa.DataType | None = None) -> pa.Table:
    column = pa.array(values, type_ or table.schema.field(name).type)
    return table.set_column(table.schema.get_field_index(name), name, column)


def _times(table: pa.Table, micros: list[int | None]) -> pa.Table:
    return _set(table, "flow_start", pa.array(micros, pa.int64()).cast(table.schema.field("flow_start").type))


def odd_alerts() -> pa.Table:
    """Alerts with what the column-wise path treats apart: text needing JSON escapes (quotes,
    backslashes, control characters, DEL, non-ASCII, U+2028), nulls in every kind of column, IPv6
    addresses with IPv4 tails, the unspecified and loopback addresses, times from 1970 to 2065 with and
    without a fraction, floats, and a column type without a hash kernel (a list)."""
    matcher = Matcher(IndicatorIndex.build(indicators()))
    table = matcher.match(random_flows(np.random.default_rng(11), 400)).slice(0, 8)
    assert table.num_rows == 8
    names = [
        "plain",
        'say "hi"',
        "back\\slash",
        "tab\tnew\nline\x01\x1f",
        "caf\u00e9 \u2028 \U0001f41f",
        "\x7f",
        None,
        "",
    ]
    table = _set(table, "indicator_name", names)
    exporters = ["::ffff:192.0.2.1", "::1.2.3.4", "::", "::1", "2001:db8::ffff:1.2.3.4", "fe80::1", "0.0.0.0",
                 "255.255.255.255"]  # fmt: skip
    table = _set(table, "exporter", [ip_to_bytes16(a) for a in exporters])
    table = _times(table, [0, 86_400_000_000 - 1, 1_796_083_200_000_000, None, 1_796_083_200_000_001,
                           1_796_083_200_999_999, 1_000_000, 3_000_000_000_000_000])  # fmt: skip
    table = table.append_column("remote_as", pa.array([1, None, 2**40, -5, 0, 7, None, 9], pa.int64()))
    table = table.append_column("remote_country", pa.array(["NL", None, "DE", "NL", None, "", "FR", "NL"]))
    table = table.append_column("tags", pa.array([["a", "b"], [], None, ["c"], ['"'], ["a"], None, []]))
    return table.append_column("score", pa.array([0.5, 1e16, None, -0.0, 1.0, 3.25, 2.0 / 3, 100.0]))


@pytest.fixture
def column_wise_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """The row-wise fallback made to fail: what passes is the column-wise path's own work."""
    import pipeline.retro.alerts

    def refuse(table: pa.Table) -> list:
        raise AssertionError("went row-wise")

    monkeypatch.setattr(pipeline.retro.alerts, "alert_records", refuse)


def test_alert_lines_of_odd_values(column_wise_only: None) -> None:
    table = odd_alerts()
    assert alert_lines(table) == orjson_lines(alerts_to_dicts(table))
    whole = _times(table, [i * 1_000_000 for i in range(8)])  # no time with a fraction
    assert alert_lines(whole) == orjson_lines(alerts_to_dicts(whole))
    fraction = _times(table, [i * 1_000_001 for i in range(1, 9)])  # every time with one
    assert alert_lines(fraction) == orjson_lines(alerts_to_dicts(fraction))
    assert alert_lines(table.slice(3)) == orjson_lines(alerts_to_dicts(table.slice(3)))  # arrays at an offset


def test_alert_records_of_odd_values() -> None:
    table = odd_alerts()
    assert alert_records(table) == alerts_to_dicts(table)


def test_alert_lines_of_times_far_apart() -> None:
    """The last microsecond Python holds with 1970 in the same batch: too many days for the table of
    days, so formatted row by row, the same all the same."""
    table = _times(odd_alerts(), [253_402_300_799_999_999, 0, *range(6)])
    assert alert_lines(table) == orjson_lines(alerts_to_dicts(table))


def test_alert_lines_of_null_addresses_say_null(column_wise_only: None) -> None:
    """A null address (the flow schema has none) is ``null``; the row-wise conversion cannot take one."""
    table = odd_alerts()
    exporters = table.column("exporter").to_pylist()
    table = _set(table, "exporter", [None if i % 3 == 0 else v for i, v in enumerate(exporters)])
    lines = alert_lines(table)
    with_address = table.filter(table.column("exporter").is_valid())
    assert [line for i, line in enumerate(lines) if i % 3] == orjson_lines(alerts_to_dicts(with_address))
    assert [orjson.loads(line)["exporter"] for line in lines[::3]] == [None] * 3
    assert [orjson.loads(line)["src_addr"] for line in lines[::3]] == [
        str(bytes16_to_ip(a)) for a in table.column("src_addr").to_pylist()[::3]
    ]


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
    with pytest.raises((OverflowError, ValueError)):
        alert_lines(table)


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


def _only(batch: pa.RecordBatch, columns: list[str]) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays([batch.column(c) for c in columns], names=columns)


@pytest.mark.parametrize(
    "kinds, expected",
    [
        ({"plain"}, {"src_addr", "dst_addr"}),
        ({"plain", "port"}, {"src_addr", "dst_addr", "src_port", "dst_port", "protocol", "src_as", "dst_as"}),
        ({"plain", "timed"}, {"src_addr", "dst_addr", "flow_end", "time_received"}),
        ({"plain", "allow"}, {"src_addr", "dst_addr", "src_port", "dst_port"}),
        ({"as"}, {"src_addr", "dst_addr", "src_as", "dst_as", "flow_end", "time_received"}),  # valid 5 hours
        ({"plain", "port", "timed", "allow", "as"},
         {"src_addr", "dst_addr", "src_port", "dst_port", "protocol", "src_as", "dst_as", "flow_end", "time_received"}),
    ],
)  # fmt: skip
def test_find_columns_are_all_that_find_reads(kinds: set[str], expected: set[str]) -> None:
    """``find`` on the flows cut down to ``find_columns`` finds what it finds on whole flows (a column
    it reads and is not named would be missing: KeyError)."""
    from detectors.index import network_of
    from pipeline.intel.allowlists import Allowlist

    chosen = [
        i
        for i in indicators()
        if (
            "plain" in kinds and i.id in ("list:203.0.113.66", "list:198.51.100.0/28", "list:2001:db8:bad::1")
        )
        or ("port" in kinds and i.id == "list:192.0.2.77|443")
        or ("as" in kinds and i.id == "as")
    ]
    if "timed" in kinds:
        chosen.append(Indicator(id="timed", value="192.0.2.1", source="stix", conditions=(parse_entry("192.0.2.1"),),
                                valid_from=T0, valid_until=T0 + timedelta(hours=3)))  # fmt: skip
    allow = Allowlist([(network_of("203.0.113.66"), 443, "cdn")]) if "allow" in kinds else None
    matcher = Matcher(IndicatorIndex.build(chosen, allow))
    batch = random_flows(np.random.default_rng(9), 3000)
    assert set(matcher.find_columns()) == expected
    assert matcher.find_columns()[:2] == ["src_addr", "dst_addr"]
    whole = matcher.find(batch)
    cut = matcher.find(_only(batch, matcher.find_columns()))
    assert len(whole.rows) > 100
    for got, want in zip(cut, whole, strict=True):
        assert np.array_equal(got, want)


def test_the_hunt_confirms_with_find_and_keeps_every_candidate_when_find_fails() -> None:
    """The confirm step keeps the rows ``find`` reports; should ``find`` fail on a row group, every
    candidate goes on to the matching stage, where failing rows are isolated and counted."""
    from detectors.matcher import FLOW_COLUMNS
    from pipeline.commands.match import hunt_reads

    plain = Matcher(IndicatorIndex.build([i for i in indicators() if i.id == "list:203.0.113.66"]))
    assert hunt_reads(plain, list(FLOW_COLUMNS)).confirm is None  # nothing to confirm: candidates hit
    matcher = Matcher(IndicatorIndex.build(indicators()))
    reads = hunt_reads(matcher, list(FLOW_COLUMNS))
    assert reads.confirm is not None and reads.confirm_columns == matcher.find_columns()
    batch = random_flows(np.random.default_rng(4), 2000)
    candidates = batch.take(pa.array(matcher.candidates(batch)))
    confirmed = reads.confirm(_only(candidates, reads.confirm_columns))
    assert list(confirmed) == sorted(set(matcher.find(candidates).rows.tolist()))
    assert 0 < len(confirmed) < candidates.num_rows
    assert matcher.stats.flows == candidates.num_rows  # the confirm step counted apart
    broken = _only(candidates, [c for c in reads.confirm_columns if c != "protocol"])
    assert list(reads.confirm(broken)) == list(range(candidates.num_rows))
