"""Archive encodings: CPU per flow row to write the collector's 64k-row flow batches to disk.

The collector's writer thread spends most of its time here, so this bounds what the collector can
reach (bench_collect.py). Batches come from the collector's own path (bench_collect's v9 + IPFIX
stream, ``decode_block`` into a ``Batcher``). Cases:

- ``ParquetSink``: what ``shoal collect`` writes (LZ4, PLAIN, byte-stream-split integers, statistics
  on the time column only, files partitioned by hour), and the same with zstd level 1 (the default
  before issue 14);
- the same writer options with no compression, and pyarrow's defaults (dictionary, statistics,
  snappy) for comparison;
- DuckDB's Parquet writer (``COPY ... (FORMAT parquet)``, zstd, one thread): another maintained one;
- Arrow IPC files (zstd, lz4, uncompressed): what a cheaper archive format would cost.

Figures are CPU-seconds of this process (user + sys, so page-cache writes count) per row, best and
median of ``--repeat`` runs, cases interleaved so load drifts hit all of them alike.

    .venv/bin/python -m benchmarks.bench_archive [--batches 24] [--repeat 3]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.bench_collect import build_stream, output_bytes
from benchmarks.machine import machine_line
from pipeline.allocator import tune_allocator
from pipeline.collector.batcher import Batcher
from pipeline.decode import FlowDecoder
from pipeline.schemas import FLOW_SCHEMA
from pipeline.sinks.parquet import ParquetSink

ROWS = 65536


def flow_batches(count: int) -> list[pa.RecordBatch]:
    """``count`` full batches as the collector builds them (receive-buffer rows -> Batcher)."""
    v9, ipfix, _ = build_stream(2048)
    packets, source = [], []
    for i in range(0, 2048, 32):
        packets += v9[i : i + 32] + ipfix[i : i + 32]
        source += [0] * 32 + [1] * 32
    data = np.zeros((len(packets), 1500), dtype=np.uint8)
    for i, p in enumerate(packets):
        data[i, : len(p)] = np.frombuffer(p, dtype=np.uint8)
    lengths = np.array([len(p) for p in packets])
    sources = np.array(source, dtype=np.intp)
    exporters = [("192.0.2.1", 40000), ("192.0.2.2", 40001)]
    decoder, batcher = FlowDecoder(), Batcher(FLOW_SCHEMA, ROWS, 1e9)
    out: list[pa.RecordBatch] = []
    while len(out) < count:
        for i in range(0, len(packets), 2048):
            rows = slice(i, i + 2048)
            decoder.decode_block(
                data[rows], lengths[rows], sources[rows], exporters, time.time(), into=batcher
            )
            out += [ready.batch for ready in batcher.collect()]
    return out[:count]


def _integer_columns() -> list[str]:
    return [f.name for f in FLOW_SCHEMA if pa.types.is_integer(f.type) or pa.types.is_timestamp(f.type)]


def parquet_sink(batches: list[pa.RecordBatch], where: Path, **options) -> None:
    sink = ParquetSink(where, **options)
    for b in batches:
        sink.write(b)
    sink.close()


def parquet_sink_zstd(batches: list[pa.RecordBatch], where: Path) -> None:
    parquet_sink(batches, where, compression="zstd", compression_level=1)


def parquet_uncompressed(batches: list[pa.RecordBatch], where: Path) -> None:
    options = {"use_dictionary": False, "write_statistics": ["time_received"]}
    with pq.ParquetWriter(
        where / "f.parquet",
        FLOW_SCHEMA,
        compression="none",
        use_byte_stream_split=_integer_columns(),
        **options,
    ) as w:
        for b in batches:
            w.write_batch(b)


def parquet_defaults(batches: list[pa.RecordBatch], where: Path) -> None:
    with pq.ParquetWriter(where / "f.parquet", FLOW_SCHEMA) as w:
        for b in batches:
            w.write_batch(b)


def duckdb_parquet(batches: list[pa.RecordBatch], where: Path) -> None:
    import duckdb

    con = duckdb.connect(config={"threads": 1})
    con.register("flows", pa.Table.from_batches(batches))
    target = where / "f.parquet"
    con.execute(
        f"COPY flows TO '{target}' (FORMAT parquet, COMPRESSION zstd, COMPRESSION_LEVEL 1, ROW_GROUP_SIZE {ROWS})"
    )
    con.close()


def arrow_ipc(codec: str | None) -> Callable[[list[pa.RecordBatch], Path], None]:
    options = pa.ipc.IpcWriteOptions(
        compression=pa.Codec(codec, 1 if codec == "zstd" else None) if codec else None
    )

    def write(batches: list[pa.RecordBatch], where: Path) -> None:
        with (
            pa.OSFile(str(where / "f.arrow"), "wb") as f,
            pa.ipc.new_file(f, FLOW_SCHEMA, options=options) as w,
        ):
            for b in batches:
                w.write_batch(b)

    return write


CASES: dict[str, Callable[[list[pa.RecordBatch], Path], None]] = {
    "ParquetSink (shoal collect: LZ4, tuned)": parquet_sink,
    "ParquetSink, zstd 1 (the default before)": parquet_sink_zstd,
    "Parquet, same options, uncompressed": parquet_uncompressed,
    "Parquet, pyarrow defaults (snappy, dict, stats)": parquet_defaults,
    "Parquet by DuckDB (zstd 1, 1 thread)": duckdb_parquet,
    "Arrow IPC file, zstd 1": arrow_ipc("zstd"),
    "Arrow IPC file, lz4": arrow_ipc("lz4"),
    "Arrow IPC file, uncompressed": arrow_ipc(None),
}


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=24, help=f"batches of {ROWS} rows per run")
    ap.add_argument("--repeat", type=int, default=3, help="runs per case")
    args = ap.parse_args()
    tune_allocator()
    batches = flow_batches(args.batches)
    rows = sum(b.num_rows for b in batches)
    try:
        import duckdb  # noqa: F401  (a test dependency; skipped where absent)
    except ImportError:
        CASES.pop("Parquet by DuckDB (zstd 1, 1 thread)")
    print(machine_line())
    print(f"{len(batches)} batches x {ROWS} rows ({rows:,} flows), schema {len(FLOW_SCHEMA)} columns")
    cpu: dict[str, list[float]] = {name: [] for name in CASES}
    size: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="shoal-archive-") as tmp:
        for number, write in enumerate(CASES.values()):  # warm-up: first calls load code, not timed
            (Path(tmp) / f"warm-{number}").mkdir()
            write(batches[:1], Path(tmp) / f"warm-{number}")
        for run in range(args.repeat):
            for name, write in CASES.items():
                where = Path(tmp) / f"{run}-{len(cpu[name])}-{abs(hash(name))}"
                where.mkdir()
                start = _cpu()
                write(batches, where)
                cpu[name].append(_cpu() - start)
                size[name] = output_bytes(where)
                shutil.rmtree(where)
    print(f"{'case':50s} {'ns/row best':>12s} {'median':>8s} {'B/row':>7s}")
    for name, seconds in cpu.items():
        best, median = min(seconds) / rows * 1e9, statistics.median(seconds) / rows * 1e9
        print(f"{name:50s} {best:12.0f} {median:8.0f} {size[name] / rows:7.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
