"""Parquet archive of flow batches: ``DIR/date=YYYY-MM-DD/hour=HH/flows-*.parquet``.

Files are written under a dot-prefixed temporary name (ignored by pyarrow datasets and DuckDB globs)
and renamed only once complete, so a reader never sees a file without its footer. Files roll on age,
size, hour change and :meth:`flush`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.schemas import FLOW_SCHEMA
from pipeline.sinks.base import BatchRejected, SinkError

log = logging.getLogger(__name__)

_US_PER_HOUR = 3_600_000_000


@dataclass
class _OpenFile:
    tmp: Path
    final: Path
    stream: pa.NativeFile
    """Opened by the sink, not the writer: pyarrow's ``ParquetWriter.close`` leaves a file it opened
    itself open when writing the footer fails (a full disk), until garbage collection."""
    writer: pq.ParquetWriter
    opened: float
    rows: int = 0

    def close(self) -> None:
        """Footer written, then the file closed whatever happened to the footer."""
        try:
            self.writer.close()
        finally:
            self.stream.close()


class ParquetSink:
    """Implements :class:`pipeline.sinks.base.Sink`. ``time_column`` chooses the partition hour."""

    def __init__(
        self,
        directory: str | Path,
        *,
        roll_seconds: float = 300.0,
        roll_bytes: int = 256 * 1024 * 1024,
        compression: str = "lz4",
        compression_level: int | None = 1,
        schema: pa.Schema = FLOW_SCHEMA,
        time_column: str = "time_received",
        name: str = "parquet",
        tag: str = "",
    ) -> None:
        """``tag``: part of every file name (a collector worker's ``w1``...), so that several writers
        into one directory never clash and each file says which one wrote it."""
        self.name = name
        self.tag = tag
        self.directory = Path(directory)
        self.roll_seconds = roll_seconds
        self.roll_bytes = roll_bytes
        self.compression = compression
        self.compression_level = compression_level if compression in {"zstd", "gzip", "brotli"} else None
        self.schema = schema
        self.time_column = time_column
        # Measured on flow batches (benchmarks/README.md): dictionary encoding and statistics on every
        # column cost ~3x the CPU for no size gain on high-cardinality flow fields; BYTE_STREAM_SPLIT on
        # integer columns makes zstd both faster and smaller. DuckDB reads BSS only for int/float
        # columns, so the 16-byte address columns stay PLAIN. Statistics are kept on the time column
        # (row-group pruning by time).
        self._writer_options = {
            "use_dictionary": False,
            "write_statistics": [time_column],
            "use_byte_stream_split": [
                f.name
                for f in schema
                if pa.types.is_integer(f.type)
                or pa.types.is_timestamp(f.type)
                or pa.types.is_floating(f.type)
            ],
        }
        self.files_written = 0
        self.rows_lost = 0
        """Rows already accepted into a file that could not be completed (e.g. disk full at close)."""
        self.confirmed_rows = 0
        """Rows in completed files (renamed into place with their footer)."""
        self._open: dict[int, _OpenFile] = {}
        self._closed = False

    # -- Sink interface -------------------------------------------------------------------------
    def check(self) -> None:
        """Fail at start, not after accepting data, if the directory cannot take files or this
        pyarrow cannot write the codec (builds without LZ4 or zstd exist): a one-row file with the
        archive's settings, written under a dot-name and removed. The writer's first-use set-up is
        then paid at start, not by the first batch."""
        probe = self.directory / f".shoal-probe-{uuid.uuid4().hex}"
        try:
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
                probe.write_bytes(b"")
            except OSError as exc:
                raise SinkError(
                    f"{self.name}: cannot write under {self.directory}: {exc.strerror or exc}"
                ) from exc
            try:  # pyarrow reports an unsupported codec as OSError or ArrowException
                with pq.ParquetWriter(probe, self.schema, **self._writer_settings()) as writer:
                    writer.write_batch(_zero_row(self.schema))
            except (OSError, pa.ArrowException, ValueError) as exc:
                raise SinkError(
                    f"{self.name}: cannot write Parquet with {self.compression!r}: {exc}"
                ) from exc
        finally:
            _unlink_quietly(probe)

    def write(self, batch: pa.RecordBatch) -> None:
        if self._closed:
            raise SinkError(f"{self.name}: sink is closed")
        if batch.num_rows == 0:
            return
        if batch.schema != self.schema:
            try:
                batch = batch.cast(self.schema)
            except (pa.ArrowInvalid, ValueError) as exc:  # retrying would fail the same way
                raise BatchRejected(f"{self.name}: batch does not match the flow schema: {exc}") from exc
        for hour, part in self._split_by_hour(batch):
            self._write_part(hour, part)
        self._roll_due()

    def flush(self) -> None:
        """Complete every open file (a Parquet file is readable only once its footer is written)."""
        errors = []
        for hour in list(self._open):
            try:
                self._finish(hour)
            except SinkError as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    def close(self) -> None:
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._closed = True

    # -- internals ------------------------------------------------------------------------------
    def _split_by_hour(self, batch: pa.RecordBatch) -> list[tuple[int, pa.RecordBatch]]:
        # the same buffer read as int64 (a cast would copy it: ~2 ns/row)
        micros = batch.column(self.time_column).view(pa.int64()).to_numpy(zero_copy_only=False)
        first = int(micros.min()) // _US_PER_HOUR
        if int(micros.max()) // _US_PER_HOUR == first:  # the usual case: no per-row division
            return [(first, batch)]
        hours = micros // _US_PER_HOUR
        out = []
        for hour in np.unique(hours).tolist():
            out.append((hour, batch.filter(pa.array(hours == hour))))
        return out

    def _path_for(self, hour: int) -> tuple[Path, Path]:
        stamp = time.gmtime(hour * 3600)
        folder = self.directory / f"date={time.strftime('%Y-%m-%d', stamp)}" / f"hour={stamp.tm_hour:02d}"
        tag = f"{self.tag}-" if self.tag else ""
        name = f"flows-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{tag}{uuid.uuid4().hex[:12]}.parquet"
        return folder / f".{name}.tmp", folder / name

    def _write_part(self, hour: int, part: pa.RecordBatch) -> None:
        current = self._open.get(hour)
        if current is None:
            tmp, final = self._path_for(hour)
            try:
                tmp.parent.mkdir(parents=True, exist_ok=True)
                stream = pa.OSFile(str(tmp), "wb")
            except OSError as exc:
                raise SinkError(f"{self.name}: cannot open {tmp}: {exc}") from exc
            try:
                writer = pq.ParquetWriter(stream, self.schema, **self._writer_settings())
            except BaseException:
                stream.close()
                raise
            current = self._open[hour] = _OpenFile(tmp, final, stream, writer, time.monotonic())
        try:
            current.writer.write_batch(part)
        except (OSError, pa.ArrowException) as exc:
            # The file's tail is now unknown: abandon it (its earlier row groups are counted as lost)
            # and report the batch as not written so the caller can retry it.
            self._abandon(hour)
            raise SinkError(f"{self.name}: write to {current.tmp} failed: {exc}") from exc
        current.rows += part.num_rows

    def _writer_settings(self) -> dict:
        return {
            "compression": self.compression,
            "compression_level": self.compression_level,
            **self._writer_options,
        }

    def _roll_due(self) -> None:
        now = time.monotonic()
        for hour, f in list(self._open.items()):
            newer_hour_open = any(h > hour for h in self._open)
            if now - f.opened >= self.roll_seconds or newer_hour_open or self._size(f) >= self.roll_bytes:
                self._finish(hour)

    @staticmethod
    def _size(f: _OpenFile) -> int:
        try:
            return f.tmp.stat().st_size
        except OSError:
            return 0

    def _finish(self, hour: int) -> None:
        f = self._open.pop(hour)
        try:
            f.close()
            os.replace(f.tmp, f.final)
        except (OSError, pa.ArrowException) as exc:
            self.rows_lost += f.rows
            _unlink_quietly(f.tmp)
            log.error("%s: could not complete %s, %d rows lost: %s", self.name, f.final, f.rows, exc)
            raise SinkError(f"{self.name}: could not complete {f.final}: {exc}") from exc
        self.files_written += 1
        self.confirmed_rows += f.rows

    def _abandon(self, hour: int) -> None:
        f = self._open.pop(hour)
        try:
            f.close()
            # Keep the file only if its footer lists exactly the rows accepted before the failure.
            if pq.read_metadata(f.tmp).num_rows != f.rows:
                raise OSError("row count mismatch after failed write")
            os.replace(f.tmp, f.final)
            self.files_written += 1
            self.confirmed_rows += f.rows
        except (OSError, pa.ArrowException):
            self.rows_lost += f.rows
            _unlink_quietly(f.tmp)
            log.error("%s: abandoned %s, %d rows lost", self.name, f.final, f.rows)


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


def _zero_row(schema: pa.Schema) -> pa.RecordBatch:
    """One row of zeros (empty strings, false) in ``schema``."""

    def zero(t: pa.DataType) -> object:
        if pa.types.is_fixed_size_binary(t):
            return bytes(t.byte_width)
        if pa.types.is_binary(t) or pa.types.is_large_binary(t):
            return b""
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            return ""
        return False if pa.types.is_boolean(t) else 0

    return pa.RecordBatch.from_arrays([pa.array([zero(f.type)], f.type) for f in schema], schema=schema)


def read_flows(directory: str | Path) -> pa.Table:
    """All completed flow files under ``directory`` as one table (temporary files are ignored)."""
    files = sorted(p for p in Path(directory).rglob("*.parquet") if not p.name.startswith("."))
    if not files:
        return FLOW_SCHEMA.empty_table()
    tables = []
    for path in files:
        # Opened and closed here: pq.read_table(path) leaves its file open until garbage collection
        # (a reference cycle), which keeps a deleted file's space, or a file system, busy.
        with pa.OSFile(str(path)) as source:
            tables.append(pq.read_table(source, schema=FLOW_SCHEMA))
    return pa.concat_tables(tables)


__all__ = ["ParquetSink", "read_flows"]
