"""Distinct targets of a scanner, mergeable exactly across batches and workers.

Exact sets while small (up to ``EXACT_LIMIT`` addresses: every threshold an operator is likely to
set is decided exactly), then a HyperLogLog (datasketch, p=12: 4,096 registers, ~1.6% standard error)
whose registers merge by maximum. Registers are built for whole arrays of addresses at once with the
same 32-bit hash that is handed to datasketch for single updates, so both paths agree bit for bit.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from datasketch import HyperLogLog

from pipeline.schemas import bytes16_to_ip, ip_to_bytes16

EXACT_LIMIT = 256
HLL_P = 12
_M = 1 << HLL_P
_MAX_RANK = 32 - HLL_P
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijective 64-bit mix with good avalanche (uint64 arrays)."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def address_hash32(raw: np.ndarray) -> np.ndarray:
    """32-bit hashes of (n, 16) uint8 flow-schema addresses."""
    words = np.ascontiguousarray(raw).view(">u8").reshape(-1, 2).astype(np.uint64)
    return (_mix64(words[:, 0] ^ _mix64(words[:, 1])) & np.uint64(0xFFFFFFFF)).astype(np.uint32)


def hash32(value: bytes) -> int:
    """The same hash for one 16-byte address: datasketch's ``hashfunc``."""
    return int(address_hash32(np.frombuffer(value, np.uint8).reshape(1, 16))[0])


def registers(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(register index, rank) of each address, as datasketch's ``update`` computes them."""
    h = address_hash32(raw).astype(np.int64)
    bits = h >> HLL_P
    length = np.zeros(len(bits), np.int64)
    nonzero = bits > 0
    length[nonzero] = np.floor(np.log2(bits[nonzero])).astype(np.int64) + 1
    return (h & (_M - 1)), _MAX_RANK - length + 1


class TargetSet:
    """Distinct addresses: an exact set of 16-byte values, or HyperLogLog registers once large."""

    def __init__(self) -> None:
        self.exact_values: set[bytes] | None = set()
        self.hll: HyperLogLog | None = None

    @property
    def exact(self) -> bool:
        return self.hll is None

    def add_raw(self, raw: np.ndarray) -> None:
        """Add (n, 16) uint8 addresses."""
        if self.exact_values is not None:
            self.exact_values.update(np.ascontiguousarray(raw).view("V16").ravel().tolist())
            if len(self.exact_values) > EXACT_LIMIT:
                self._to_hll()
            return
        self._add_registers(*registers(raw))

    def _to_hll(self) -> None:
        values = sorted(self.exact_values or ())
        self.hll, self.exact_values = HyperLogLog(p=HLL_P, hashfunc=hash32), None
        if values:
            raw = np.frombuffer(b"".join(values), np.uint8).reshape(-1, 16)
            self._add_registers(*registers(raw))

    def _add_registers(self, index: np.ndarray, rank: np.ndarray) -> None:
        assert self.hll is not None
        reg = self.hll.reg.astype(np.int64)
        np.maximum.at(reg, index, rank)
        self.hll.reg = reg.astype(self.hll.reg.dtype)

    def merge(self, other: TargetSet) -> None:
        if self.exact_values is not None and other.exact_values is not None:
            self.exact_values |= other.exact_values
            if len(self.exact_values) > EXACT_LIMIT:
                self._to_hll()
            return
        if self.exact_values is not None:
            self._to_hll()
        assert self.hll is not None
        if other.hll is not None:
            self.hll.merge(other.hll)
        else:
            raw = np.frombuffer(b"".join(sorted(other.exact_values or ())), np.uint8).reshape(-1, 16)
            self._add_registers(*registers(raw))

    def count(self) -> int:
        if self.exact_values is not None:
            return len(self.exact_values)
        assert self.hll is not None
        with warnings.catch_warnings():  # datasketch warns near its small-range threshold
            warnings.simplefilter("ignore")
            return round(self.hll.count())

    def to_json(self) -> dict[str, Any]:
        """``targets`` (sorted address strings) while exact, else ``hll`` (sparse [index, rank] pairs)."""
        if self.exact_values is not None:
            return {"targets": [str(bytes16_to_ip(v)) for v in sorted(self.exact_values)], "hll": None}
        assert self.hll is not None
        nonzero = np.flatnonzero(self.hll.reg)
        return {"targets": None, "hll": [[int(i), int(self.hll.reg[i])] for i in nonzero]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TargetSet:
        out = cls()
        if data.get("hll") is not None:
            out.hll, out.exact_values = HyperLogLog(p=HLL_P, hashfunc=hash32), None
            pairs = np.asarray(data["hll"], dtype=np.int64).reshape(-1, 2)
            if len(pairs):
                out._add_registers(pairs[:, 0], pairs[:, 1])
        else:
            out.exact_values = {ip_to_bytes16(t) for t in data.get("targets") or ()}
            if len(out.exact_values) > EXACT_LIMIT:
                out._to_hll()
        return out
