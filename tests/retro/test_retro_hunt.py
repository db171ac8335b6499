"""``shoal match --flows`` over an archive written by the collector's ``ParquetSink`` (hour partitions,
several row groups per file) against a naive reference: every row of every file read back whole,
each indicator checked with ``ipaddress``, the time window applied as the README states it. With and
without ``--since/--until``, including flows at the window's edges, long flows, exporter clocks ahead
of the collector and flows without times; pruning is checked by the row groups the hunt says it read."""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import stix2

sys.path.insert(0, str(Path(__file__).parent.parent / "detectors"))
from flowbatch import flow_batch

from pipeline.schemas import bytes16_to_ip
from pipeline.sinks.parquet import ParquetSink

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 11, 1, tzinfo=UTC)
HOURS, GROUPS_PER_HOUR = 6, 4
QUARTER = timedelta(minutes=15)
MARGIN = timedelta(hours=1)
WINDOW = (T0 + timedelta(hours=3, minutes=30), T0 + timedelta(hours=3, minutes=45))

BAD_V4 = ["203.0.113.66", "198.51.100.7", "192.0.2.200"]
BAD_NET = "198.51.100.0/28"
BAD_V6 = "2001:db8:bad::1"
PORTED = ("192.0.2.77", 443)
STIX_ADDR = "203.0.113.99"
STIX_VALID = (T0 + timedelta(hours=2), T0 + timedelta(hours=4))
CLEAN = ["192.0.2.1", "192.0.2.2", "10.1.2.3", "2001:db8::5", "198.51.100.200"]


