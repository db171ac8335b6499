"""Indicators as Arrow columns: how lists, CSV files and the indicators topic carry millions of them.

A Python :class:`~pipeline.intel.model.Indicator` costs ~1 KB; a row here costs its value text, its
network (16 bytes) and a few bytes of prefix, family and port, and goes from the parser to the index
build (and onto the topic as Arrow IPC) without an object per indicator. A row is an indicator of one
condition: a network (address and prefix length; IPv4 as IPv4-mapped bytes), the side it must be on,
and optionally one destination port — the shape every plain list, CSV feed and ``ip|port`` value has.
Richer indicators (several conditions, AS numbers, protocols, address pairs) stay objects.

A table is a list of *parts*, each an Arrow table holding only the columns it has values for:

- a column that is null in every row of a part is left out (a 10M-row list has no names, TLP or
  validity: materialised nulls would cost 4-8 bytes a row each);
- a column with one value in every row (a list's source name) is a *constant* of the part, kept in
  its schema metadata rather than repeated per row;
- a list's ids are its file name and the value (``blocklist.txt:192.0.2.1``): such a part keeps the
  constant ``id_prefix`` and no id column; ids are made when asked for (alerts, a few at a time).

Parts are never merged (a merge would copy every column); readers go part by part.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Sequence
from typing import Any

import numba
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.intel.hashing import (
    FNV_OFFSET,
    fnv1a_bytes,
    hash_strings,
    mix,
    mix_constant,
    null_hash,
    positions_of,
)
from pipeline.intel.model import Condition, Indicator
from pipeline.schemas import load_schema

SIDE_CODES = {"any": 0, "src": 1, "dst": 2}
SIDE_NAMES = ("any", "src", "dst")
TIME = pa.timestamp("us", tz="UTC")
SCHEMA = pa.schema([pa.field(f.name, f.type, f.nullable) for f in load_schema("indicator", 2)])
"""Every column a part may hold, with its type (``schemas/indicator/v2.json``, where each is
documented). ``value``, ``network``, ``prefix`` and ``version`` are in every part; the others may be
left out (null) or be a constant of the part; ``id_prefix`` is only ever a constant."""
REQUIRED = ("value", "network", "prefix", "version")
FINGERPRINTED = ("id", "value", "source", "name", "confidence", "tlp", "valid_from", "valid_until", "prefix",
                 "version", "side", "dst_port")  # fmt: skip
"""The columns a row's fingerprint covers (and its network), whatever a part keeps as a constant."""
CONSTANTS = b"shoal.constants"
"""Schema metadata key of a part's constant columns (JSON object: column -> value)."""
_MAPPED = np.array([0] * 10 + [0xFF, 0xFF], dtype=np.uint8)


def low_bits(bits: np.ndarray) -> np.ndarray:
    """uint64 masks of the ``bits`` (0..64) lowest bits."""
    shifted = np.left_shift(np.uint64(1), np.minimum(bits, 63).astype(np.uint64)) - np.uint64(1)
    return np.where(bits >= 64, np.uint64(2**64 - 1), shifted)


