"""``shoal match`` end to end: flows archived by the collector's Parquet sink, intel files, an mmdb
built with mmdb-writer, alerts as JSON lines; and ``shoal intel stats``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import stix2
from mmdb_writer import MMDBWriter
from netaddr import IPSet

sys.path.insert(0, str(Path(__file__).parent.parent / "detectors"))
from flowbatch import flow_batch

ROOT = Path(__file__).resolve().parents[2]


def shoal(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args], check=False, cwd=ROOT, capture_output=True, text=True
    )


def test_match_writes_alert_lines_with_geoip(tmp_path: Path) -> None:
    flows_dir = tmp_path / "flows" / "date=2026-11-01" / "hour=12"
    flows_dir.mkdir(parents=True)
    batch = flow_batch([
        {"src": "192.0.2.1", "dst": "203.0.113.66", "sport": 50000, "dport": 443},
        {"src": "192.0.2.2", "dst": "198.51.100.1", "sport": 50001, "dport": 80},
        {"src": "203.0.113.66", "dst": "192.0.2.3", "sport": 443, "dport": 50002},
    ])  # fmt: skip
    pq.write_table(pa.Table.from_batches([batch]), flows_dir / "part-0.parquet")
    bundle = tmp_path / "intel.json"
    ind = stix2.Indicator(pattern="[ipv4-addr:value = '203.0.113.66']", pattern_type="stix",
                          valid_from="2026-01-01T00:00:00Z", confidence=70, object_marking_refs=[stix2.TLP_GREEN])  # fmt: skip
    bundle.write_text(stix2.Bundle(ind).serialize())
    mmdb = tmp_path / "asn.mmdb"
    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="Test-ASN")
    writer.insert_network(IPSet(["203.0.113.0/24"]), {"autonomous_system_number": 64511,
                          "autonomous_system_organization": "Example Hosting", "country": {"iso_code": "NL"}})  # fmt: skip
    writer.to_db_file(str(mmdb))
    out = tmp_path / "alerts.jsonl"
    res = shoal(
        "match",
        "--intel",
        str(bundle),
        "--flows",
        str(tmp_path / "flows"),
        "--alerts",
        str(out),
        "--geoip",
        str(mmdb),
    )
    assert res.returncode == 0, res.stderr
    alerts = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted((a["src_addr"], a["side"]) for a in alerts) == [
        ("192.0.2.1", "dst"),
        ("203.0.113.66", "src"),
    ]
    for a in alerts:
        assert a["indicator_id"] == ind.id and a["indicator"] == ind.pattern
        assert (a["confidence"], a["tlp"], a["remote_as"], a["remote_country"]) == (70, "green", 64511, "NL")
        assert a["valid_until"] is None
    assert "3 flows scanned, 2 hits" in res.stderr


def test_intel_stats_counts_by_kind(tmp_path: Path) -> None:
    path = tmp_path / "list.txt"
    path.write_text("203.0.113.1\n198.51.100.0/24\n2001:db8::1\nnot-an-address\n203.0.113.9|443\n")
    res = shoal("intel", "stats", str(path))
    assert res.returncode == 0, res.stderr
    assert "4 indicators" in res.stdout
    assert (
        "'ipv4-address': 1" in res.stdout
        and "'ipv4-cidr': 1" in res.stdout
        and "'ipv6-address': 1" in res.stdout
    )
    assert "list.txt:4" in res.stdout  # the bad line is named


@pytest.mark.parametrize(
    "case", ["empty-list", "missing-feed-files", "directory-named-json", "only-unsupported"]
)
def test_a_named_source_that_yields_nothing_fails_the_hunt(tmp_path: Path, case: str) -> None:
    """'0 hits' from a source that held nothing usable must not look like a clean hunt (issue 15, 12)."""
    flows_dir = tmp_path / "flows"
    flows_dir.mkdir()
    batch = flow_batch([{"src": "192.0.2.1", "dst": "203.0.113.66", "sport": 50000, "dport": 443}])
    pq.write_table(pa.Table.from_batches([batch]), flows_dir / "part-0.parquet")
    if case == "empty-list":
        source = tmp_path / "empty.txt"
        source.write_text("# nothing yet\n")
    elif case == "missing-feed-files":
        source = tmp_path / "feed"
        source.mkdir()
        (source / "manifest.json").write_text('{"5d3e7f1a-0000-4000-8000-000000000001": {}}')
    elif case == "directory-named-json":
        source = tmp_path / "x.json"
        source.mkdir()
    else:
        source = tmp_path / "domains.json"
        ind = stix2.Indicator(pattern="[domain-name:value = 'evil.example']", pattern_type="stix",
                              valid_from="2026-01-01T00:00:00Z")  # fmt: skip
        source.write_text(stix2.Bundle(ind).serialize())
    res = shoal(
        "match", "--intel", str(source), "--flows", str(flows_dir), "--alerts", str(tmp_path / "a.jsonl")
    )
    assert res.returncode != 0
    assert f"{source}: no usable indicator" in res.stderr, res.stderr
