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
from detectors.intervals import V4Intervals, V6Intervals
from pipeline.intel.allowlists import Allowlist
from pipeline.intel.model import Indicator, Network

SIDES = {"any": 0, "src": 1, "dst": 2}
NO_TIME_MIN, NO_TIME_MAX = np.iinfo(np.int64).min, np.iinfo(np.int64).max
V4_MAPPED_HI, V4_MAPPED_LO_BASE = 0, 0xFFFF << 32
_EXTRA = attrgetter("src_ports", "dst_ports", "protocols", "asn", "other_network")
_NO_EXTRA = (None, None, None, None, None)
_ALL64 = np.uint64(2**64 - 1)
_CONDITIONS, _NETWORK, _SIDE = attrgetter("conditions"), attrgetter("network"), attrgetter("side")
_ADDRESS, _PREFIXLEN, _PACKED = attrgetter("network_address"), attrgetter("prefixlen"), attrgetter("packed")

_VERSION = attrgetter("version")


def _us(when: datetime | None, default: int) -> int:
    return default if when is None else int(when.timestamp() * 1_000_000)


def _bounds(network: Network) -> tuple[int, int]:
    """First and last address in the 128-bit flow-schema space (IPv4 mapped)."""
    first, last = int(network.network_address), int(network.broadcast_address)
    if network.version == 4:
        return V4_MAPPED_LO_BASE | first, V4_MAPPED_LO_BASE | last
    return first, last


def _low_bits(bits: np.ndarray) -> np.ndarray:
    """uint64 masks of the ``bits`` (0..64) lowest bits."""
    shifted = np.left_shift(np.uint64(1), np.minimum(bits, 63).astype(np.uint64)) - np.uint64(1)
    return np.where(bits >= 64, _ALL64, shifted)


def v4_ranges(networks: list[Network]) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive (first, last) uint64 arrays of IPv4 networks."""
    n = len(networks)
    first = np.fromiter(map(int, map(_ADDRESS, networks)), np.uint64, n)
    host = 32 - np.fromiter(map(_PREFIXLEN, networks), np.int64, n)
    return first, first | _low_bits(host)


def v6_ranges(networks: list[Network]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Inclusive (first_hi, first_lo, last_hi, last_lo) uint64 arrays of IPv6 networks."""
    n = len(networks)
    packed = b"".join(map(_PACKED, map(_ADDRESS, networks)))
    words = np.frombuffer(packed, dtype=">u8").reshape(-1, 2).astype(np.uint64)
    host = 128 - np.fromiter(map(_PREFIXLEN, networks), np.int64, n)
    hi, lo = words[:, 0], words[:, 1]
    return hi, lo, hi | _low_bits((host - 64).clip(0)), lo | _low_bits(host.clip(0, 64))