def v4_bounds(raw: np.ndarray, prefix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive (first, last) uint32 of IPv4 networks given as address bytes (the last 4 of each row:
    (n, 4), or (n, 16) mapped) and prefixes."""
    first = np.ascontiguousarray(raw[:, -4:]).view(">u4").ravel().astype(np.uint32)
    return first, first | low_bits(32 - prefix.astype(np.int64)).astype(np.uint32)


def v6_bounds(raw: np.ndarray, prefix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Inclusive (first_hi, first_lo, last_hi, last_lo) uint64 of IPv6 networks given as (n, 16)
    bytes and prefixes."""
    words = np.ascontiguousarray(raw).view(">u8").reshape(-1, 2).astype(np.uint64)
    host = 128 - prefix.astype(np.int64)
    hi, lo = words[:, 0], words[:, 1]
    return hi, lo, hi | low_bits((host - 64).clip(0)), lo | low_bits(host.clip(0, 64))


def make_part(columns: dict[str, Any], constants: dict[str, Any] | None = None) -> pa.Table:
    """A part of the given columns (arrays, or lists converted to the schema's type), in schema order,
    with ``constants`` (column -> value) in its metadata. Optional columns that are null throughout
    are left out; a None constant is no constant."""
    arrays, fields = [], []
    for field in SCHEMA:
        if field.name not in columns:
            continue
        column = columns[field.name]
        if not isinstance(column, pa.Array | pa.ChunkedArray):
            column = pa.array(column, type=field.type)
        elif column.type != field.type:
            column = column.cast(field.type)
        if field.name not in REQUIRED and column.null_count == len(column):
            continue
        arrays.append(column)
        fields.append(field)
    kept = {k: v for k, v in (constants or {}).items() if v is not None and k not in columns}
    metadata = {CONSTANTS: json.dumps(kept, sort_keys=True).encode()} if kept else None
    return pa.table(arrays, schema=pa.schema(fields, metadata=metadata))


def part_constants(part: pa.Table) -> dict[str, Any]:
    metadata = part.schema.metadata or {}
    return json.loads(metadata[CONSTANTS]) if CONSTANTS in metadata else {}


def part_has(part: pa.Table, name: str) -> bool:
    """Whether any row of the part has a value in ``name`` (a column or a constant)."""
    if name == "id":
        return True
    return name in part.column_names or name in part_constants(part)


def part_column(part: pa.Table, name: str, rows: pa.Array | None = None) -> pa.Array:
    """The logical column ``name`` of the part (at ``rows``, or whole): a column, a constant repeated,
    nulls, or (``id`` of a list) the id prefix and the value joined."""
    n = part.num_rows if rows is None else len(rows)
    if name in part.column_names:
        column = part.column(name)
        column = column.take(rows) if rows is not None else column
        return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    constants = part_constants(part)
    kind = SCHEMA.field(name).type
    if name == "id" and "id_prefix" in constants:
        values = part_column(part, "value", rows)
        return pc.binary_join_element_wise(pa.scalar(constants["id_prefix"]), values, "")
    if name in constants:
        value = constants[name]
        if kind == pa.string():
            return repeat_string(value, n)
        return pa.array(np.full(n, value, dtype=np.int64)).cast(kind)  # µs for times
    return pa.nulls(n, kind)


def part_ints(part: pa.Table, name: str, null: int, dtype: Any = np.int64) -> np.ndarray:
    """An integer (or time, as µs) column of the part as numpy, nulls as ``null``."""
    n = part.num_rows
    if name in part.column_names:
        column = part.column(name)
        if pa.types.is_timestamp(column.type):
            column = column.cast(pa.int64())
        if column.null_count:
            column = column.fill_null(null)
        out = (
            column.to_numpy()
            if column.num_chunks == 1
            else np.concatenate([c.to_numpy() for c in column.chunks])
        )
        return out.astype(dtype, copy=False)
    value = part_constants(part).get(name)
    return np.full(n, null if value is None else value, dtype=dtype)


def part_id_hashes(part: pa.Table, out: np.ndarray | None = None) -> np.ndarray:
    """A 64-bit hash (FNV-1a) of each row's id; a list's ids (prefix + value) hash as the joined text
    would, without being joined."""
    prefix = part_constants(part).get("id_prefix") if "id" not in part.column_names else None
    return hash_strings(part.column("value" if prefix is not None else "id"), prefix or "", out)


def part_network_bytes(part: pa.Table) -> np.ndarray:
    """(n, 16) uint8 network addresses of a part, read from the Arrow buffers (no copy for one chunk)."""
    pieces = []
    for chunk in part.column("network").chunks:
        buf = np.frombuffer(chunk.buffers()[1], dtype=np.uint8, count=16 * (len(chunk) + chunk.offset))
        pieces.append(buf[16 * chunk.offset :].reshape(-1, 16))
    if not pieces:
        return np.empty((0, 16), np.uint8)
    return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)


