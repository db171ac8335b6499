"""Address ranges -> the entries covering each address, answered for whole arrays at once.

Every range boundary splits the address space into *elementary intervals*; each interval keeps the
list (CSR) of every entry that covers it, so a lookup returns all matching prefixes — nested and
overlapping ones included — not only the longest. IPv4 lives on uint32 keys behind a 2^24-entry
table that answers "nothing here" for most addresses with one gather; IPv6 uses 16-byte keys.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

V4_SLASH24 = 1 << 24


def _csr(
    boundaries: np.ndarray, starts: np.ndarray, ends_excl_idx: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """CSR (offsets, entry ids) from each entry's [start index, end index) in interval space."""
    first = np.searchsorted(boundaries, starts, side="left")
    counts = (ends_excl_idx - first).astype(np.int64)
    total = int(counts.sum())
    entry = np.repeat(np.arange(len(starts), dtype=np.int64), counts)
    offsets_in = np.repeat(np.cumsum(counts) - counts, counts)
    interval = np.repeat(first, counts) + (np.arange(total, dtype=np.int64) - offsets_in)
    order = np.argsort(interval, kind="stable")
    per_interval = np.bincount(interval, minlength=len(boundaries))
    offsets = np.zeros(len(boundaries) + 1, dtype=np.int64)
    np.cumsum(per_interval, out=offsets[1:])
    return offsets, entry[order].astype(np.int32)


def expand(
    offsets: np.ndarray, ids: np.ndarray, rows: np.ndarray, intervals: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(row, entry) pairs for the given rows' intervals (rows with empty intervals yield nothing)."""
    start, stop = offsets[intervals], offsets[intervals + 1]
    counts = stop - start
    keep = counts > 0
    rows, start, counts = rows[keep], start[keep], counts[keep]
    total = int(counts.sum())
    rep_rows = np.repeat(rows, counts)
    pos = np.repeat(start - (np.cumsum(counts) - counts), counts) + np.arange(total, dtype=np.int64)
    return rep_rows, ids[pos]


@dataclass
class V4Intervals:
    boundaries: np.ndarray  # uint64 (values up to 2^32), sorted, starts with 0
    offsets: np.ndarray
    ids: np.ndarray
    slash24: np.ndarray  # uint8[2^24]: 1 where some entry covers part of that /24

    @classmethod
    def build(cls, first: np.ndarray, last: np.ndarray) -> V4Intervals:
        first = first.astype(np.uint64)
        end = last.astype(np.uint64) + np.uint64(1)
        boundaries = np.unique(np.concatenate([first, end, np.zeros(1, np.uint64)]))
        offsets, ids = _csr(boundaries, first, np.searchsorted(boundaries, end, side="left"))
        slash24 = np.zeros(V4_SLASH24, dtype=np.uint8)  # calloc'd: pages only touched where marked
        a = (first >> np.uint64(8)).astype(np.int64)
        b = ((end - np.uint64(1)) >> np.uint64(8)).astype(np.int64)
        single = a == b
        slash24[a[single]] = 1
        for x, y in zip(a[~single].tolist(), b[~single].tolist(), strict=True):  # prefixes shorter than /24
            slash24[x : y + 1] = 1
        return cls(boundaries, offsets, ids, slash24)

    def lookup(self, keys: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``keys``: uint32 addresses of ``rows``. Returns (row, entry) pairs."""
        if not len(self.ids) or not len(keys):
            return np.empty(0, np.int64), np.empty(0, np.int32)
        maybe = self.slash24[keys >> 8].astype(bool)
        keys, rows = keys[maybe], rows[maybe]
        if not len(keys):
            return np.empty(0, np.int64), np.empty(0, np.int32)
        unique, inverse = np.unique(keys, return_inverse=True)  # sorted queries: cache-friendly search
        intervals = np.searchsorted(self.boundaries, unique.astype(np.uint64), side="right") - 1
        return expand(self.offsets, self.ids, rows, intervals[inverse])


def _plus_one(hi: np.ndarray, lo: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lo1 = lo + np.uint64(1)
    carry = lo1 == 0
    hi1 = hi + carry.astype(np.uint64)
    wrapped = carry & (hi1 == 0)
    return hi1, lo1, wrapped


def to_keys(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """(hi, lo) words as sortable 16-byte strings (big-endian, so byte order is numeric order)."""
    pairs = np.empty((len(hi), 2), dtype=">u8")
    pairs[:, 0], pairs[:, 1] = hi, lo
    return pairs.view("S16").ravel()


@dataclass
class V6Intervals:
    boundaries: np.ndarray  # S16, sorted
    offsets: np.ndarray
    ids: np.ndarray

    @classmethod
    def build(
        cls, first_hi: np.ndarray, first_lo: np.ndarray, last_hi: np.ndarray, last_lo: np.ndarray
    ) -> V6Intervals:
        end_hi, end_lo, wrapped = _plus_one(last_hi, last_lo)
        starts = to_keys(first_hi, first_lo)
        ends = to_keys(end_hi[~wrapped], end_lo[~wrapped])
        boundaries = np.unique(
            np.concatenate([starts, ends, to_keys(np.zeros(1, np.uint64), np.zeros(1, np.uint64))])
        )
        end_idx = np.full(len(starts), len(boundaries), dtype=np.int64)
        end_idx[~wrapped] = np.searchsorted(boundaries, ends, side="left")
        offsets, ids = _csr(boundaries, starts, end_idx)
        return cls(boundaries, offsets, ids)

    def lookup(self, keys: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not len(self.ids) or not len(keys):
            return np.empty(0, np.int64), np.empty(0, np.int32)
        unique, inverse = np.unique(keys, return_inverse=True)
        intervals = np.searchsorted(self.boundaries, unique, side="right") - 1
        return expand(self.offsets, self.ids, rows, intervals[inverse])
