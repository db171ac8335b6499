"""Plain indicator lists and CSV files, read as columns (millions of lines, no object per line).

A list has one entry per line: an address, a CIDR or ``address|port``, then optionally a reference
(``1.10.16.0/20 ; SBL256894`` in Spamhaus DROP, ``203.0.113.5 # botnet C2`` elsewhere) kept as the
indicator's name. ``#`` and ``;`` start comments, as in the common blocklist formats (Spamhaus,
FireHOL, abuse.ch).

The file is read in blocks; :mod:`pipeline.intel.textscan` splits and parses each block in compiled
code, and only the lines it does not read itself (IPv6, malformed entries, non-ASCII lines) go
through :func:`split_line` and :func:`parse_entry` here, so a bad line gets the same named error
with its line number either way. CSV files are read by pyarrow's CSV reader; a file it cannot
read row for row as Python's ``csv`` would (rows of another width, multi-line values) is read by
``csv`` instead.
"""

from __future__ import annotations

import csv
import ipaddress
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from pipeline.intel import textscan
from pipeline.intel.load import IntelError, IntelLoad
from pipeline.intel.model import Condition
from pipeline.intel.progress import Progress
from pipeline.intel.table import IndicatorTable

BLOCK_BYTES = 32 << 20
"""Bytes read and scanned at a time: bounds the parser's working memory whatever the file's size."""


def parse_entry(text: str) -> Condition:
    """``192.0.2.1``, ``198.51.100.0/24``, ``2001:db8::/32`` or ``203.0.113.5|443`` (either side)."""
    address, sep, port = text.partition("|")
    network = ipaddress.ip_network(address.strip(), strict=False)
    if sep:
        number = int(port)
        if not 0 <= number <= 65535:
            raise ValueError(f"port {number} is not a port (0-65535)")
        return Condition(network=network, dst_ports=frozenset({number}))
    return Condition(network=network)


def split_line(line: str) -> tuple[str, str | None]:
    """(the entry, the reference after it or in its comment) of one list line; ("", None) if none."""
    for mark in ("#", ";"):
        head, sep, tail = line.partition(mark)
        if sep:
            entry, _ = split_line(head)
            return entry, (tail.strip() or None) if entry else None
    fields = line.split()
    if not fields:
        return "", None
    return fields[0], " ".join(fields[1:]) or None


class _Rows:
    """One block's parsed rows: networks as columns, plus the text of the rows Python parsed."""

    def __init__(self, n: int) -> None:
        self.kind = np.empty(n, np.int8)
        self.line = np.empty(n, np.int64)
        self.version = np.empty(n, np.uint8)
        self.hi = np.empty(n, np.uint64)
        self.lo = np.empty(n, np.uint64)
        self.prefix = np.empty(n, np.uint8)
        self.port = np.empty(n, np.int32)
        self.entry = np.full((n, 2), -1, np.int64)
        self.name = np.full((n, 2), -1, np.int64)
        self.collapse = np.zeros(n, bool)

    def cut(self, n: int) -> None:
        for key, value in vars(self).items():
            setattr(self, key, value[:n])


def _fill_slow(rows: _Rows, r: int, condition: Condition) -> None:
    """Row ``r`` from the Python parser's condition."""
    net = condition.network
    assert net is not None
    value = int(net.network_address) | (0xFFFF << 32 if net.version == 4 else 0)
    rows.hi[r], rows.lo[r] = value >> 64, value & (2**64 - 1)
    rows.prefix[r], rows.version[r] = net.prefixlen, net.version
    rows.port[r] = next(iter(condition.dst_ports)) if condition.dst_ports else -1


