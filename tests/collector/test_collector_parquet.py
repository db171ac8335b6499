import contextlib
import datetime as dt
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from collector_helpers import flow_batch

from pipeline.schemas import FLOW_SCHEMA, V4_MAPPED_PREFIX
from pipeline.sinks.base import Sink, SinkError
from pipeline.sinks.parquet import ParquetSink, read_flows

T0 = dt.datetime(2026, 3, 4, 22, 59, 0, tzinfo=dt.UTC)


def _mount_point() -> Path:
    """An empty directory outside pytest's temporary tree: another pytest session on the machine
    may rename that tree away while the tmpfs is mounted, and the unmount then fails."""
    return Path(tempfile.mkdtemp(prefix="shoal-small-disk-"))


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_partitions_by_hour_readable_by_pyarrow_and_duckdb(tmp_path: Path):
    sink = ParquetSink(tmp_path)
    assert isinstance(sink, Sink)
    batch = flow_batch(120, T0, step_s=1.0)  # 22:59:00 .. 23:00:59 -> two hours
    sink.write(batch)
    sink.close()
    files = _files(tmp_path)
    parts = sorted({f.parent.relative_to(tmp_path).as_posix() for f in files})
    assert parts == ["date=2026-03-04/hour=22", "date=2026-03-04/hour=23"]
    assert all(f.suffix == ".parquet" and not f.name.startswith(".") for f in files)
    for f in files:
        md = pq.read_metadata(f)
        assert md.row_group(0).column(0).compression == "LZ4"
    table = read_flows(tmp_path).sort_by("src_port")
    assert table.column("src_port").to_pylist() == list(range(1, 121))
    assert table.to_pydict() == batch.to_pydict()  # same rows, same values
    con = duckdb.connect()
    rows = con.execute(
        f"select hour, count(*) from read_parquet('{tmp_path}/**/*.parquet', hive_partitioning=true) "
        "group by hour order by hour"
    ).fetchall()
    assert rows == [(22, 60), (23, 60)]


def _random_flows(n: int, seed: int = 5) -> pa.RecordBatch:
    """Every column over its whole range: IPv4 and IPv6 addresses, counters near 2**64, nulls."""
    rng = np.random.default_rng(seed)
    cols = {}
    for field in FLOW_SCHEMA:
        if pa.types.is_fixed_size_binary(field.type):
            raw = rng.integers(0, 256, (n, 16), dtype=np.uint8)
            raw[::2, :12] = np.frombuffer(V4_MAPPED_PREFIX, dtype=np.uint8)  # every other row IPv4
            values = [bytes(r) for r in raw]
        elif pa.types.is_timestamp(field.type):
            values = (1_790_000_000_000_000 + rng.integers(-(10**12), 10**12, n)).tolist()
        else:
            bits = field.type.bit_width
            values = rng.integers(0, 2**bits, n, dtype=np.uint64 if bits == 64 else np.int64).tolist()
        if field.nullable:
            values = [None if i % 7 == 3 else v for i, v in enumerate(values)]
        cols[field.name] = pa.array(values, type=field.type)
    return pa.RecordBatch.from_pydict(cols, schema=FLOW_SCHEMA)


def test_default_archive_reads_back_identically_in_duckdb_and_pyarrow(tmp_path: Path):
    """The default codec and encodings (LZ4_RAW, BYTE_STREAM_SPLIT integers, statistics on the time
    column) must stay plain Parquet for the retro-hunt and analysts' DuckDB: every value, column by
    column, as both readers see it."""
    batch = _random_flows(5000)
    sink = ParquetSink(tmp_path)
    sink.write(batch.set_column(0, "time_received", pa.array([T0] * 5000, FLOW_SCHEMA.field(0).type)))
    sink.close()
    written = read_flows(tmp_path)
    assert written.num_rows == 5000
    expected = batch.to_pydict()
    expected["time_received"] = [T0] * 5000
    assert written.to_pydict() == expected
    con = duckdb.connect()
    meta = con.execute(
        f"select path_in_schema, compression, encodings, stats_min is not null "
        f"from parquet_metadata('{tmp_path}/**/*.parquet')"
    ).fetchall()
    assert {m[1] for m in meta} == {"LZ4_RAW"}
    assert all("BYTE_STREAM_SPLIT" in m[2] for m in meta if m[0] in ("octets", "flow_start", "tos"))
    assert [m[0] for m in meta if m[3]] == ["time_received"]  # row-group pruning by time
    names = [f.name for f in FLOW_SCHEMA]
    rows = con.execute(f"select {', '.join(names)} from read_parquet('{tmp_path}/**/*.parquet')").fetchall()
    got = dict(zip(names, map(list, zip(*rows, strict=True)), strict=True))
    for name in names:
        want = expected[name]
        if pa.types.is_timestamp(FLOW_SCHEMA.field(name).type):  # DuckDB: timezone-aware datetimes
            got[name] = [v.astimezone(dt.UTC) if v is not None else None for v in got[name]]
        assert got[name] == want, name


