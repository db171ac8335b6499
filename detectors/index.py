"""The indicator index: immutable, built off the hot path, answering a whole batch at once.

Most conditions are *plain*: a network, maybe a side, nothing else. They are stored as nothing but
the payload of their range, ``indicator * 3 + side``, so they cost no per-entry constraint arrays.
The rest (ports, protocols, AS, the other side's address) become *constrained entries*, payload
``-(k + 1)``, with scalar constraints in small side arrays (a condition naming two ports becomes two
entries), so every check after the address lookup is still a vectorised comparison. The build reads
the Python objects with one comprehension per attribute; only constrained and AS-only conditions
(rare) take a per-condition Python loop.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from itertools import chain, product, repeat
from operator import attrgetter, is_not

import numpy as np
import pyarrow as pa

from detectors.addresses import Addresses
from detectors.attributes import Attributes
from detectors.intervals import V4_SLASH16, V4Intervals, V6Intervals
from detectors.kernels import coarse_candidates
from pipeline.intel.allowlists import Allowlist
from pipeline.intel.load import IntelLoad
from pipeline.intel.model import Indicator, Network
from pipeline.intel.table import (
    IndicatorTable,
    low_bits,
    make_part,
    part_has,
    part_ints,
    part_network_bytes,
    v4_bounds,
    v6_bounds,
)

SIDES = {"any": 0, "src": 1, "dst": 2}
NO_TIME_MIN, NO_TIME_MAX = np.iinfo(np.int64).min, np.iinfo(np.int64).max
V4_MAPPED_HI, V4_MAPPED_LO_BASE = 0, 0xFFFF << 32
_EXTRA = attrgetter("src_ports", "dst_ports", "protocols", "asn", "other_network")
_NO_EXTRA = (None, None, None, None, None)
_CONDITIONS, _NETWORK, _SIDE = attrgetter("conditions"), attrgetter("network"), attrgetter("side")
_ADDRESS, _PREFIXLEN, _PACKED = attrgetter("network_address"), attrgetter("prefixlen"), attrgetter("packed")

_VERSION = attrgetter("version")
COARSE_MAX_RANGES = 4096
"""IPv4 ranges up to which an index filters addresses by /16 before its lookup (a delta index)."""


def _us(when: datetime | None, default: int) -> int:
    return default if when is None else int(when.timestamp() * 1_000_000)


def _bounds(network: Network) -> tuple[int, int]:
    """First and last address in the 128-bit flow-schema space (IPv4 mapped)."""
    first, last = int(network.network_address), int(network.broadcast_address)
    if network.version == 4:
        return V4_MAPPED_LO_BASE | first, V4_MAPPED_LO_BASE | last
    return first, last


def v4_ranges(networks: list[Network]) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive (first, last) uint64 arrays of IPv4 networks."""
    n = len(networks)
    first = np.fromiter(map(int, map(_ADDRESS, networks)), np.uint64, n)
    host = 32 - np.fromiter(map(_PREFIXLEN, networks), np.int64, n)
    return first, first | low_bits(host)


