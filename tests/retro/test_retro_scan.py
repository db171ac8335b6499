"""The scan's two ways of decoding a row group (whole, for the collector's row groups; batch by batch,
for row groups larger than ``WHOLE_ROWS``) keep the same rows, each with its own values, against a
naive reading of every row."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "detectors"))
from flowbatch import flow_batch

from detectors.matcher import FLOW_COLUMNS
from pipeline.retro import Reads, ScanStats, TimeWindow, plan_archive, scan_archive
from pipeline.retro import scan as scan_module
from pipeline.schemas import FLOW_SCHEMA, ip_to_bytes16

T0 = datetime(2026, 11, 1, tzinfo=UTC)
BAD = ip_to_bytes16("203.0.113.66")


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One file, row groups of 700 rows (as another writer than the collector might make them)."""
    rng = np.random.default_rng(5)
    flows = [{"src": "203.0.113.66" if rng.random() < 0.02 else f"192.0.2.{rng.integers(1, 250)}",
              "dst": "198.51.100.1", "sport": int(k % 65536), "octets": k,
              "received": T0 + timedelta(milliseconds=k)} for k in range(2100)]  # fmt: skip
    path = tmp_path_factory.mktemp("scan") / "flows.parquet"
    pq.write_table(pa.Table.from_batches([flow_batch(flows)]), path, row_group_size=700)
    return path


def bad_rows(batch: pa.RecordBatch) -> np.ndarray:
    return np.flatnonzero(np.array([v == BAD for v in batch.column("src_addr").to_pylist()]))


def hunt(path: Path) -> tuple[pa.Table, ScanStats]:
    stats = ScanStats()
    window = TimeWindow()
    plans = plan_archive([str(path)], list(FLOW_COLUMNS), window, stats)
    reads = Reads(list(FLOW_COLUMNS), ["src_addr", "dst_addr"], bad_rows)
    return pa.Table.from_batches(list(scan_archive(plans, reads, window, stats)), schema=_schema()), stats


def _schema() -> pa.Schema:
    return pa.schema([FLOW_SCHEMA.field(name) for name in FLOW_COLUMNS])


@pytest.mark.parametrize("whole_rows, batch_rows", [(700, 65536), (0, 256), (0, 700)])
def test_whole_and_batch_by_batch_keep_the_same_rows(
    archive: Path, monkeypatch: pytest.MonkeyPatch, whole_rows: int, batch_rows: int
) -> None:
    monkeypatch.setattr(scan_module, "WHOLE_ROWS", whole_rows)
    monkeypatch.setattr(scan_module, "BATCH_ROWS", batch_rows)
    found, stats = hunt(archive)
    naive = [row for row in pq.read_table(archive).to_pylist() if row["src_addr"] == BAD]
    assert len(naive) > 20
    assert found.to_pylist() == [{name: row[name] for name in FLOW_COLUMNS} for row in naive]
    assert stats.row_groups_read == 3 and stats.flows_read == 2100 and stats.flows_kept == len(naive)