@pytest.mark.parametrize("codec", ["lzo", "bogus"])
def test_a_codec_this_pyarrow_cannot_write_fails_at_check(tmp_path: Path, codec: str):
    """pyarrow writes no LZO (and builds without LZ4 or zstd exist): the collector must refuse to
    start rather than buffer every batch forever; the probe leaves nothing behind."""
    with pytest.raises(SinkError, match="cannot write Parquet"):
        ParquetSink(tmp_path / "archive", compression=codec).check()
    assert _files(tmp_path) == []
    ParquetSink(tmp_path / "archive").check()  # the default works and leaves nothing either
    assert _files(tmp_path) == []


def test_open_files_are_invisible_until_complete(tmp_path: Path):
    sink = ParquetSink(tmp_path, roll_seconds=3600)
    sink.write(flow_batch(10, T0))
    visible = [f for f in _files(tmp_path) if not f.name.startswith(".")]
    assert visible == []
    assert len(read_flows(tmp_path)) == 0
    sink.flush()
    assert len(read_flows(tmp_path)) == 10
    sink.write(flow_batch(5, T0))
    sink.close()
    assert len(read_flows(tmp_path)) == 15
    assert len([f for f in _files(tmp_path) if f.suffix == ".parquet"]) == 2
    with pytest.raises(SinkError):
        sink.write(flow_batch(1, T0))


def test_rolls_by_size_and_time(tmp_path: Path):
    sink = ParquetSink(tmp_path, roll_bytes=20_000, roll_seconds=3600)
    for i in range(20):
        sink.write(flow_batch(500, T0, step_s=0.001, first_port=i * 500))
    sink.close()
    assert sink.files_written > 3
    assert len(read_flows(tmp_path)) == 10_000

    timed = tmp_path / "timed"
    sink = ParquetSink(timed, roll_seconds=0.05)
    sink.write(flow_batch(10, T0))
    time.sleep(0.06)
    sink.write(flow_batch(10, T0))  # this write finds the file due and rolls it
    assert len(read_flows(timed)) == 20
    sink.close()


def test_unwritable_directory_raises_sink_error_and_recovers(tmp_path: Path):
    target = tmp_path / "archive"
    target.write_text("not a directory")  # mkdir fails even as root
    sink = ParquetSink(target)
    with pytest.raises(SinkError):
        sink.write(flow_batch(10, T0))
    target.unlink()
    sink.write(flow_batch(10, T0))
    sink.close()
    assert len(read_flows(target)) == 10


def _open_under(directory: Path) -> list[str]:
    """Files under ``directory`` this process still holds open."""
    fds = Path("/proc/self/fd")
    held = []
    for fd in fds.iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith(f"{directory}/"):
                held.append(target)
    return held


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mount"), reason="needs root to mount a tmpfs")
def test_disk_full_raises_sink_error_and_keeps_completed_files(tmp_path: Path):
    mnt = _mount_point()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(mnt)], check=True)
    try:
        sink = ParquetSink(mnt, compression="none", roll_bytes=50_000)
        written = 0
        with pytest.raises(SinkError):
            for i in range(1000):
                sink.write(flow_batch(200, T0, step_s=0.001, first_port=i))
                written += 200
        assert not [f for f in _files(mnt) if f.name.startswith(".")]  # no temp litter
        kept = len(read_flows(mnt))
        assert 0 < kept <= written
        assert kept + sink.rows_lost == written
        assert _open_under(mnt) == []
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
        mnt.rmdir()


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mount"), reason="needs root to mount a tmpfs")
def test_disk_full_every_row_is_written_or_counted_as_dropped(tmp_path: Path):
    """Issue 15, item 6: as the collector wraps it, a sink on a filling disk reports as written only
    the rows that are in completed files, and every other row as dropped (none silently vanish)."""
    from prometheus_client import CollectorRegistry

    from pipeline.sinks.buffered import BufferedSink

    mnt = _mount_point()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(mnt)], check=True)
    try:
        registry = CollectorRegistry()
        sink = BufferedSink(ParquetSink(mnt, compression="none", roll_bytes=1 << 30), registry,
                            max_rows=1000, retry_seconds=0.0)  # fmt: skip
        sink.check()
        offered = 0
        for i in range(60):
            sink.write(flow_batch(300, T0, step_s=0.001, first_port=i))
            offered += 300
        sink.close()
        on_disk = len(read_flows(mnt))
        assert 0 < on_disk < offered
        assert sink.written_rows == on_disk
        assert sink.written_rows + sink.dropped_rows == offered
        assert (
            registry.get_sample_value("shoal_sink_dropped_rows_total", {"sink": "parquet"})
            == offered - on_disk
        )
        assert _open_under(mnt) == []  # a full disk leaks no file handle (it would keep the space)
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
        mnt.rmdir()