def _network_bytes(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """(n, 16) uint8 network-order bytes of 128-bit (hi, lo) words."""
    words = np.empty((len(hi), 2), ">u8")
    words[:, 0], words[:, 1] = hi, lo
    return words.view(np.uint8).reshape(-1, 16)


def _strings(src: np.ndarray, spans: np.ndarray, collapse: np.ndarray) -> pa.Array:
    """An Arrow string array of byte spans of ``src`` (span start < 0: null)."""
    n = len(spans)
    offsets = np.empty(n + 1, np.int64)
    head = np.empty(0, np.uint8)
    size = textscan.gather(src, spans, collapse, head, offsets, np.empty(0, np.uint8))
    data = np.empty(size, np.uint8)
    textscan.gather(src, spans, collapse, head, offsets, data)
    valid = spans[:, 0] >= 0
    mask = None if valid.all() else pa.py_buffer(np.packbits(valid, bitorder="little"))
    kind = pa.string() if size < 2**31 else pa.large_string()
    offsets = offsets.astype(np.int32) if kind == pa.string() else offsets
    array = pa.Array.from_buffers(kind, n, [mask, pa.py_buffer(offsets), pa.py_buffer(data)],
                                  null_count=int(n - valid.sum()))  # fmt: skip
    return array if kind == pa.string() else array.cast(pa.string())


def _scan_block(
    load: IntelLoad, path: Path, block: bytes, offset: int, first_line: int
) -> tuple[IndicatorTable, int]:
    """(the block's indicators, its line count); bad lines become errors in ``load``."""
    buf = np.frombuffer(block, np.uint8)
    rows = _Rows(int(textscan.count_breaks(buf)))
    n, lines = textscan.scan_lines(buf, rows.kind, rows.line, rows.version, rows.hi, rows.lo, rows.prefix,
                                   rows.port, rows.entry, rows.name, rows.collapse)  # fmt: skip
    rows.cut(n)
    ok = np.ones(n, bool)
    extra: list[bytes] = []  # text of rows the Python parser read, appended after the block
    extra_at = len(block)
    for r in np.flatnonzero(rows.kind != textscan.FAST).tolist():
        start, end = int(rows.entry[r, 0]), int(rows.entry[r, 1])
        where = f"{path}:{first_line + int(rows.line[r]) + 1}"
        if rows.kind[r] == textscan.LINE:
            try:
                text, name = split_line(block[start:end].decode("utf-8"))
            except UnicodeDecodeError as exc:
                bad = _first_error(block, start, exc)
                raise IntelError(f"{path}: not UTF-8 text ({bad.reason} at byte {offset + start + bad.start}): "
                                 "a binary file?") from exc  # fmt: skip
            if not text:
                ok[r] = False
                continue
            for span, value in ((rows.entry, text), (rows.name, name)):
                if value is None:
                    span[r] = -1
                    continue
                raw = value.encode()
                span[r] = (extra_at, extra_at + len(raw))
                extra.append(raw)
                extra_at += len(raw)
            rows.collapse[r] = False
        else:
            text = block[start:end].decode("ascii")
        try:
            _fill_slow(rows, r, parse_entry(text))
        except ValueError as exc:
            load.errors.append(f"{where}: {exc}")
            ok[r] = False
    src = np.concatenate([buf, np.frombuffer(b"".join(extra), np.uint8)]) if extra else buf
    keep = np.flatnonzero(ok)
    entry = rows.entry[keep]
    no_collapse = np.zeros(len(keep), bool)
    table = IndicatorTable.from_columns(
        _network_bytes(rows.hi[keep], rows.lo[keep]), rows.prefix[keep], rows.version[keep], rows.port[keep],
        values=_strings(src, entry, no_collapse), source=path.stem, id_prefix=f"{path.name}:",
        names=_strings(src, rows.name[keep], rows.collapse[keep]),
    )  # fmt: skip
    return table, lines


def _first_error(block: bytes, start: int, exc: UnicodeDecodeError) -> UnicodeDecodeError:
    """The error a decode of the whole file reports for the bad byte ``exc`` found in a line (its
    reason can depend on the bytes after the line's end)."""
    try:
        block[start : start + exc.start + 4].decode("utf-8")
    except UnicodeDecodeError as wider:
        if wider.start == exc.start:
            return wider
    return exc


def load_list(path: Path) -> IntelLoad:
    load = IntelLoad(str(path))
    parts: list[IndicatorTable] = []
    try:
        with path.open("rb") as fh, Progress(str(path), path.stat().st_size) as progress:
            offset, line, carry = 0, 0, b""
            while True:
                chunk = fh.read(BLOCK_BYTES)
                data = carry + chunk
                cut = data.rfind(b"\n") + 1 if chunk else len(data)
                if chunk and cut == 0:  # no line end yet: read on
                    carry = data
                    continue
                block, carry = data[:cut], data[cut:]
                del data
                if block:
                    table, lines = _scan_block(load, path, block, offset, line)
                    parts.append(table)
                    offset, line = offset + len(block), line + lines
                    progress.update(len(block), len(table))
                if not chunk:
                    break
    except OSError as exc:
        raise IntelError(f"{path}: {exc}") from exc
    load.table = IndicatorTable.concat(parts)
    return load


def load_csv(path: Path, value_column: str, port_column: str | None = None) -> IntelLoad:
    """CSV with a header row; ``value_column`` holds the address or CIDR, ``port_column`` a port."""
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            header = next(csv.reader([fh.readline()]), [])
    except (OSError, UnicodeDecodeError) as exc:
        raise IntelError(f"{path}: {exc}") from exc
    if value_column not in header:
        raise IntelError(f"{path}: no column {value_column!r}")
    if port_column and port_column not in header:
        port_column = None  # as csv.DictReader: a missing column reads as empty
    try:
        return _load_csv_columns(path, value_column, port_column)
    except _NotRowForRow:
        return _load_csv_rows(path, value_column, port_column)


class _NotRowForRow(Exception):
    """The file has rows pyarrow would read differently from Python's csv."""


def _load_csv_columns(path: Path, value_column: str, port_column: str | None) -> IntelLoad:
    load = IntelLoad(str(path))
    columns = [value_column] + ([port_column] if port_column else [])

    uneven: list[object] = []

    def invalid(row: object) -> str:  # pyarrow ignores exceptions raised here: noted, then raised below
        uneven.append(row)
        return "skip"

    try:
        reader = pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(block_size=16 << 20, use_threads=False),
            parse_options=pacsv.ParseOptions(invalid_row_handler=invalid),
            convert_options=pacsv.ConvertOptions(
                include_columns=columns,
                strings_can_be_null=False,
                column_types=dict.fromkeys(columns, pa.string()),
            ),
        )
    except pa.ArrowInvalid as exc:
        raise IntelError(f"{path}: not a readable CSV file ({exc})") from exc
    parts: list[IndicatorTable] = []
    number = 2  # the header is line 1
    with Progress(str(path), path.stat().st_size) as progress:
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                break
            except pa.ArrowInvalid as exc:
                raise IntelError(f"{path}: not readable as UTF-8 CSV ({exc})") from exc
            if uneven:
                raise _NotRowForRow
            parts.append(_csv_batch(load, path, batch, value_column, port_column, number))
            number += batch.num_rows
            progress.update(batch.nbytes, len(parts[-1]))
    load.table = IndicatorTable.concat(parts)
    return load