class IndicatorTable:
    """One indicator per row, over parts (see the module docstring); never mutated (methods return
    new tables, sharing the parts' buffers where they can)."""

    def __init__(self, parts: Iterable[pa.Table] = ()) -> None:
        self.parts: list[pa.Table] = [p for p in parts if p.num_rows]
        self.starts = np.cumsum([0] + [p.num_rows for p in self.parts], dtype=np.int64)

    @classmethod
    def empty(cls) -> IndicatorTable:
        return cls()

    @classmethod
    def from_columns(
        cls,
        network: np.ndarray,
        prefix: np.ndarray,
        version: np.ndarray,
        dst_port: np.ndarray,
        values: pa.Array,
        source: str,
        id_prefix: str,
        names: pa.Array | None = None,
    ) -> IndicatorTable:
        """A list's rows: ``network`` (n, 16) uint8 network addresses (host bits zero), ``dst_port``
        -1 for none; ids are ``id_prefix`` + value, ``source`` the same for every row."""
        n = len(prefix)
        network = np.ascontiguousarray(network, dtype=np.uint8)
        columns: dict[str, Any] = {
            "value": values,
            "network": pa.Array.from_buffers(pa.binary(16), n, [None, pa.py_buffer(network)]),
            "prefix": pa.array(prefix.astype(np.uint8, copy=False)),
            "version": pa.array(version.astype(np.uint8, copy=False)),
        }
        if (dst_port >= 0).any():
            columns["dst_port"] = pa.array(dst_port.astype(np.int32, copy=False), mask=dst_port < 0)
        if names is not None:
            columns["name"] = names
        return cls([make_part(columns, {"source": source, "id_prefix": id_prefix})])

    @classmethod
    def concat(cls, tables: Iterable[IndicatorTable]) -> IndicatorTable:
        return cls(part for table in tables for part in table.parts)

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.parts)

    def _runs(self, rows: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """(part, local rows) for each run of ``rows`` that stays in one part, in order."""
        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows):
            return []
        which = np.searchsorted(self.starts, rows, side="right") - 1
        cuts = np.flatnonzero(which[1:] != which[:-1]) + 1
        out = []
        for a, b in zip(np.r_[0, cuts].tolist(), np.r_[cuts, len(rows)].tolist(), strict=True):
            p = int(which[a])
            out.append((p, rows[a:b] - self.starts[p]))
        return out

    def take(self, rows: np.ndarray) -> IndicatorTable:
        """The rows at ``rows`` (global positions), in that order."""
        out = []
        for p, local in self._runs(rows):
            part = self.parts[p]
            whole = len(local) == part.num_rows and (local == np.arange(len(local))).all()
            out.append(part if whole else part.take(pa.array(local, type=pa.int64())))
        return IndicatorTable(out)

    def without_copy_of(self, rows: np.ndarray) -> IndicatorTable:
        """:meth:`take` of ascending ``rows``, part by part, dropping each old part as its copy is made
        (the caller drops this table): peak memory is the table and one part, not two tables."""
        if len(rows) == len(self):
            return self
        keep: dict[int, np.ndarray] = dict(self._runs(rows))
        parts, self.parts = self.parts, []
        out = []
        for p in range(len(parts)):
            part, parts[p] = parts[p], None  # type: ignore[call-overload]
            local = keep.get(p)
            if local is None:
                continue
            out.append(part if len(local) == part.num_rows else part.take(pa.array(local, type=pa.int64())))
            del part
        self.starts = np.zeros(1, np.int64)
        return IndicatorTable(out)

    def column(self, name: str) -> pa.ChunkedArray:
        """The logical column ``name`` (made whole where a part keeps it as a constant or derives it:
        small tables, or few rows after :meth:`take`)."""
        return pa.chunked_array([part_column(p, name) for p in self.parts], type=SCHEMA.field(name).type)

    def has(self, name: str) -> bool:
        """Whether some row has a value in ``name``."""
        return any(part_has(p, name) for p in self.parts)

    def numbers(self, name: str, null: int = -1) -> np.ndarray:
        """An integer column as numpy int64, nulls as ``null``."""
        if not self.parts:
            return np.empty(0, np.int64)
        return np.concatenate([part_ints(p, name, null) for p in self.parts])

    def network_bytes(self) -> np.ndarray:
        """(n, 16) uint8 network addresses (no copy for a table of one part)."""
        pieces = [part_network_bytes(p) for p in self.parts]
        if not pieces:
            return np.empty((0, 16), np.uint8)
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    def is_v4(self) -> np.ndarray:
        return self.numbers("version") == 4

    def networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        """Every row's network as an object (small tables only)."""
        raw = self.network_bytes().tobytes()
        out: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for k, (prefix, version) in enumerate(zip(self.numbers("prefix").tolist(), self.numbers("version").tolist(),
                                                  strict=True)):  # fmt: skip
            addr = raw[16 * k : 16 * k + 16]
            out.append(ipaddress.IPv4Network((addr[12:], prefix)) if version == 4
                       else ipaddress.IPv6Network((addr, prefix)))  # fmt: skip
        return out

    def network_texts(self) -> list[str]:
        return [str(net) for net in self.networks()]

    def too_broad(self, min_prefix_v4: int, min_prefix_v6: int) -> np.ndarray:
        """Rows whose network is broader than the family's minimum prefix."""
        out = np.empty(len(self), bool)
        for p, part in enumerate(self.parts):
            v4 = part_ints(part, "version", 0, np.uint8) == 4
            prefix = part_ints(part, "prefix", 0, np.uint8)
            out[self.starts[p] : self.starts[p + 1]] = prefix < np.where(v4, min_prefix_v4, min_prefix_v6)
        return out

    def source_codes(self) -> tuple[np.ndarray, list[str | None]]:
        """(int32 code of each row's source, the sources by code)."""
        names: dict[str | None, int] = {}
        codes = np.empty(len(self), np.int32)
        for p, part in enumerate(self.parts):
            at = slice(self.starts[p], self.starts[p + 1])
            if "source" in part.column_names:
                encoded = part.column("source").combine_chunks().dictionary_encode()
                mapping = np.array([names.setdefault(s, len(names)) for s in encoded.dictionary.to_pylist()]
                                   + [names.setdefault(None, len(names))], dtype=np.int32)  # fmt: skip
                local = encoded.indices.fill_null(len(encoded.dictionary)).to_numpy(zero_copy_only=False)
                codes[at] = mapping[local]
            else:
                codes[at] = names.setdefault(part_constants(part).get("source"), len(names))
        return codes, list(names)

    def first_of_duplicates(self) -> np.ndarray:
        """Row positions, ascending, of the first row of each (source, network, port, side, validity):
        one indicator per condition per source, as :meth:`IntelLoad.collapse_duplicates` keeps.
        Rows are sorted by a 64-bit hash of their key, then adjacent rows compared on the key itself."""
        n = len(self)
        if n < 2:
            return np.arange(n, dtype=np.int64)
        extra = []
        codes, names = self.source_codes()
        if len(names) > 1:
            extra.append(codes.astype(np.int64))
        del codes
        for name in ("valid_from", "valid_until"):  # absent from lists and CSV files: skipped
            if self.has(name):
                extra.append(self.numbers(name, null=np.iinfo(np.int64).min))
        others = np.stack(extra, axis=1) if extra else np.zeros((n, 0), np.int64)
        del extra
        network = self.network_bytes()
        prefix = np.concatenate([part_ints(p, "prefix", 0, np.uint8) for p in self.parts])
        version = np.concatenate([part_ints(p, "version", 0, np.uint8) for p in self.parts])
        side = np.concatenate([part_ints(p, "side", 0, np.int8) for p in self.parts])
        port = np.concatenate([part_ints(p, "dst_port", -1, np.int32) for p in self.parts])
        hashes = np.empty(n, np.uint64)
        _row_hashes(network, prefix, version, side, port, others, hashes)
        # Only rows whose hash repeats can be duplicates: sort the hashes by value, then order just
        # those rows (stable: of equal rows, the earliest comes first). At 10M rows a stable argsort
        # of every hash took 1.6 s.
        ordered = np.sort(hashes)
        repeats = ordered[1:] == ordered[:-1]
        candidates = (
            positions_of(hashes, np.unique(ordered[1:][repeats])) if repeats.any() else np.empty(0, np.int64)
        )
        del ordered, repeats
        order = candidates[np.argsort(hashes[candidates], kind="stable")]
        duplicate = np.zeros(n, np.bool_)
        if _mark_duplicates(order, hashes, network, prefix, version, side, port, others, duplicate):
            # two different rows share a hash (about once in 10^5 loads of 10M rows): compare exactly
            keys = [prefix, version, side, port, *others.T, *np.ascontiguousarray(network).view(">u8").T]
            order = np.lexsort(keys[::-1])
            duplicate[:] = False
            _mark_duplicates(order, np.zeros(n, np.uint64), network, prefix, version, side, port, others,
                             duplicate)  # fmt: skip
        return np.flatnonzero(~duplicate)

    def id_hashes(self) -> np.ndarray:
        """:func:`part_id_hashes` of every row."""
        out = np.empty(len(self), np.uint64)
        for p, part in enumerate(self.parts):
            part_id_hashes(part, out[self.starts[p] : self.starts[p + 1]])
        return out

    def fingerprints(self) -> np.ndarray:
        """A 64-bit hash of each row's every column (see :mod:`pipeline.intel.hashing`): equal for
        equal rows however their parts keep them (a column, a constant, a list's id prefix)."""
        out = np.zeros(len(self), np.uint64)
        for p, part in enumerate(self.parts):
            h = out[self.starts[p] : self.starts[p + 1]]
            n, constants, names = part.num_rows, part_constants(part), set(part.column_names)
            everywhere = np.ones(n, np.bool_)
            for tag, name in enumerate(FINGERPRINTED):
                if name == "id" and "id" not in names and "id_prefix" in constants:
                    mix(h, hash_strings(part.column("value"), constants["id_prefix"]), everywhere, tag)
                elif name in ("prefix", "version", "side"):  # never null (side: null is "any", 0)
                    mix(h, part_ints(part, name, 0, np.int64).view(np.uint64), everywhere, tag)
                elif name in names:
                    column = part.column(name)
                    valid = column.is_valid().to_numpy(zero_copy_only=False)
                    if pa.types.is_string(column.type):
                        mix(h, hash_strings(column), valid, tag)
                    else:
                        mix(h, part_ints(part, name, 0, np.int64).view(np.uint64), valid, tag)
                elif name in constants:
                    value = constants[name]
                    text = isinstance(value, str)
                    raw = fnv1a_bytes(np.frombuffer(value.encode(), np.uint8), FNV_OFFSET) if text else value
                    mix_constant(h, np.uint64(raw), tag)
                else:
                    mix_constant(h, null_hash(), tag)
            words = np.ascontiguousarray(part_network_bytes(part)).view(np.uint64)
            mix(h, np.ascontiguousarray(words[:, 0]), everywhere, 100)
            mix(h, np.ascontiguousarray(words[:, 1]), everywhere, 101)
        return out

    def to_indicators(self) -> list[Indicator]:
        """The rows as objects (small tables: tests, ``shoal intel stats``; millions would cost ~1 KB each)."""
        names = (
            "id",
            "value",
            "source",
            "name",
            "confidence",
            "tlp",
            "valid_from",
            "valid_until",
            "side",
            "dst_port",
        )
        columns = {name: self.column(name).to_pylist() for name in names}
        out = []
        for k, network in enumerate(self.networks()):
            port, side = columns["dst_port"][k], columns["side"][k]
            condition = Condition(network=network, side=SIDE_NAMES[side or 0],
                                  dst_ports=frozenset({port}) if port is not None else None)  # fmt: skip
            out.append(Indicator(id=columns["id"][k], value=columns["value"][k], source=columns["source"][k],
                                 conditions=(condition,), name=columns["name"][k],
                                 confidence=columns["confidence"][k], tlp=columns["tlp"][k],
                                 valid_from=columns["valid_from"][k], valid_until=columns["valid_until"][k]))  # fmt: skip
        return out

    @classmethod
    def from_indicators(cls, indicators: Sequence[Indicator]) -> tuple[IndicatorTable, list[Indicator]]:
        """(the indicators that fit a row, as a table; the rest as they were)."""
        fit, rest = [], []
        for ind in indicators:
            c = ind.conditions[0] if len(ind.conditions) == 1 else None
            if (c is None or ind.revoked or ind.labels or c.network is None or c.asn is not None
                    or c.src_ports is not None or c.protocols is not None or c.other_network is not None
                    or (c.dst_ports is not None and len(c.dst_ports) != 1)):  # fmt: skip
                rest.append(ind)
            else:
                fit.append((ind, c))
        if not fit:
            return cls.empty(), rest
        raw = []
        for _, c in fit:
            packed = c.network.network_address.packed
            raw.append(packed if len(packed) == 16 else bytes(_MAPPED) + packed)
        network = np.frombuffer(b"".join(raw), dtype=np.uint8).reshape(-1, 16)
        sources = {i.source for i, _ in fit}
        columns: dict[str, Any] = {
            "id": [i.id for i, _ in fit], "value": [i.value for i, _ in fit],
            "name": [i.name for i, _ in fit], "confidence": [i.confidence for i, _ in fit],
            "tlp": [i.tlp for i, _ in fit], "valid_from": [i.valid_from for i, _ in fit],
            "valid_until": [i.valid_until for i, _ in fit],
            "network": pa.Array.from_buffers(pa.binary(16), len(fit), [None, pa.py_buffer(network.copy())]),
            "prefix": [c.network.prefixlen for _, c in fit], "version": [c.network.version for _, c in fit],
            "side": [SIDE_CODES[c.side] or None for _, c in fit],
            "dst_port": [next(iter(c.dst_ports)) if c.dst_ports else None for _, c in fit],
        }  # fmt: skip
        constants = {}
        if len(sources) == 1:
            constants["source"] = next(iter(sources))
        else:
            columns["source"] = [i.source for i, _ in fit]
        return cls([make_part(columns, constants)]), rest