@dataclass
class AddressTable:
    """Networks, each with an int32 payload, split into the IPv4 and IPv6 interval structures."""

    v4: V4Intervals
    v6: V6Intervals

    @classmethod
    def build(
        cls, networks: list[Network], payload: np.ndarray | None = None, direct: bool = False
    ) -> AddressTable:
        """``payload`` defaults to each network's position; ``direct``: IPv4 via the /24 table
        (128 MiB of address space, for the per-flow path) rather than a search (allowlists: hits only)."""
        if payload is None:
            payload = np.arange(len(networks), dtype=np.int32)
        is_v4 = np.fromiter(map(_VERSION, networks), np.int8, len(networks)) == 4
        idx4, idx6 = np.flatnonzero(is_v4), np.flatnonzero(~is_v4)
        first4, last4 = v4_ranges([networks[i] for i in idx4.tolist()])
        bounds6 = v6_ranges([networks[i] for i in idx6.tolist()])
        return cls(
            V4Intervals.build(first4, last4, payload[idx4], direct=direct),
            V6Intervals.build(*bounds6, payload=payload[idx6]),
        )

    def lookup(self, addresses: Addresses) -> tuple[np.ndarray, np.ndarray]:
        """(row, payload) pairs for every address that some network covers."""
        r4, e4 = self.v4.lookup(addresses.v4)  # every row: cheaper than picking the IPv4 ones first
        if addresses.all_v4:  # the common batch: no IPv6 work
            return r4, e4
        keep = np.flatnonzero(np.take(addresses.is_v4, r4))  # IPv6 rows' last words meant nothing
        r4, e4 = np.take(r4, keep), np.take(e4, keep)
        v6_rows = np.flatnonzero(~addresses.is_v4)
        r6, e6 = self.v6.lookup(addresses.keys16(v6_rows), v6_rows)
        return np.concatenate([r4, r6]), np.concatenate([e4, e6])

    def nbytes(self, fixed: bool = True) -> int:
        return self.v4.nbytes(fixed) + self.v6.nbytes()


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
        self.indicators = inds = [i for i in indicators if not i.revoked]
        n = len(inds)
        # The bulk is read with C-level map/attrgetter passes, one attribute at a time.
        per_indicator = np.fromiter(map(len, map(_CONDITIONS, inds)), np.int64, n)
        conds = list(chain.from_iterable(map(_CONDITIONS, inds)))
        cond_ind = np.repeat(np.arange(n, dtype=np.int64), per_indicator)
        nets = list(map(_NETWORK, conds))
        plain = np.fromiter(map(_NO_EXTRA.__eq__, map(_EXTRA, conds)), bool, len(conds))
        plain &= np.fromiter(map(is_not, nets, repeat(None)), bool, len(conds))
        plain_idx = np.flatnonzero(plain)
        plain_conds = [conds[k] for k in plain_idx.tolist()]
        plain_side = np.fromiter(map(SIDES.__getitem__, map(_SIDE, plain_conds)), np.int64, len(plain_idx))
        networks = list(map(_NETWORK, plain_conds))
        del plain_conds
        payload = [(cond_ind[plain_idx] * 3 + plain_side).astype(np.int32)]
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
        payload.append(-(np.arange(len(cols["ind"]), dtype=np.int32) + 1))
        self.plain_entries = len(plain_idx)
        self.entry_ind = np.array(cols["ind"], dtype=np.int32)  # constrained entries only, from here on
        self.entry_side = np.array(cols["side"], dtype=np.int8)
        self.entry_sport = np.array(cols["sport"], dtype=np.int32)
        self.entry_dport = np.array(cols["dport"], dtype=np.int32)
        self.entry_proto = np.array(cols["proto"], dtype=np.int16)
        self.entry_asn = np.array(cols["asn"], dtype=np.int64)
        self.entry_has_other = np.array(cols["has_other"], dtype=bool)
        self.other_first = np.array([(b[0] >> 64, b[0] & (2**64 - 1)) for b in other_bounds], dtype=np.uint64)
        self.other_last = np.array([(b[1] >> 64, b[1] & (2**64 - 1)) for b in other_bounds], dtype=np.uint64)
        self.other_first, self.other_last = self.other_first.reshape(-1, 2), self.other_last.reshape(-1, 2)
        all_payload = np.concatenate(payload)
        self.table = AddressTable.build(networks, all_payload, direct=True)
        del networks, nets, conds
        order = np.argsort(np.array(asn_entries["asn"], dtype=np.int64), kind="stable")
        self.asn_values = np.array(asn_entries["asn"], dtype=np.int64)[order]
        self.asn_ind = np.array(asn_entries["ind"], dtype=np.int32)[order]
        self.asn_side = np.array(asn_entries["side"], dtype=np.int8)[order]
        # Indicators indexed under more than one entry: only their hits can repeat (see Matcher).
        entry_ind = np.sort(np.concatenate([all_payload[: len(plain_idx)] // 3, self.entry_ind, self.asn_ind]))
        self.repeated_inds = np.unique(entry_ind[1:][entry_ind[1:] == entry_ind[:-1]]).astype(np.int32)
        valid_until = list(map(attrgetter("valid_until"), inds))
        # Alert attributes, one row per indicator: hits take rows of it instead of building Python lists.
        self.attributes = pa.table({
            "indicator_id": pa.array(list(map(attrgetter("id"), inds)), type=pa.string()),
            "indicator": pa.array(list(map(attrgetter("value"), inds)), type=pa.string()),
            "indicator_name": pa.array(list(map(attrgetter("name"), inds)), type=pa.string()),
            "source": pa.array(list(map(attrgetter("source"), inds)), type=pa.string()),
            "confidence": pa.array(list(map(attrgetter("confidence"), inds)), type=pa.int32()),
            "tlp": pa.array(list(map(attrgetter("tlp"), inds)), type=pa.string()),
            "valid_until": pa.array(valid_until, type=pa.timestamp("us", tz="UTC")),
        })  # fmt: skip
        # Few-valued text (source, TLP, often the name) as dictionaries: a hit then takes a small
        # integer instead of reaching into millions of strings (at 10M indicators ~12 ms per 200k hits).
        for name in ("indicator_name", "source", "tlp"):
            encoded = self.attributes.column(name).combine_chunks().dictionary_encode()
            if len(encoded.dictionary) <= max(16, n // 4):
                position = self.attributes.schema.get_field_index(name)
                self.attributes = self.attributes.set_column(position, name, encoded)
        sources = self.attributes.column("source").combine_chunks()
        if not pa.types.is_dictionary(sources.type):
            sources = sources.dictionary_encode()
        self.source_names = sources.dictionary.to_pylist()
        width = np.uint8 if len(self.source_names) <= 256 else np.int32
        self.source_code = sources.indices.to_numpy(zero_copy_only=False).astype(width)
        # Validity windows, kept only for indicators that have one (checked on hits by a search).
        valid_from = list(map(attrgetter("valid_from"), inds))
        timed = np.flatnonzero(
            np.fromiter(map(is_not, valid_from, repeat(None)), bool, n)
            | np.fromiter(map(is_not, valid_until, repeat(None)), bool, n)
        )
        self.valid_ind = timed.astype(np.int32)
        self.valid_from = np.array([_us(valid_from[k], NO_TIME_MIN) for k in timed.tolist()], dtype=np.int64)
        self.valid_until = np.array(
            [_us(valid_until[k], NO_TIME_MAX) for k in timed.tolist()], dtype=np.int64
        )
        allow = allowlist.entries if allowlist is not None else []
        self.allow = AddressTable.build([net for net, _, _ in allow])
        self.allow_port = np.array([-1 if p is None else p for _, p, _ in allow], dtype=np.int32)
        self.allow_name = [name for _, _, name in allow]
        return self

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


def network_of(text: str) -> Network:
    return ipaddress.ip_network(text, strict=False)
