"""The indicator index: immutable, built off the hot path, answering a whole batch at once.

Each indicator condition becomes one or more *entries* with scalar constraints (a condition naming
two ports becomes two entries), so every check after the address lookup is a vectorised comparison.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from itertools import product

import numpy as np
import pyarrow as pa

from detectors.addresses import Addresses
from detectors.intervals import V4Intervals, V6Intervals
from pipeline.intel.allowlists import Allowlist
from pipeline.intel.model import Indicator, Network

SIDES = {"any": 0, "src": 1, "dst": 2}
NO_TIME_MIN, NO_TIME_MAX = np.iinfo(np.int64).min, np.iinfo(np.int64).max
V4_MAPPED_HI, V4_MAPPED_LO_BASE = 0, 0xFFFF << 32


def _us(when: datetime | None, default: int) -> int:
    return default if when is None else int(when.timestamp() * 1_000_000)


def _bounds(network: Network) -> tuple[int, int]:
    """First and last address in the 128-bit flow-schema space (IPv4 mapped)."""
    first, last = int(network.network_address), int(network.broadcast_address)
    if network.version == 4:
        return V4_MAPPED_LO_BASE | first, V4_MAPPED_LO_BASE | last
    return first, last


@dataclass
class AddressTable:
    """Networks (with per-entry payload arrays) split into the IPv4 and IPv6 interval structures."""

    v4: V4Intervals
    v4_entries: np.ndarray  # v4 structure's entry id -> entry row
    v6: V6Intervals
    v6_entries: np.ndarray

    @classmethod
    def build(cls, networks: list[Network]) -> AddressTable:
        v4_rows = np.array([i for i, n in enumerate(networks) if n.version == 4], dtype=np.int32)
        v6_rows = np.array([i for i, n in enumerate(networks) if n.version == 6], dtype=np.int32)
        v4_first = np.array([int(networks[i].network_address) for i in v4_rows], dtype=np.uint64)
        v4_last = np.array([int(networks[i].broadcast_address) for i in v4_rows], dtype=np.uint64)
        v6_bounds = [_bounds(networks[i]) for i in v6_rows]
        hi = np.array([[b[0] >> 64, b[1] >> 64] for b in v6_bounds], dtype=np.uint64).reshape(-1, 2)
        lo = np.array([[b[0] & (2**64 - 1), b[1] & (2**64 - 1)] for b in v6_bounds], dtype=np.uint64).reshape(
            -1, 2
        )
        return cls(
            V4Intervals.build(v4_first, v4_last), v4_rows,
            V6Intervals.build(hi[:, 0], lo[:, 0], hi[:, 1], lo[:, 1]), v6_rows,
        )  # fmt: skip

    def lookup(self, addresses: Addresses) -> tuple[np.ndarray, np.ndarray]:
        """(row, entry) pairs for every address that some network covers."""
        if addresses.all_v4:  # the common batch: no masks, no IPv6 work
            rows = np.arange(len(addresses), dtype=np.int64)
            r4, e4 = self.v4.lookup(addresses.v4, rows)
            return r4, self.v4_entries[e4]
        v4_rows = np.nonzero(addresses.is_v4)[0]
        v6_rows = np.nonzero(~addresses.is_v4)[0]
        r4, e4 = self.v4.lookup(addresses.v4[v4_rows], v4_rows)
        r6, e6 = self.v6.lookup(addresses.keys16(v6_rows), v6_rows)
        return np.concatenate([r4, r6]), np.concatenate([self.v4_entries[e4], self.v6_entries[e6]])


class IndicatorIndex:
    """Build with :meth:`build`; never mutated afterwards (a new index replaces it whole)."""

    def __init__(self) -> None:
        self.indicators: list[Indicator] = []
        self.table: AddressTable
        self.allow: AddressTable
        self.allow_port: np.ndarray
        self.allow_name: list[str] = []

    @classmethod
    def build(cls, indicators: Iterable[Indicator], allowlist: Allowlist | None = None) -> IndicatorIndex:
        self = cls()
        self.indicators = [i for i in indicators if not i.revoked]
        networks: list[Network] = []
        cols: dict[str, list[int]] = {
            k: [] for k in ("ind", "side", "sport", "dport", "proto", "asn", "has_other")
        }
        other_bounds: list[tuple[int, int]] = []
        asn_entries: dict[str, list[int]] = {"ind": [], "asn": [], "side": []}
        for n, ind in enumerate(self.indicators):
            for c in ind.conditions:
                sports = sorted(c.src_ports) if c.src_ports is not None else [-1]
                dports = sorted(c.dst_ports) if c.dst_ports is not None else [-1]
                protos = sorted(c.protocols) if c.protocols is not None else [-1]
                for sport, dport, proto in product(sports, dports, protos):
                    if c.network is None:
                        if sport == dport == proto == -1:
                            asn_entries["ind"].append(n)
                            asn_entries["asn"].append(c.asn or 0)
                            asn_entries["side"].append(SIDES[c.side])
                        continue  # AS with port constraints: not indexed (rare); see docs
                    networks.append(c.network)
                    for key, value in (("ind", n), ("side", SIDES[c.side]), ("sport", sport), ("dport", dport),
                                       ("proto", proto), ("asn", c.asn if c.asn is not None else -1),
                                       ("has_other", int(c.other_network is not None))):  # fmt: skip
                        cols[key].append(value)
                    other_bounds.append(_bounds(c.other_network) if c.other_network is not None else (0, 0))
        self.entry_ind = np.array(cols["ind"], dtype=np.int32)
        self.entry_side = np.array(cols["side"], dtype=np.int8)
        self.entry_sport = np.array(cols["sport"], dtype=np.int32)
        self.entry_dport = np.array(cols["dport"], dtype=np.int32)
        self.entry_proto = np.array(cols["proto"], dtype=np.int16)
        self.entry_asn = np.array(cols["asn"], dtype=np.int64)
        self.entry_has_other = np.array(cols["has_other"], dtype=bool)
        ob = np.array(other_bounds, dtype=object).reshape(-1, 2)
        self.other_first = np.array(
            [(int(x) >> 64, int(x) & (2**64 - 1)) for x in ob[:, 0]], dtype=np.uint64
        ).reshape(-1, 2)
        self.other_last = np.array(
            [(int(x) >> 64, int(x) & (2**64 - 1)) for x in ob[:, 1]], dtype=np.uint64
        ).reshape(-1, 2)
        self.table = AddressTable.build(networks)
        order = np.argsort(np.array(asn_entries["asn"], dtype=np.int64), kind="stable")
        self.asn_values = np.array(asn_entries["asn"], dtype=np.int64)[order]
        self.asn_ind = np.array(asn_entries["ind"], dtype=np.int32)[order]
        self.asn_side = np.array(asn_entries["side"], dtype=np.int8)[order]
        inds = self.indicators
        # Alert attributes, one row per indicator: hits take rows of it instead of building Python lists.
        self.attributes = pa.table({
            "indicator_id": pa.array([i.id for i in inds], type=pa.string()),
            "indicator": pa.array([i.value for i in inds], type=pa.string()),
            "indicator_name": pa.array([i.name for i in inds], type=pa.string()),
            "source": pa.array([i.source for i in inds], type=pa.string()),
            "confidence": pa.array([i.confidence for i in inds], type=pa.int32()),
            "tlp": pa.array([i.tlp for i in inds], type=pa.string()),
            "valid_until": pa.array([i.valid_until for i in inds], type=pa.timestamp("us", tz="UTC")),
        })  # fmt: skip
        self.source_names = sorted({i.source for i in inds})
        codes = {name: n for n, name in enumerate(self.source_names)}
        self.source_code = np.array([codes[i.source] for i in inds], dtype=np.int32)
        self.valid_from = np.array([_us(i.valid_from, NO_TIME_MIN) for i in self.indicators], dtype=np.int64)
        self.valid_until = np.array(
            [_us(i.valid_until, NO_TIME_MAX) for i in self.indicators], dtype=np.int64
        )
        allow = allowlist.entries if allowlist is not None else []
        self.allow = AddressTable.build([n for n, _, _ in allow])
        self.allow_port = np.array([-1 if p is None else p for _, p, _ in allow], dtype=np.int32)
        self.allow_name = [name for _, _, name in allow]
        return self

    @property
    def entries(self) -> int:
        return len(self.entry_ind) + len(self.asn_ind)

    def nbytes(self) -> int:
        """Memory held by the index's arrays (fixed tables included)."""
        total = 0
        for table in (self.table, self.allow):
            total += (
                table.v4.boundaries.nbytes
                + table.v4.offsets.nbytes
                + table.v4.ids.nbytes
                + table.v4.slash24.nbytes
            )
            total += table.v6.boundaries.nbytes + table.v6.offsets.nbytes + table.v6.ids.nbytes
            total += table.v4_entries.nbytes + table.v6_entries.nbytes
        for arr in (self.entry_ind, self.entry_side, self.entry_sport, self.entry_dport, self.entry_proto,
                    self.entry_asn, self.entry_has_other, self.other_first, self.other_last, self.asn_values,
                    self.asn_ind, self.asn_side, self.valid_from, self.valid_until):  # fmt: skip
            total += arr.nbytes
        return total


def network_of(text: str) -> Network:
    return ipaddress.ip_network(text, strict=False)