@numba.njit(cache=True, nogil=True)
def _row_hashes(network, prefix, version, side, port, others, out):  # pragma: no cover - compiled
    """A 64-bit hash (multiply-xorshift mixing) of each row's key fields."""
    m = np.uint64(0x9E3779B97F4A7C15)
    for r in range(len(out)):
        h = (
            np.uint64(prefix[r])
            | (np.uint64(version[r]) << np.uint64(8))
            | (np.uint64(side[r] & 3) << np.uint64(12))
        )
        h ^= np.uint64(port[r] & 0xFFFFFFFF) << np.uint64(16)
        for j in range(16):
            h = (h ^ np.uint64(network[r, j])) * m
            h ^= h >> np.uint64(29)
        for j in range(others.shape[1]):
            h = (h ^ np.uint64(others[r, j])) * m
            h ^= h >> np.uint64(31)
        out[r] = h


@numba.njit(cache=True, nogil=True)
def _mark_duplicates(order, hashes, network, prefix, version, side, port, others, out):  # pragma: no cover
    """Mark each row equal to the row before it in ``order``; returns whether two adjacent rows had
    the same hash but different keys (then the caller sorts by the keys themselves)."""
    collision = False
    for t in range(1, len(order)):
        a, b = order[t - 1], order[t]
        if hashes[a] != hashes[b]:
            continue
        same = (
            prefix[a] == prefix[b] and version[a] == version[b] and side[a] == side[b] and port[a] == port[b]
        )
        for j in range(16):
            same = same and network[a, j] == network[b, j]
        for j in range(others.shape[1]):
            same = same and others[a, j] == others[b, j]
        if same:
            out[b] = True
        else:
            collision = True
    return collision


def repeat_string(text: str, n: int) -> pa.Array:
    """``text`` n times as an Arrow string array, written as buffers (no Python object per row)."""
    raw = text.encode()
    offsets = np.arange(n + 1, dtype=np.int64) * len(raw)
    kind = pa.string() if offsets[-1] < 2**31 else pa.large_string()
    offsets = offsets.astype(np.int32 if kind == pa.string() else np.int64)
    array = pa.Array.from_buffers(kind, n, [None, pa.py_buffer(offsets), pa.py_buffer(raw * n)])
    return array if kind == pa.string() else array.cast(pa.string())


def mapped_v4(addresses: np.ndarray) -> np.ndarray:
    """(n, 16) uint8 IPv4-mapped bytes of uint32 IPv4 addresses."""
    out = np.zeros((len(addresses), 16), dtype=np.uint8)
    out[:, 10:12] = 0xFF
    out[:, 12:] = addresses.astype(">u4").view(np.uint8).reshape(-1, 4)
    return out
