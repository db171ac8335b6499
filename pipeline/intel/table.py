"""Indicators as Arrow columns: how lists, CSV files and the indicators topic carry millions of them.

A Python :class:`~pipeline.intel.model.Indicator` costs ~1 KB; a row here costs its strings plus a
few fixed-width fields, and goes from the parser to the index build (and onto the topic as Arrow
IPC) without an object per indicator. A row is an indicator of one condition: a network (address
and prefix length; IPv4 as IPv4-mapped bytes), the side it must be on, and optionally one
destination port — the shape every plain list, CSV feed and ``ip|port`` value has. Richer
indicators (several conditions, AS numbers, protocols, address pairs) stay objects.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

import numba
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.intel.model import Condition, Indicator

SIDE_CODES = {"any": 0, "src": 1, "dst": 2}
SIDE_NAMES = ("any", "src", "dst")
TIME = pa.timestamp("us", tz="UTC")
SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("value", pa.string(), nullable=False),
    pa.field("source", pa.string(), nullable=False),
    pa.field("name", pa.string()),
    pa.field("confidence", pa.int32()),
    pa.field("tlp", pa.string()),
    pa.field("valid_from", TIME),
    pa.field("valid_until", TIME),
    pa.field("network", pa.binary(16), nullable=False),  # network address, IPv4 as ::ffff:a.b.c.d
    pa.field("prefix", pa.uint8(), nullable=False),  # prefix length within its family
    pa.field("version", pa.uint8(), nullable=False),  # 4 or 6
    pa.field("side", pa.int8(), nullable=False),  # 0 any, 1 src, 2 dst
    pa.field("dst_port", pa.int32()),  # null: any port
])  # fmt: skip
ATTRIBUTES = ("id", "value", "name", "source", "confidence", "tlp", "valid_until")
_MAPPED = np.array([0] * 10 + [0xFF, 0xFF], dtype=np.uint8)


def _low_bits(bits: np.ndarray) -> np.ndarray:
    """uint64 masks of the ``bits`` (0..64) lowest bits."""
    shifted = np.left_shift(np.uint64(1), np.minimum(bits, 63).astype(np.uint64)) - np.uint64(1)
    return np.where(bits >= 64, np.uint64(2**64 - 1), shifted)


class IndicatorTable:
    """One indicator per row of ``table`` (schema :data:`SCHEMA`); never mutated (methods return new
    tables)."""

    def __init__(self, table: pa.Table) -> None:
        self.table = table

    @classmethod
    def empty(cls) -> IndicatorTable:
        return cls(SCHEMA.empty_table())

    @classmethod
    def from_columns(
        cls,
        network: np.ndarray,
        prefix: np.ndarray,
        version: np.ndarray,
        dst_port: np.ndarray,
        ids: pa.Array,
        values: pa.Array,
        source: str,
        names: pa.Array | None = None,
    ) -> IndicatorTable:
        """``network``: (n, 16) uint8 network addresses (host bits zero); ``dst_port`` -1 for none."""
        n = len(prefix)
        network = np.ascontiguousarray(network, dtype=np.uint8)
        columns = {
            "id": ids, "value": values, "source": repeat_string(source, n),
            "name": names if names is not None else pa.nulls(n, pa.string()),
            "confidence": pa.nulls(n, pa.int32()), "tlp": pa.nulls(n, pa.string()),
            "valid_from": pa.nulls(n, TIME), "valid_until": pa.nulls(n, TIME),
            "network": pa.Array.from_buffers(pa.binary(16), n, [None, pa.py_buffer(network)]),
            "prefix": pa.array(prefix.astype(np.uint8)), "version": pa.array(version.astype(np.uint8)),
            "side": pa.array(np.zeros(n, np.int8)),
            "dst_port": pa.array(dst_port.astype(np.int32), mask=dst_port < 0),
        }  # fmt: skip
        return cls(pa.table(columns, schema=SCHEMA))

    @classmethod
    def concat(cls, parts: Iterable[IndicatorTable]) -> IndicatorTable:
        tables = [p.table for p in parts if len(p)]
        if not tables:
            return cls.empty()
        return cls(pa.concat_tables(tables) if len(tables) > 1 else tables[0])

    def __len__(self) -> int:
        return self.table.num_rows

    def take(self, rows: np.ndarray) -> IndicatorTable:
        return IndicatorTable(self.table.take(pa.array(rows, type=pa.int64())))

    def without_copy_of(self, rows: np.ndarray) -> IndicatorTable:
        """:meth:`take`, column by column, dropping each old column as its copy is made (the caller
        drops this table): peak memory is one table and one column, not two tables."""
        if len(rows) == len(self):
            return self
        indices = pa.array(rows, type=pa.int64())
        columns = list(self.table.columns)
        self.table = SCHEMA.empty_table()
        for k in range(len(columns)):
            columns[k] = columns[k].take(indices)
        return IndicatorTable(pa.table(columns, schema=SCHEMA))

    def column(self, name: str) -> pa.ChunkedArray:
        return self.table.column(name)

    def numbers(self, name: str, null: int = -1) -> np.ndarray:
        """An integer column as numpy int64, nulls as ``null``."""
        column = self.table.column(name)
        if column.null_count:
            column = column.fill_null(null)
        return column.to_numpy().astype(np.int64, copy=False)

    def network_bytes(self) -> np.ndarray:
        """(n, 16) uint8 network addresses, read from the Arrow buffers without copying where one chunk."""
        column = self.table.column("network")
        chunks = column.chunks
        if not chunks:
            return np.empty((0, 16), np.uint8)
        parts = []
        for chunk in chunks:
            buf = np.frombuffer(chunk.buffers()[1], dtype=np.uint8, count=16 * (len(chunk) + chunk.offset))
            parts.append(buf[16 * chunk.offset :].reshape(-1, 16))
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def is_v4(self) -> np.ndarray:
        return self.numbers("version") == 4

    def v4_ranges(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Inclusive (first, last) uint64 of the IPv4 networks at ``rows``."""
        raw = self.network_bytes()[rows]
        first = np.ascontiguousarray(raw[:, 12:]).view(">u4").ravel().astype(np.uint64)
        host = 32 - self.numbers("prefix")[rows]
        return first, first | _low_bits(host)

    def v6_ranges(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Inclusive (first_hi, first_lo, last_hi, last_lo) uint64 of the IPv6 networks at ``rows``."""
        raw = self.network_bytes()[rows]
        words = np.ascontiguousarray(raw).view(">u8").reshape(-1, 2).astype(np.uint64)
        host = 128 - self.numbers("prefix")[rows]
        hi, lo = words[:, 0], words[:, 1]
        return hi, lo, hi | _low_bits((host - 64).clip(0)), lo | _low_bits(host.clip(0, 64))

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
        minimum = np.where(self.is_v4(), min_prefix_v4, min_prefix_v6)
        return self.numbers("prefix") < minimum

    def first_of_duplicates(self) -> np.ndarray:
        """Row positions, ascending, of the first row of each (source, network, port, side, validity):
        one indicator per condition per source, as :meth:`IntelLoad.collapse_duplicates` keeps.
        Rows are sorted by a 64-bit hash of their key, then adjacent rows compared on the key itself."""
        n = len(self)
        if n < 2:
            return np.arange(n, dtype=np.int64)
        extra = []
        for name in ("source", "valid_from", "valid_until"):  # constant in a list or CSV: skipped
            column = self.table.column(name)
            if column.null_count == n or pc.count_distinct(column, mode="all").as_py() <= 1:
                continue
            if name == "source":
                codes = column.combine_chunks().dictionary_encode().indices
                extra.append(codes.to_numpy(zero_copy_only=False).astype(np.int64))
            else:
                extra.append(self.numbers(name, null=np.iinfo(np.int64).min))
        others = np.stack(extra, axis=1) if extra else np.zeros((n, 0), np.int64)
        network = self.network_bytes()
        prefix, version = _numpy(self.table.column("prefix")), _numpy(self.table.column("version"))
        side, port = _numpy(self.table.column("side")), _numpy(self.table.column("dst_port").fill_null(-1))
        hashes = np.empty(n, np.uint64)
        _row_hashes(network, prefix, version, side, port, others, hashes)
        order = np.argsort(hashes, kind="stable")  # stable: of equal rows, the earliest comes first
        duplicate = np.zeros(n, np.bool_)
        if _mark_duplicates(order, hashes, network, prefix, version, side, port, others, duplicate):
            # two different rows share a hash (about once in 10^5 loads of 10M rows): compare exactly
            keys = [prefix, version, side, port, *others.T, *np.ascontiguousarray(network).view(">u8").T]
            order = np.lexsort(keys[::-1])
            duplicate[:] = False
            _mark_duplicates(order, np.zeros(n, np.uint64), network, prefix, version, side, port, others,
                             duplicate)  # fmt: skip
        return np.flatnonzero(~duplicate)

    def to_indicators(self) -> list[Indicator]:
        """The rows as objects (small tables: tests, ``shoal intel stats``; millions would cost ~1 KB each)."""
        rows = self.table.to_pylist()
        out = []
        for row, network in zip(rows, self.networks(), strict=True):
            port = row["dst_port"]
            condition = Condition(network=network, side=SIDE_NAMES[row["side"]],
                                  dst_ports=frozenset({port}) if port is not None else None)  # fmt: skip
            out.append(Indicator(id=row["id"], value=row["value"], source=row["source"], conditions=(condition,),
                                 name=row["name"], confidence=row["confidence"], tlp=row["tlp"],
                                 valid_from=row["valid_from"], valid_until=row["valid_until"]))  # fmt: skip
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
        columns = {
            "id": [i.id for i, _ in fit], "value": [i.value for i, _ in fit], "source": [i.source for i, _ in fit],
            "name": [i.name for i, _ in fit], "confidence": [i.confidence for i, _ in fit],
            "tlp": [i.tlp for i, _ in fit], "valid_from": [i.valid_from for i, _ in fit],
            "valid_until": [i.valid_until for i, _ in fit],
            "network": pa.Array.from_buffers(pa.binary(16), len(fit), [None, pa.py_buffer(network.copy())]),
            "prefix": [c.network.prefixlen for _, c in fit], "version": [c.network.version for _, c in fit],
            "side": [SIDE_CODES[c.side] for _, c in fit],
            "dst_port": [next(iter(c.dst_ports)) if c.dst_ports else None for _, c in fit],
        }  # fmt: skip
        return cls(pa.table(columns, schema=SCHEMA)), rest


def _numpy(column: pa.ChunkedArray) -> np.ndarray:
    return column.combine_chunks().to_numpy(zero_copy_only=False)


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