def _iso(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def intel(tmp: Path) -> list[str]:
    plain = tmp / "list.txt"
    plain.write_text("\n".join([*BAD_V4, BAD_NET, BAD_V6, f"{PORTED[0]}|{PORTED[1]}"]) + "\n")
    bundle = tmp / "stix.json"
    ind = stix2.Indicator(pattern=f"[ipv4-addr:value = '{STIX_ADDR}']", pattern_type="stix",
                          valid_from=STIX_VALID[0], valid_until=STIX_VALID[1])  # fmt: skip
    bundle.write_text(stix2.Bundle(ind).serialize())
    return ["--intel", str(plain), "--intel", str(bundle)]


def flows_of_quarter(rng: np.random.Generator, start: datetime, first_id: int, n: int) -> list[dict]:
    """``n`` flows received within [start, start + 15 min): mostly ordinary, some long (started hours
    before receipt), some whose exporter clock runs ahead (end after receipt), some without times."""
    out = []
    for i in range(n):
        received = start + timedelta(microseconds=int(rng.integers(0, QUARTER // timedelta(microseconds=1))))
        kind = rng.integers(0, 10)
        end = received - timedelta(seconds=int(rng.integers(0, 300)))
        if kind == 0:
            end = received + timedelta(minutes=int(rng.integers(1, 90)))  # clock ahead
        flow_start = end - timedelta(seconds=int(rng.integers(0, 120)))
        if kind == 1:
            flow_start = end - timedelta(minutes=int(rng.integers(30, 180)))  # long flow
        if kind == 2:
            flow_start = None
        if kind == 3:
            flow_start = end = None
        if kind == 4:
            end = None
        pool = BAD_V4 + [BAD_V6, PORTED[0], STIX_ADDR, "198.51.100.9"] + CLEAN * 3
        src, dst = rng.choice(pool), rng.choice(CLEAN)
        if ":" in src or ":" in dst:
            src, dst = (BAD_V6, "2001:db8::5") if ":" in src else (src, "192.0.2.1")
        if rng.integers(0, 2):
            src, dst = dst, src
        out.append({"src": str(src), "dst": str(dst), "sport": 40000 + i, "dport": int(rng.choice([443, 80])),
                    "time": flow_start, "end": end, "received": received, "octets": first_id + i})  # fmt: skip
    return out


def edge_flows(first_id: int) -> dict[int, list[dict]]:
    """Flows at the edges of :data:`WINDOW` and of its receipt margin, by the quarter that holds them."""
    since, until = WINDOW
    us = timedelta(microseconds=1)
    cases = [  # (received, start, end[, written with the quarter of this time])
        (since + timedelta(minutes=1), since - timedelta(minutes=5), since),  # ends at since: in
        (since + timedelta(minutes=1), since - timedelta(minutes=5), since - us),  # just before: out
        (until + timedelta(minutes=2), until, until + timedelta(minutes=1)),  # starts at until: out
        (until + timedelta(minutes=2), until - us, until + timedelta(minutes=1)),  # just inside: in
        (since - MARGIN, since - MARGIN, since + timedelta(minutes=1)),  # earliest receipt kept: in
        (since - MARGIN - us, since - MARGIN, since + timedelta(minutes=1)),  # received too early: out
        (until + MARGIN - us, since, until + MARGIN),  # latest receipt kept (long flow): in
        (until + MARGIN, since, until + MARGIN),  # received too late: out
        (since + timedelta(minutes=3), None, None),  # no flow times: its receipt, in
        # received too late, in a row group that is read (it holds earlier receipts): out all the same
        (until + MARGIN + timedelta(minutes=5), since, until, until + MARGIN - timedelta(minutes=10)),
    ]
    by_quarter: dict[int, list[dict]] = {}
    for k, (received, start, end, *written) in enumerate(cases):
        quarter = ((written[0] if written else received) - T0) // QUARTER
        flow = {"src": BAD_V4[0], "dst": CLEAN[0], "sport": 30000 + k, "dport": 443, "time": start, "end": end,
                "received": received, "octets": first_id + k}  # fmt: skip
        by_quarter.setdefault(quarter, []).append(flow)
    return by_quarter


def write_archive(root: Path) -> Path:
    """HOURS hour partitions, GROUPS_PER_HOUR row groups each (one per collector batch)."""
    rng = np.random.default_rng(7)
    edges = edge_flows(1_000_000)
    sink = ParquetSink(root / "flows")
    for quarter in range(HOURS * GROUPS_PER_HOUR):
        rows = flows_of_quarter(rng, T0 + quarter * QUARTER, quarter * 1000, 40) + edges.get(quarter, [])
        rows.sort(key=lambda f: f["received"])
        sink.write(flow_batch(rows))
    sink.close()
    return root / "flows"


def reference(archive: Path, window: tuple[datetime | None, datetime | None]) -> set[tuple[int, str, str]]:
    """(flow id, indicator value, side) of every hit, by reading every row and asking ipaddress."""
    plain = [ipaddress.ip_network(v) for v in [*BAD_V4, BAD_NET, BAD_V6]]
    since, until = window
    hits = set()
    for path in sorted(archive.rglob("*.parquet")):
        for row in pq.read_table(path).to_pylist():
            received, start, end = row["time_received"], row["flow_start"], row["flow_end"]
            end = end or received
            start = start or end
            if since is not None and (end < since or received < since - MARGIN):
                continue
            if until is not None and (start >= until or received >= until + MARGIN):
                continue
            for side in ("src", "dst"):
                address = bytes16_to_ip(row[f"{side}_addr"])
                for net in plain:
                    if address in net:
                        hits.add((row["octets"], str(net).removesuffix("/32").removesuffix("/128"), side))
                if str(address) == PORTED[0] and row["dst_port"] == PORTED[1]:
                    hits.add((row["octets"], f"{PORTED[0]}|{PORTED[1]}", side))
                when = row["flow_end"] or received
                if str(address) == STIX_ADDR and STIX_VALID[0] <= when < STIX_VALID[1]:
                    hits.add((row["octets"], f"[ipv4-addr:value = '{STIX_ADDR}']", side))
    return hits


def hunt(archive: Path, tmp: Path, *window: str) -> tuple[set[tuple[int, str, str]], str, int]:
    out = tmp / "alerts.jsonl"
    res = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "match", *intel(tmp), "--flows", str(archive), "--alerts",
         str(out), *window], cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert "Traceback" not in res.stderr, res.stderr
    alerts = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    found = {(a["octets"], a["indicator"], a["side"]) for a in alerts}
    assert len(found) == len(alerts), "one alert per (flow, indicator, side)"
    return found, res.stderr, res.returncode


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_archive(tmp_path_factory.mktemp("retro"))


def test_archive_has_the_collector_layout(archive: Path) -> None:
    files = sorted(archive.rglob("*.parquet"))
    assert [f.parent.name for f in files] == [f"hour={h:02d}" for h in range(HOURS)]
    assert {pq.ParquetFile(f).metadata.num_row_groups for f in files} == {GROUPS_PER_HOUR}


def test_whole_archive_equals_the_reference(archive: Path, tmp_path: Path) -> None:
    found, stderr, code = hunt(archive, tmp_path)
    expected = reference(archive, (None, None))
    assert code == 0, stderr
    assert len(expected) > 200
    assert found == expected
    total = sum(pq.ParquetFile(f).metadata.num_rows for f in archive.rglob("*.parquet"))
    assert f"{total} flows scanned, {len(expected)} hits" in stderr


@pytest.mark.parametrize(
    "since, until",
    [
        (WINDOW[0], WINDOW[1]),
        (T0 + timedelta(hours=1, minutes=50, microseconds=500_000), T0 + timedelta(hours=3, minutes=10)),
        (T0 + timedelta(hours=4, minutes=59), None),
        (None, T0 + timedelta(minutes=30)),
    ],
)
def test_window_equals_the_reference(archive: Path, tmp_path: Path, since: datetime | None,
                                     until: datetime | None) -> None:  # fmt: skip
    args = [*(["--since", _iso(since)] if since else []), *(["--until", _iso(until)] if until else [])]
    found, stderr, code = hunt(archive, tmp_path, *args)
    expected = reference(archive, (since, until))
    assert code == 0, stderr
    assert expected, "the window holds hits"
    assert found == expected


def test_edges_of_the_window(archive: Path, tmp_path: Path) -> None:
    found, _, _ = hunt(archive, tmp_path, "--since", _iso(WINDOW[0]), "--until", _iso(WINDOW[1]))
    edge_ids = {flow_id - 1_000_000 for flow_id, _, _ in found if flow_id >= 1_000_000}
    assert edge_ids == {0, 3, 4, 6, 8}


def test_pruning_skips_partitions_and_row_groups(archive: Path, tmp_path: Path) -> None:
    """Window 03:30-03:45, receipts read from 02:30 to before 04:45: hours 00, 01 and 05 are not
    opened; of hours 02-04's 12 row groups (a quarter of an hour each) 02:00, 02:15 and 04:45 are
    not read."""
    _, stderr, code = hunt(archive, tmp_path, "--since", _iso(WINDOW[0]), "--until", _iso(WINDOW[1]))
    assert code == 0, stderr
    assert "read 3 of 6 files (3 outside the window by their date=/hour= folder)" in stderr
    assert "9 of 12 row groups (3 outside the window by their receipt-time statistics" in stderr
    rows_read = int(re.search(r"(\d+) flows scanned", stderr).group(1))
    per_group = [pq.ParquetFile(f).metadata.row_group(g).num_rows
                 for f in sorted(archive.rglob("*.parquet"))[2:5] for g in range(GROUPS_PER_HOUR)]  # fmt: skip
    assert rows_read == sum(per_group) - per_group[0] - per_group[1] - per_group[-1]


def test_bad_files_inside_the_window_are_named_outside_not_opened(archive: Path, tmp_path: Path) -> None:
    copy = tmp_path / "flows"
    for path in archive.rglob("*.parquet"):
        target = copy / path.relative_to(archive)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    early = copy / "date=2026-11-01" / "hour=00" / "corrupt.parquet"
    inside = copy / "date=2026-11-01" / "hour=03" / "corrupt.parquet"
    for bad in (early, inside):
        bad.write_bytes(b"PAR1" + bytes(range(256)) * 4)
    truncated = copy / "date=2026-11-01" / "hour=03" / "truncated.parquet"
    whole = next((copy / "date=2026-11-01" / "hour=03").glob("flows-*.parquet")).read_bytes()
    truncated.write_bytes(whole[:100] + whole[-(8 + int.from_bytes(whole[-8:-4], "little")) :])
    found, stderr, code = hunt(copy, tmp_path, "--since", _iso(WINDOW[0]), "--until", _iso(WINDOW[1]))
    assert code == 1
    assert f"skipped {inside}" in stderr and f"skipped {truncated}" in stderr
    assert str(early) not in stderr
    assert found == reference(archive, WINDOW)
    _, stderr, code = hunt(copy, tmp_path)
    assert code == 1 and f"skipped {early}" in stderr


def test_bad_window_is_refused(archive: Path, tmp_path: Path) -> None:
    for args, message in (
        (["--since", "yesterday"], "'yesterday' is not a time"),
        (["--since", "2026-11-02", "--until", "2026-11-01"], "must be before --until"),
    ):
        _, stderr, code = hunt(archive, tmp_path, *args)
        assert code != 0 and message in stderr


def test_alerts_to_a_pipe_that_closes(archive: Path, tmp_path: Path) -> None:
    """``shoal match --alerts - | head``, the reader gone: the hunt stops, says so, and no traceback."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "match", *intel(tmp_path), "--flows", str(archive), "--alerts", "-"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 1
    assert "Traceback" not in stderr and "the alerts output was closed after 0 hits" in stderr


def test_alert_columns_are_decoded_only_where_find_confirms_a_hit(tmp_path: Path) -> None:
    """An IP|port entry whose address is in every row group but on its port in two: every row group
    holds candidates, only those two are decoded whole, and the alerts are the reference's."""
    sink = ParquetSink(tmp_path / "flows")
    for group in range(8):
        port = {3: 443, 6: 443}.get(group, 80)
        rows = [{"src": "10.0.0.1", "dst": PORTED[0], "sport": 40000 + k, "dport": port if k % 5 == 0 else 80,
                 "received": T0 + group * QUARTER + timedelta(seconds=k), "octets": group * 100 + k} for k in range(20)]  # fmt: skip
        sink.write(flow_batch(rows))
    sink.close()
    listing = tmp_path / "ported.txt"
    listing.write_text(f"{PORTED[0]}|{PORTED[1]}\n")
    out = tmp_path / "alerts.jsonl"
    res = subprocess.run([sys.executable, "-m", "pipeline.cli", "match", "--intel", str(listing), "--flows",
                          str(tmp_path / "flows"), "--alerts", str(out)], cwd=ROOT, capture_output=True, text=True,
                         check=False)  # fmt: skip
    assert res.returncode == 0, res.stderr
    expected = set()
    for path in (tmp_path / "flows").rglob("*.parquet"):
        for row in pq.read_table(path).to_pylist():
            if str(bytes16_to_ip(row["dst_addr"])) == PORTED[0] and row["dst_port"] == PORTED[1]:
                expected.add((row["octets"], "dst"))
    found = {(a["octets"], a["side"]) for a in map(json.loads, out.read_text().splitlines())}
    assert found == expected and len(expected) == 8
    assert (
        "8 of 8 row groups (2 decoded whole for 8 flows: 160 candidates, 8 confirmed by find)" in res.stderr
    )