def v6_ranges(networks: list[Network]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Inclusive (first_hi, first_lo, last_hi, last_lo) uint64 arrays of IPv6 networks."""
    n = len(networks)
    raw = np.frombuffer(b"".join(map(_PACKED, map(_ADDRESS, networks))), np.uint8).reshape(-1, 16)
    return v6_bounds(raw, np.fromiter(map(_PREFIXLEN, networks), np.int64, n))


@dataclass
class Ranges:
    """Address ranges with their int32 payloads, per family, gathered from objects and tables alike
    (IPv4 bounds as uint32: 8 bytes a range)."""

    first4: np.ndarray
    last4: np.ndarray
    payload4: np.ndarray
    bounds6: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
    payload6: np.ndarray

    @classmethod
    def of_networks(cls, networks: list[Network], payload: np.ndarray) -> Ranges:
        is_v4 = np.fromiter(map(_VERSION, networks), np.int8, len(networks)) == 4
        idx4, idx6 = np.flatnonzero(is_v4), np.flatnonzero(~is_v4)
        first4, last4 = v4_ranges([networks[i] for i in idx4.tolist()])
        bounds6 = v6_ranges([networks[i] for i in idx6.tolist()])
        return cls(first4.astype(np.uint32), last4.astype(np.uint32), payload[idx4], bounds6, payload[idx6])

    @classmethod
    def of_part(cls, part: pa.Table, payload: np.ndarray) -> Ranges:
        """The ranges of one part of an :class:`IndicatorTable` (rows in order)."""
        raw = part_network_bytes(part)
        prefix = part_ints(part, "prefix", 0, np.uint8)
        is_v4 = part_ints(part, "version", 0, np.uint8) == 4
        idx4, idx6 = np.flatnonzero(is_v4), np.flatnonzero(~is_v4)
        first4, last4 = v4_bounds(raw[idx4, 12:], prefix[idx4])
        return cls(first4, last4, payload[idx4], v6_bounds(raw[idx6], prefix[idx6]), payload[idx6])

    @classmethod
    def concat(cls, parts: list[Ranges]) -> Ranges:
        if len(parts) == 1:
            return parts[0]
        return cls(
            np.concatenate([p.first4 for p in parts]), np.concatenate([p.last4 for p in parts]),
            np.concatenate([p.payload4 for p in parts]),
            tuple(np.concatenate([p.bounds6[k] for p in parts]) for k in range(4)),  # type: ignore[arg-type]
            np.concatenate([p.payload6 for p in parts]),
        )  # fmt: skip


@dataclass
class AddressTable:
    """Networks, each with an int32 payload, split into the IPv4 and IPv6 interval structures."""

    v4: V4Intervals
    v6: V6Intervals
    covered16: np.ndarray | None = None
    """For a few ranges (a delta index): which /16s they touch, so that only addresses there are
    looked up; None for large sets, where most /16s are touched anyway."""

    @classmethod
    def build(
        cls, networks: list[Network], payload: np.ndarray | None = None, direct: bool = False
    ) -> AddressTable:
        """``payload`` defaults to each network's position; ``direct``: IPv4 via the /24 table
        (128 MiB of address space, for the per-flow path) rather than a search (allowlists: hits only)."""
        if payload is None:
            payload = np.arange(len(networks), dtype=np.int32)
        ranges = Ranges.of_networks(networks, payload)
        return cls.from_ranges(ranges, direct)

    @classmethod
    def from_ranges(cls, ranges: Ranges, direct: bool = False) -> AddressTable:
        covered16 = None
        if direct and len(ranges.first4) <= COARSE_MAX_RANGES:
            first, last = (
                (ranges.first4 >> np.uint64(16)).astype(np.int64),
                (ranges.last4 >> np.uint64(16)).astype(np.int64),
            )
            span = last - first + 1
            touched = np.repeat(first - (np.cumsum(span) - span), span) + np.arange(int(span.sum()))
            covered16 = np.zeros(V4_SLASH16, np.uint8)
            covered16[touched] = 1
        return cls(
            V4Intervals.build(ranges.first4, ranges.last4, ranges.payload4, direct=direct),
            V6Intervals.build(*ranges.bounds6, payload=ranges.payload6),
            covered16,
        )

    def lookup(self, addresses: Addresses) -> tuple[np.ndarray, np.ndarray]:
        """(row, payload) pairs for every address that some network covers."""
        if self.covered16 is not None:  # few ranges: only addresses in a touched /16
            rows = np.empty(len(addresses), np.int64)
            rows = rows[: coarse_candidates(addresses.v4, self.covered16, rows)]
            r4, e4 = self.v4.lookup(addresses.v4[rows], rows)
        else:
            r4, e4 = self.v4.lookup(addresses.v4)  # every row: cheaper than picking the IPv4 ones first
        if addresses.all_v4:  # the common batch: no IPv6 work
            return r4, e4
        keep = np.flatnonzero(np.take(addresses.is_v4, r4))  # IPv6 rows' last words meant nothing
        r4, e4 = np.take(r4, keep), np.take(e4, keep)
        v6_rows = np.flatnonzero(~addresses.is_v4)
        r6, e6 = self.v6.lookup(addresses.raw, v6_rows)
        return np.concatenate([r4, r6]), np.concatenate([e4, e6])

    def nbytes(self, fixed: bool = True) -> int:
        return self.v4.nbytes(fixed) + self.v6.nbytes()


class IndicatorIndex:
    """Build with :meth:`build`; never mutated afterwards (a new index replaces it whole, or
    :class:`detectors.delta.LayeredIndex` lays a small one beside it)."""

    def __init__(self) -> None:
        self.objects: list[Indicator] = []
        self.count = 0
        self.table: AddressTable
        self.allow: AddressTable
        self.allow_port: np.ndarray
        self.allow_name: list[str] = []

    @classmethod
    def build(
        cls,
        indicators: Iterable[Indicator] = (),
        allowlist: Allowlist | None = None,
        table: IndicatorTable | None = None,
    ) -> IndicatorIndex:
        """Positions 0.. are the (unrevoked) ``indicators``, then the rows of ``table``."""
        self = cls()
        self.objects = inds = [i for i in indicators if not i.revoked]
        rows = table if table is not None else IndicatorTable.empty()
        n_obj = len(inds)
        self.count = n = n_obj + len(rows)
        # The objects are read with C-level map/attrgetter passes, one attribute at a time.
        per_indicator = np.fromiter(map(len, map(_CONDITIONS, inds)), np.int64, n_obj)
        conds = list(chain.from_iterable(map(_CONDITIONS, inds)))
        cond_ind = np.repeat(np.arange(n_obj, dtype=np.int64), per_indicator)
        nets = list(map(_NETWORK, conds))
        plain = np.fromiter(map(_NO_EXTRA.__eq__, map(_EXTRA, conds)), bool, len(conds))
        plain &= np.fromiter(map(is_not, nets, repeat(None)), bool, len(conds))
        plain_idx = np.flatnonzero(plain)
        plain_conds = [conds[k] for k in plain_idx.tolist()]
        plain_side = np.fromiter(map(SIDES.__getitem__, map(_SIDE, plain_conds)), np.int64, len(plain_idx))
        networks = list(map(_NETWORK, plain_conds))
        del plain_conds
        object_plain_payload = (cond_ind[plain_idx] * 3 + plain_side).astype(np.int32)
        # Constrained and AS-only conditions: few, so a Python loop.
        cols: dict[str, list[int]] = {
            k: [] for k in ("ind", "side", "sport", "dport", "proto", "asn", "has_other")
        }
        other_bounds: list[tuple[int, int]] = []
        asn_entries: dict[str, list[int]] = {"ind": [], "asn": [], "side": []}
        for k in np.flatnonzero(~plain).tolist():
            c, ind = conds[k], int(cond_ind[k])
            sports = sorted(c.src_ports) if c.src_ports is not None else [-1]
            dports = sorted(c.dst_ports) if c.dst_ports is not None else [-1]
            protos = sorted(c.protocols) if c.protocols is not None else [-1]
            for sport, dport, proto in product(sports, dports, protos):
                if c.network is None:
                    if sport == dport == proto == -1:
                        asn_entries["ind"].append(ind)
                        asn_entries["asn"].append(c.asn or 0)
                        asn_entries["side"].append(SIDES[c.side])
                    continue  # AS with port constraints: not indexed (rare); see docs
                networks.append(c.network)
                for key, value in (("ind", ind), ("side", SIDES[c.side]), ("sport", sport), ("dport", dport),
                                   ("proto", proto), ("asn", c.asn if c.asn is not None else -1),
                                   ("has_other", int(c.other_network is not None))):  # fmt: skip
                    cols[key].append(value)
                other_bounds.append(_bounds(c.other_network) if c.other_network is not None else (0, 0))
        n_obj_entries = len(cols["ind"])
        object_ranges = Ranges.of_networks(networks, np.concatenate(
            [object_plain_payload, -(np.arange(n_obj_entries, dtype=np.int32) + 1)]))  # fmt: skip
        del networks, nets, conds
        if 3 * n + 2 >= 2**31:
            raise ValueError(f"{n:,} indicators: more than an index's 32-bit payloads hold")
        # Table rows, part by part: one condition each, plain unless it names a port (then one
        # constrained entry). Narrow types throughout: at 10M rows every byte a row is 10 MB.
        parts = [object_ranges]
        port_ind, port_side, port_dport = [], [], []
        constrained = n_obj_entries
        for p, part in enumerate(rows.parts):
            start = n_obj + int(rows.starts[p])
            side = part_ints(part, "side", 0, np.int8)
            port = part_ints(part, "dst_port", -1, np.int32)
            payload = np.arange(3 * start, 3 * (start + len(port)), 3, dtype=np.int32) + side
            with_port = np.flatnonzero(port >= 0)
            payload[with_port] = -(constrained + np.arange(len(with_port), dtype=np.int32) + 1)
            constrained += len(with_port)
            port_ind.append((start + with_port).astype(np.int32))
            port_side.append(side[with_port])
            port_dport.append(port[with_port])
            parts.append(Ranges.of_part(part, payload))
            del side, port, payload, with_port
        ranges = Ranges.concat(parts)
        del parts
        m = constrained - n_obj_entries
        self.plain_entries = len(plain_idx) + len(rows) - m
        # constrained entries only, from here on: the objects', then the table's
        self.entry_ind = np.concatenate([np.array(cols["ind"], dtype=np.int32), *port_ind])
        self.entry_side = np.concatenate([np.array(cols["side"], dtype=np.int8), *port_side])
        self.entry_sport = np.concatenate([np.array(cols["sport"], dtype=np.int32), np.full(m, -1, np.int32)])
        self.entry_dport = np.concatenate([np.array(cols["dport"], dtype=np.int32), *port_dport])
        self.entry_proto = np.concatenate([np.array(cols["proto"], dtype=np.int16), np.full(m, -1, np.int16)])
        self.entry_asn = np.concatenate([np.array(cols["asn"], dtype=np.int64), np.full(m, -1, np.int64)])
        self.entry_has_other = np.concatenate([np.array(cols["has_other"], dtype=bool), np.zeros(m, bool)])
        del port_ind, port_side, port_dport
        first = np.array([(b[0] >> 64, b[0] & (2**64 - 1)) for b in other_bounds], dtype=np.uint64).reshape(
            -1, 2
        )
        last = np.array([(b[1] >> 64, b[1] & (2**64 - 1)) for b in other_bounds], dtype=np.uint64).reshape(
            -1, 2
        )
        self.other_first = np.concatenate([first, np.zeros((m, 2), np.uint64)])
        self.other_last = np.concatenate([last, np.zeros((m, 2), np.uint64)])
        self.table = AddressTable.from_ranges(ranges, direct=True)
        del ranges
        order = np.argsort(np.array(asn_entries["asn"], dtype=np.int64), kind="stable")
        self.asn_values = np.array(asn_entries["asn"], dtype=np.int64)[order]
        self.asn_ind = np.array(asn_entries["ind"], dtype=np.int32)[order]
        self.asn_side = np.array(asn_entries["side"], dtype=np.int8)[order]
        # Indicators indexed under more than one entry: only their hits can repeat (see Matcher). A
        # table row is one entry, so only the objects' entries are counted.
        entry_ind = np.sort(np.concatenate([cond_ind[plain_idx].astype(np.int32), self.entry_ind[:n_obj_entries],
                                            self.asn_ind]))  # fmt: skip
        self.repeated_inds = np.unique(entry_ind[1:][entry_ind[1:] == entry_ind[:-1]]).astype(np.int32)
        objects_part = _object_attributes(inds)
        self.attributes = Attributes([objects_part, *rows.parts])
        codes, self.source_names = IndicatorTable([objects_part, *rows.parts]).source_codes()
        width = np.uint8 if len(self.source_names) <= 256 else np.int32
        self.source_code = codes.astype(width)
        del codes
        # Validity windows, kept only for indicators that have one (checked on hits by a search).
        timed_parts, from_parts, until_parts = [], [], []
        for start, part in zip(
            [0, *(n_obj + rows.starts[:-1]).tolist()], [objects_part, *rows.parts], strict=True
        ):
            if not (part_has(part, "valid_from") or part_has(part, "valid_until")):
                continue
            valid_from = part_ints(part, "valid_from", NO_TIME_MIN)
            valid_until = part_ints(part, "valid_until", NO_TIME_MAX)
            timed = np.flatnonzero((valid_from != NO_TIME_MIN) | (valid_until != NO_TIME_MAX))
            timed_parts.append((start + timed).astype(np.int32))
            from_parts.append(valid_from[timed])
            until_parts.append(valid_until[timed])
        self.valid_ind = np.concatenate([np.empty(0, np.int32), *timed_parts])
        self.valid_from = np.concatenate([np.empty(0, np.int64), *from_parts])
        self.valid_until = np.concatenate([np.empty(0, np.int64), *until_parts])
        allow = allowlist.entries if allowlist is not None else []
        self.allow = AddressTable.build([net for net, _, _ in allow])
        self.allow_port = np.array([-1 if p is None else p for _, p, _ in allow], dtype=np.int32)
        self.allow_name = [name for _, _, name in allow]
        return self

    @classmethod
    def from_loads(cls, loads: Iterable[IntelLoad], allowlist: Allowlist | None = None) -> IndicatorIndex:
        """Every indicator of ``loads``: their objects, then their tables' rows."""
        loads = list(loads)
        table = IndicatorTable.concat([load.table for load in loads])
        return cls.build([i for load in loads for i in load.objects], allowlist, table)

    def __len__(self) -> int:
        return self.count

    removed = np.empty(0, np.int32)
    """Positions withdrawn since the build: none (see :class:`detectors.layers.LayeredIndex`)."""

    def layers(self) -> list[tuple[IndicatorIndex, int]]:
        """(index, position offset) of each layer the matcher searches: this one alone."""
        return [(self, 0)]

    def source_counts(self) -> dict[str, int]:
        """Indicators per source."""
        counts = np.bincount(self.source_code, minlength=len(self.source_names))
        return {name: int(c) for name, c in zip(self.source_names, counts.tolist(), strict=True) if c}

    @property
    def entries(self) -> int:
        return self.plain_entries + len(self.entry_ind) + len(self.asn_ind)

    def validity(self, inds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(valid from, valid until) in µs for the given indicators (open ends as int64 extremes)."""
        start = np.full(len(inds), NO_TIME_MIN, dtype=np.int64)
        stop = np.full(len(inds), NO_TIME_MAX, dtype=np.int64)
        if len(self.valid_ind) and len(inds):
            pos = np.minimum(np.searchsorted(self.valid_ind, inds), len(self.valid_ind) - 1)
            timed = self.valid_ind[pos] == inds
            start[timed], stop[timed] = self.valid_from[pos[timed]], self.valid_until[pos[timed]]
        return start, stop

    def fixed_nbytes(self) -> int:
        """The fixed tables' size (the /24 table's 128 MiB of address space and the 256 KiB of /16
        bases when any IPv4 network is indexed), whatever the number of indicators."""
        v4 = self.table.v4
        return 0 if v4.level1 is None or v4.base16 is None else v4.level1.nbytes + v4.base16.nbytes

    def nbytes(self, fixed: bool = True) -> int:
        """Memory held by the index's arrays (``fixed``: include the fixed /24 and /16 tables); the
        indicator objects and the Arrow alert-attribute table are not included."""
        total = self.table.nbytes(fixed) + self.allow.nbytes() + self.allow_port.nbytes
        for arr in (self.entry_ind, self.entry_side, self.entry_sport, self.entry_dport, self.entry_proto,
                    self.entry_asn, self.entry_has_other, self.other_first, self.other_last, self.asn_values,
                    self.asn_ind, self.asn_side, self.source_code, self.valid_ind, self.valid_from,
                    self.valid_until, self.repeated_inds):  # fmt: skip
            total += arr.nbytes
        return total


def _object_attributes(inds: list[Indicator]) -> pa.Table:
    """The object indicators' alert attributes, in the indicator table's column names."""
    return make_part({
        "id": [i.id for i in inds], "value": [i.value for i in inds], "source": [i.source for i in inds],
        "name": [i.name for i in inds], "confidence": [i.confidence for i in inds], "tlp": [i.tlp for i in inds],
        "valid_from": [i.valid_from for i in inds], "valid_until": [i.valid_until for i in inds],
    })  # fmt: skip


def network_of(text: str) -> Network:
    return ipaddress.ip_network(text, strict=False)
