"""Issue 15, item 2: a row no stage can handle (a flow time in the year 33658, archived by an older
collector or sent by an older one over Kafka) is dropped and counted; the rows around it still alert,
and the stream behind it is never blocked. Also item 16: ``shoal match`` skips and names files that
are not flow archives instead of aborting the hunt."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import stix2
from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).parent.parent / "detectors"))
from flowbatch import flow_batch

from detectors.matcher import Matcher, MatcherHandle
from pipeline.commands.match import build_index
from pipeline.runtime.alerts import JsonLinesOutput
from pipeline.runtime.matching import MatchingSink
from pipeline.schemas import FLOW_SCHEMA
from pipeline.sinks.buffered import BufferedSink

ROOT = Path(__file__).resolve().parents[2]
BAD = "203.0.113.66"
YEAR_33658_US = 10**18


def intel(tmp_path: Path) -> Path:
    bundle = tmp_path / "intel.json"
    ind = stix2.Indicator(pattern=f"[ipv4-addr:value = '{BAD}']", pattern_type="stix",
                          valid_from="2020-01-01T00:00:00Z")  # fmt: skip
    bundle.write_text(stix2.Bundle(ind).serialize())
    return bundle


def with_absurd_time(batch: pa.RecordBatch, row: int) -> pa.RecordBatch:
    """``batch`` with ``row``'s flow start and end 10^18 µs after the epoch (what a spoofed record
    made an older collector archive)."""
    columns = []
    for name in batch.schema.names:
        column = batch.column(name)
        if name in ("flow_start", "flow_end"):
            values = column.cast(pa.int64()).to_pylist()
            values[row] = YEAR_33658_US
            column = pa.array(values, pa.int64()).cast(FLOW_SCHEMA.field(name).type)
        columns.append(column)
    return pa.RecordBatch.from_arrays(columns, schema=batch.schema)


def flows(*sources: str) -> pa.RecordBatch:
    return flow_batch(
        [{"src": s, "dst": BAD, "sport": 40000 + i, "dport": 443} for i, s in enumerate(sources)]
    )


def test_embedded_matcher_drops_the_bad_row_and_keeps_alerting(tmp_path: Path) -> None:
    args = argparse.Namespace(
        intel=[str(intel(tmp_path))], min_confidence=0, all_attributes=False, allowlist=[]
    )
    index, _ = build_index(args)
    registry = CollectorRegistry()
    out = tmp_path / "alerts.jsonl"
    matching = MatchingSink(MatcherHandle(Matcher(index)), [JsonLinesOutput(out)], registry)
    sink = BufferedSink(matching, registry, retry_seconds=0.001)  # as `shoal run` wraps it
    sink.write(with_absurd_time(flows("192.0.2.1", "192.0.2.2"), 0))
    sink.write(flows("192.0.2.3"))
    sink.close()
    alerted = [json.loads(line)["src_addr"] for line in out.read_text().splitlines()]
    assert alerted == ["192.0.2.2", "192.0.2.3"]
    assert sink.buffered_rows == 0 and sink.dropped_rows == 0
    assert matching.dropped == {"flows": 0, "alerts": 1}
    assert registry.get_sample_value("shoal_matcher_dropped_rows_total", {"what": "alerts"}) == 1


def shoal(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], check=False, cwd=ROOT,
                          capture_output=True, text=True)  # fmt: skip


def test_match_skips_bad_files_and_rows_and_names_them(tmp_path: Path) -> None:
    archive = tmp_path / "flows" / "date=2026-11-01" / "hour=12"
    archive.mkdir(parents=True)
    pq.write_table(pa.Table.from_batches([with_absurd_time(flows("192.0.2.1", "192.0.2.2"), 0)]),
                   archive / "a-good.parquet")  # fmt: skip
    (archive / "b-corrupt.parquet").write_bytes(b"PAR1" + bytes(range(256)) * 8)
    (archive / "c-empty.parquet").write_bytes(b"")
    pq.write_table(pa.table({"who": ["knows"]}), archive / "d-foreign.parquet")
    pq.write_table(pa.Table.from_batches([flows("192.0.2.5")]), archive / "e-good.parquet")
    out = tmp_path / "hits.jsonl"
    res = shoal(
        "match", "--intel", str(intel(tmp_path)), "--flows", str(tmp_path / "flows"), "--alerts", str(out)
    )
    assert "Traceback" not in res.stderr
    assert res.returncode == 1, res.stderr
    assert [json.loads(line)["src_addr"] for line in out.read_text().splitlines()] == [
        "192.0.2.2",
        "192.0.2.5",
    ]
    for name in ("b-corrupt", "c-empty", "d-foreign"):
        assert f"skipped {archive / name}.parquet" in res.stderr
    assert "0 flows and 1 alerts dropped" in res.stderr


def test_match_with_no_readable_file_fails(tmp_path: Path) -> None:
    bad = tmp_path / "x.parquet"
    bad.write_bytes(b"not parquet")
    res = shoal(
        "match", "--intel", str(intel(tmp_path)), "--flows", str(bad), "--alerts", str(tmp_path / "o")
    )
    assert res.returncode == 2 and "Traceback" not in res.stderr and f"skipped {bad}" in res.stderr