def _csv_batch(load: IntelLoad, path: Path, batch: pa.RecordBatch, value_column: str, port_column: str | None,
               number: int) -> IndicatorTable:  # fmt: skip
    value = pc.utf8_trim_whitespace(batch.column(value_column))
    text = value
    if port_column:
        port = pc.utf8_trim_whitespace(batch.column(port_column))
        joined = pc.binary_join_element_wise(value, port, "|")
        text = pc.if_else(pc.equal(pc.utf8_length(port), 0), value, joined)
    text = text.cast(pa.large_string())  # 64-bit offsets for the kernel, whatever the size
    n = len(text)
    offsets = np.frombuffer(text.buffers()[1], np.int64, n + 1 + text.offset)[text.offset :]
    data = (
        np.frombuffer(text.buffers()[2], np.uint8) if text.buffers()[2] is not None else np.empty(0, np.uint8)
    )
    rows = _Rows(n)
    textscan.parse_entries(data, offsets, rows.kind, rows.version, rows.hi, rows.lo, rows.prefix, rows.port)
    ok = np.ones(n, bool)
    for r in np.flatnonzero(rows.kind != textscan.FAST).tolist():
        entry = bytes(data[offsets[r] : offsets[r + 1]]).decode()
        try:
            _fill_slow(rows, r, parse_entry(entry))
        except ValueError as exc:
            load.errors.append(f"{path}:{number + r}: {exc}")
            ok[r] = False
    keep = np.flatnonzero(ok)
    values = text.cast(pa.string()) if len(keep) == n else text.cast(pa.string()).take(pa.array(keep))
    return IndicatorTable.from_columns(_network_bytes(rows.hi[keep], rows.lo[keep]), rows.prefix[keep],
                                       rows.version[keep], rows.port[keep], values=values, source=path.stem,
                                       id_prefix=f"{path.name}:")  # fmt: skip


def _load_csv_rows(path: Path, value_column: str, port_column: str | None) -> IntelLoad:
    """Python's csv, row by row: for files whose rows pyarrow cannot read as csv does."""
    from pipeline.intel.model import Indicator

    load = IntelLoad(str(path))
    try:
        with path.open(newline="", encoding="utf-8") as fh, Progress(str(path), None, "rows") as progress:
            for number, row in enumerate(csv.DictReader(fh), 2):
                value = (row.get(value_column) or "").strip()
                port = (row.get(port_column) or "").strip() if port_column else ""
                text = f"{value}|{port}" if port else value
                try:
                    condition = parse_entry(text)
                except ValueError as exc:
                    load.errors.append(f"{path}:{number}: {exc}")
                    continue
                load.objects.append(Indicator(id=f"{path.name}:{text}", value=text, source=path.stem,
                                              conditions=(condition,)))  # fmt: skip
                progress.update(1, 1)
    except (OSError, UnicodeDecodeError) as exc:
        raise IntelError(f"{path}: {exc}") from exc
    return load
