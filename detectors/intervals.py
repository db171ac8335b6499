"""Address ranges -> the payloads of every range covering each address, answered for whole arrays.

Every range boundary splits the address space into *elementary intervals*; each interval keeps the
list (CSR) of the payload of every range that covers it, so a lookup returns all matching prefixes —
nested and overlapping ones included — not only the longest.

IPv4 (the bulk of backbone traffic) is answered by one read of a DIR-24-8-style table of 2^24 uint64
(one per /24), no search. An entry is 0 where nothing covers the /24, ``i + 1`` where the whole /24
lies in one non-empty interval ``i``, and a *block* (top bit set) where interval boundaries fall
inside it. Blocks of up to 4 inner boundaries (a /24 holding one or two scattered /32s: nearly all of
them, even at 10M indicators) are *inline*, the whole block in the entry itself:

    bits 0-31   the inner boundaries' low bytes, ascending (4 lanes)
    bits 32-34  how many lanes are used
    bits 35-39  one flag per sub-interval: does any range cover it
    bits 40-61  the /24's first interval, relative to its /16's (``base16``, 256 KiB, cache-resident)
    bit 62      inline; bit 63 block

so the interval of low byte ``x`` is ``base16 + rel + #(lanes <= x)``, and an address in a gap between
scattered /32s is dismissed without a second read. Crowded blocks (bit 62 clear, low bits = ``j``) keep
up to 32 sorted bytes, or a 256-byte table beyond. The table is an anonymous mapping (128 MiB of
address space; transparent huge pages asked for when the set is large enough to write most of it:
one TLB entry per 2 MiB), so only the pages the build writes become resident. The passes run compiled (:mod:`detectors.kernels`). Allowlists
(looked up for hits only) and IPv6 use sorted boundaries and a search.
"""

from __future__ import annotations

import contextlib
import mmap
from dataclasses import dataclass, field

import numpy as np

from detectors import interval_build, kernels

V4_SLASH24 = 1 << 24
V4_SLASH16 = 1 << 16
TIER_WIDTHS = (interval_build.INLINE_MAX, interval_build.SORTED_MAX)
"""Inner boundaries per /24: inline in the entry, sorted bytes (padded with 255, never < a low byte);
beyond: a dense 256-byte table."""


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """np.unique by sorting (numpy 2.4's hash-based np.unique is ~15x slower on millions of keys)."""
    out = np.sort(values)
    return out[np.r_[True, out[1:] != out[:-1]]] if len(out) else out


def _offsets_dtype(total: int) -> type:
    return np.int32 if total < 2**31 - 1 else np.int64


def _csr(
    boundaries: np.ndarray, starts: np.ndarray, ends_excl_idx: np.ndarray, payload: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """CSR (offsets, payloads) from each range's [start index, end index) in interval space; within
    an interval, payloads in range order (compiled: two passes, no per-entry temporaries)."""
    first = np.searchsorted(boundaries, starts, side="left")
    offsets = np.zeros(len(boundaries) + 1, dtype=np.int64)
    total = kernels.csr_counts(first, ends_excl_idx, offsets)
    ids = np.empty(total, dtype=np.int32)
    kernels.csr_fill(first, ends_excl_idx, payload.astype(np.int32, copy=False), offsets, ids)
    return offsets.astype(_offsets_dtype(total), copy=False), ids


def expand(
    offsets: np.ndarray, ids: np.ndarray, rows: np.ndarray, intervals: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(row, payload) pairs for the given rows' intervals (rows with empty intervals yield nothing)."""
    start = np.take(offsets, intervals)
    counts = np.take(offsets, intervals + 1) - start
    keep = np.flatnonzero(counts != 0)
    rows, start, counts = np.take(rows, keep), np.take(start, keep), np.take(counts, keep)
    if len(counts) and counts.max() == 1:  # the common case: one range per hit interval
        return rows.astype(np.int64), np.take(ids, start)
    total = int(counts.sum())
    rep_rows = np.repeat(rows.astype(np.int64), counts)
    pos = np.repeat(start - (np.cumsum(counts) - counts), counts) + np.arange(total, dtype=np.int64)
    return rep_rows, np.take(ids, pos)


_HUGE_FROM = 1 << 15  # ranges from which the table is written nearly everywhere anyway


def _zeroed_uint64(n: int, huge: bool) -> np.ndarray:
    """A zero-filled array on anonymous pages: only the pages written later become resident. With
    ``huge``, transparent huge pages are asked for: random reads then miss the TLB far less often,
    but a single write makes 2 MiB resident, so only for sets that write most 4 KiB pages anyway."""
    buf = mmap.mmap(-1, 8 * n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if huge:
        with contextlib.suppress(AttributeError, OSError):  # not every platform has MADV_HUGEPAGE
            buf.madvise(mmap.MADV_HUGEPAGE)
    return np.frombuffer(buf, dtype=np.uint64)


def resident_bytes(arr: np.ndarray) -> int | None:
    """Bytes of ``arr``'s pages in memory (mincore), or None where that cannot be asked. Pages never
    written are not counted, but reading one maps the shared zero page, which mincore does count:
    ask before reading a freshly built table."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    page = mmap.PAGESIZE
    start = arr.ctypes.data - arr.ctypes.data % page
    length = arr.ctypes.data + arr.nbytes - start
    vec = (ctypes.c_ubyte * ((length + page - 1) // page))()
    if libc.mincore(ctypes.c_void_p(start), ctypes.c_size_t(length), vec) != 0:
        return None
    return int(np.count_nonzero(np.frombuffer(vec, dtype=np.uint8) & 1)) * page


def _heads(offsets: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, int, np.ndarray, np.ndarray]:
    """One int32 per interval instead of a CSR span: most covered intervals hold one payload, which
    is then read in the same random access as the interval. With ``floor`` the smallest payload (or
    0), a head is that payload (>= floor), ``floor - 1`` for an empty interval, or ``floor - 2 - m``
    for the m-th interval with several payloads, kept in a CSR of their own. Returns (head, floor,
    multi offsets, multi payloads)."""
    counts = np.diff(offsets)
    floor = min(int(ids.min()), 0) if len(ids) else 0
    multi = np.flatnonzero(counts > 1)
    if floor - 2 - len(multi) < np.iinfo(np.int32).min:
        raise ValueError("too many payloads for 32-bit interval heads")
    head = np.full(len(counts), floor - 1, dtype=np.int32)
    single = np.flatnonzero(counts == 1)
    head[single] = ids[offsets[single]]
    head[multi] = floor - 2 - np.arange(len(multi), dtype=np.int64)
    m_counts = counts[multi]
    m_offsets = np.zeros(len(multi) + 1, dtype=_offsets_dtype(int(m_counts.sum())))
    np.cumsum(m_counts, out=m_offsets[1:])
    starts = np.repeat(offsets[multi].astype(np.int64) - m_offsets[:-1], m_counts)
    m_ids = ids[starts + np.arange(int(m_counts.sum()), dtype=np.int64)]
    return head, floor, m_offsets, m_ids


@dataclass
class V4Intervals:
    offsets: np.ndarray  # CSR (int32 unless huge): over every interval, or (with head) the multi ones
    ids: np.ndarray  # int32 payloads
    head: np.ndarray | None = None
    """With the /24 table, one int32 per interval instead of a CSR span: most covered intervals hold
    one payload, then read in the same random access as the interval. ``floor`` is the smallest
    payload (or 0); a head is that payload (>= floor), ``floor - 1`` for an empty interval, or
    ``floor - 2 - m`` for the m-th interval with several payloads, kept in ``offsets``/``ids``."""
    floor: int = 0  # the smallest payload, or 0: head values below it are markers
    boundaries: np.ndarray | None = None  # uint32; kept only without the direct table (search path)
    level1: np.ndarray | None = None  # uint64[2^24], see module docstring
    base16: np.ndarray | None = None  # int32[2^16]: the interval at each /16's first address
    tier_base: list[np.ndarray] = field(default_factory=list)  # crowded blocks (sorted, dense): int32
    tier_keys: list[np.ndarray] = field(default_factory=list)  # uint8 [n, 32] sorted or [n, 256] deltas

    @classmethod
    def build(
        cls, first: np.ndarray, last: np.ndarray, payload: np.ndarray, direct: bool = True
    ) -> V4Intervals:
        """``first``/``last``: inclusive uint32-valued bounds; ``direct``: build the /24 table (by the
        compiled passes of :mod:`detectors.interval_build`), else a search structure (allowlists)."""
        if not direct:
            return cls._searched(first, last, payload)
        n = len(first)
        keys = np.empty(n, np.uint64)
        interval_build.pack_keys(np.ascontiguousarray(first, dtype=np.uint32), keys)
        keys.sort()  # by start (then position): later passes walk boundaries in step with the ranges
        first_s, last_s, payload_s = np.empty(n, np.uint32), np.empty(n, np.uint32), np.empty(n, np.int32)
        interval_build.unpack_sorted(keys, np.ascontiguousarray(last, dtype=np.uint32),
                                     np.ascontiguousarray(payload, dtype=np.int32), first_s, last_s, payload_s)  # fmt: skip
        del keys
        lasts = np.sort(last_s)
        boundaries = np.empty(2 * n + 1, np.uint32)
        boundaries = boundaries[: interval_build.merge_boundaries(first_s, lasts, boundaries)].copy()
        del lasts
        head = np.zeros(len(boundaries), np.int32)  # counts, then (in place) heads
        interval_build.interval_counts(boundaries, first_s, last_s, head)
        n_multi, total = interval_build.multi_totals(head)
        floor = min(int(payload_s.min()), 0) if n else 0
        if floor - 2 - n_multi < np.iinfo(np.int32).min:
            raise ValueError("too many payloads for 32-bit interval heads")
        multi_offsets = np.empty(n_multi + 1, np.int64)
        interval_build.mark_heads(head, floor, multi_offsets)
        ids = np.empty(total, np.int32)
        interval_build.fill_heads(
            boundaries, first_s, last_s, payload_s, head, floor, multi_offsets[:-1].copy(), ids
        )
        del first_s, last_s, payload_s
        base16 = np.empty(V4_SLASH16, np.int32)
        interval_build.slash16_bases(boundaries, base16)
        level1 = _zeroed_uint64(V4_SLASH24, huge=n >= _HUGE_FROM)
        interval_build.whole_blocks(boundaries, head, floor, level1)
        n_sorted, n_dense = interval_build.crowded_blocks(boundaries)
        tier_base = [np.empty(n_sorted, np.int32), np.empty(n_dense, np.int32)]
        tier_keys = [np.empty((n_sorted, TIER_WIDTHS[1]), np.uint8), np.empty((n_dense, 256), np.uint8)]
        interval_build.inner_blocks(boundaries, head, floor, base16, level1, tier_base[0], tier_keys[0], tier_base[1],
                                    tier_keys[1])  # fmt: skip
        if not n_sorted and not n_dense:
            tier_base, tier_keys = [], []
        offsets = multi_offsets.astype(_offsets_dtype(total))
        return cls(offsets, ids, head=head, floor=floor, level1=level1, base16=base16, tier_base=tier_base,
                   tier_keys=tier_keys)  # fmt: skip

    @classmethod
    def _searched(cls, first: np.ndarray, last: np.ndarray, payload: np.ndarray) -> V4Intervals:
        """Sorted boundaries and a CSR of payloads per interval, answered by a search (few ranges)."""
        order = np.argsort(first, kind="stable")
        first, payload = first[order].astype(np.uint64), payload[order]
        end = last[order].astype(np.uint64) + np.uint64(1)
        boundaries = sorted_unique(np.concatenate([first, end, np.zeros(1, np.uint64)]))
        end_idx = np.searchsorted(boundaries, end, side="left")
        offsets, ids = _csr(boundaries, first, end_idx, payload)
        if boundaries[-1] == 1 << 32:  # the end of the last range starts no interval (and fits no uint32)
            boundaries = boundaries[:-1]
        return cls(offsets, ids, boundaries=boundaries.astype(np.uint32))

    def nbytes(self, fixed: bool = True) -> int:
        """Bytes held; ``fixed=False`` leaves out the fixed tables (128 MiB /24 table, 256 KiB /16 bases)."""
        arrays = [self.offsets, self.ids, *self.tier_base, *self.tier_keys]
        if self.head is not None:
            arrays.append(self.head)
        if self.boundaries is not None:
            arrays.append(self.boundaries)
        if fixed and self.level1 is not None:
            arrays += [self.level1, self.base16]
        return sum(a.nbytes for a in arrays)

    def lookup(self, keys: np.ndarray, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``keys``: uint32 addresses of ``rows`` (None: of rows 0..n-1). Returns (row, payload) pairs."""
        if (self.head is None and not len(self.ids)) or not len(keys):
            return np.empty(0, np.int64), np.empty(0, np.int32)
        if self.level1 is None:
            assert self.boundaries is not None
            unique, inverse = np.unique(keys, return_inverse=True)  # sorted queries: cache-friendly
            found = np.searchsorted(self.boundaries, unique, side="right") - 1
            all_rows = np.arange(len(keys), dtype=np.int64) if rows is None else rows
            return expand(self.offsets, self.ids, all_rows, found[inverse])
        keys = np.ascontiguousarray(keys, dtype=np.uint32)
        n = len(keys)
        pos, entry = np.empty(n, np.int64), np.empty(n, np.uint64)
        kernels.gather(keys, self.level1, entry)
        nonzero = kernels.nonzero(entry, pos)
        interval, rare = np.empty(nonzero, np.int64), np.empty(nonzero, np.int64)
        found, n_rare = kernels.classify(keys, nonzero, self.base16, pos, entry, interval, rare)
        if n_rare:
            found = kernels.locate_rare(keys, entry, rare, n_rare, *self._crowded, pos, interval, found)
        assert self.head is not None
        heads = np.empty(found, np.int32)
        total = kernels.heads(interval, found, self.head, self.floor, self.offsets, heads)
        out_rows, out_payload = np.empty(total, np.int64), np.empty(total, np.int32)
        rows_in = np.empty(0, np.int64) if rows is None else np.ascontiguousarray(rows, dtype=np.int64)
        kernels.emit(pos, heads, found, self.floor, self.offsets, self.ids, rows_in, out_rows, out_payload)
        return out_rows, out_payload

    @property
    def _crowded(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(sorted base, sorted keys, dense base, dense keys), empty arrays where a tier is unused."""
        if len(self.tier_base) == 2:
            return self.tier_base[0], self.tier_keys[0], self.tier_base[1], self.tier_keys[1]
        none = np.empty(0, np.int32)
        return none, np.empty((0, TIER_WIDTHS[1]), np.uint8), none, np.empty((0, 256), np.uint8)


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


V6_LEVELS = (64, 48, 32, 16, 0)
"""Prefix lengths of the IPv6 levels: a range goes to the longest level whose prefix holds all of it
(a /128 or /64 to 64, a /56 or /48 to 48, a /36 to 32, ...)."""
_V6_LOAD = 0.75  # slots in use (linear probing; only addresses the filter passes probe)
_V6_FILTER_BITS = 16  # filter bits per /prefix indexed (three tested: ~1% of the others pass)


@dataclass
class V6Intervals:
    """IPv6 ranges, split by width into levels (:data:`V6_LEVELS`: a /128 and a /32 never share
    one). Each level's ranges make elementary intervals over sorted 128-bit boundaries (one array
    for all levels, each level's part starting at ::), and a level indexes each /prefix (of its
    prefix length) that holds a boundary: a blocked Bloom filter, then a hash table from the
    /prefix to its first boundary. An address's /prefix in a level either holds no boundary, and
    no range of that level covers the address (a range lies within one /prefix), or it does, and
    the search starts from its first boundary. Most addresses are dismissed by one filter word per
    level; none of it sorts the queries or keeps anything between batches."""

    bounds: np.ndarray  # uint64 [m, 2]: (hi, lo) of each boundary; ascending within a level
    head: np.ndarray  # int32 per interval (see _heads), floor, and the CSR of the multi ones
    floor: int
    offsets: np.ndarray
    ids: np.ndarray
    levels: np.ndarray  # int64 [k, 6]: shift (64 - prefix), bounds end, filter at/len, slots at/len
    bloom: np.ndarray  # uint64 filter words of every level
    slots: np.ndarray  # uint32: fingerprint << s_bits | (first boundary + 1), 0 empty
    s_bits: int
    ranges: int

    @classmethod
    def build(
        cls,
        first_hi: np.ndarray,
        first_lo: np.ndarray,
        last_hi: np.ndarray,
        last_lo: np.ndarray,
        payload: np.ndarray,
    ) -> V6Intervals:
        """Inclusive (hi, lo) uint64 bounds of each range, and its payload."""
        end_hi, end_lo, wrapped = _plus_one(last_hi, last_lo)
        level_of = np.full(len(first_hi), len(V6_LEVELS) - 1, dtype=np.int64)
        for k in reversed(range(len(V6_LEVELS) - 1)):  # the longest prefix holding first and last
            shift = np.uint64(64 - V6_LEVELS[k])
            level_of[(first_hi >> shift) == (last_hi >> shift)] = k
        zero = to_keys(np.zeros(1, np.uint64), np.zeros(1, np.uint64))
        parts: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []
        start_keys = []  # per level: the /prefixes where a range starts, the only ones a range covers
        for k, prefix in enumerate(V6_LEVELS):
            sel = np.flatnonzero(level_of == k)
            if not len(sel) and (parts or k < len(V6_LEVELS) - 1):
                continue  # (an empty set keeps one level: a single interval, empty)
            starts = to_keys(first_hi[sel], first_lo[sel])
            ends = to_keys(end_hi[sel], end_lo[sel])[~wrapped[sel]]
            boundaries = sorted_unique(np.concatenate([starts, ends, zero]))
            end_idx = np.full(len(sel), len(boundaries), dtype=np.int64)
            end_idx[~wrapped[sel]] = np.searchsorted(boundaries, ends, side="left")
            offsets, ids = _csr(boundaries, starts, end_idx, payload[sel])
            parts.append((prefix, boundaries.view(">u8").reshape(-1, 2).astype(np.uint64), offsets, ids))
            start_keys.append(
                np.unique(first_hi[sel] >> np.uint64(64 - prefix) if prefix else np.zeros(1, np.uint64))
            )
            del starts, ends, boundaries, end_idx
        prefixes = [prefix for prefix, _, _, _ in parts]
        bounds = np.concatenate([b for _, b, _, _ in parts])
        seg_end = np.cumsum([len(b) for _, b, _, _ in parts])
        seg_start = np.r_[0, seg_end[:-1]]
        payloads = np.cumsum([0] + [len(ids) for _, _, _, ids in parts])
        offsets = np.concatenate([parts[0][2][:1].astype(np.int64)] + [
            o[1:].astype(np.int64) + payloads[k] for k, (_, _, o, _) in enumerate(parts)])  # fmt: skip
        ids = np.concatenate([ids for _, _, _, ids in parts])
        del parts
        head, floor, offsets, ids = _heads(offsets, ids)
        s_bits = max(len(bounds).bit_length(), 1)
        if s_bits > 28:
            raise ValueError("too many IPv6 boundaries")
        levels = np.zeros((len(prefixes), 6), dtype=np.int64)
        keys_of, firsts_of = [], []
        for k, (start, end) in enumerate(zip(seg_start.tolist(), seg_end.tolist(), strict=True)):
            shift = 64 - prefixes[k]
            keys = kernels.v6_prefix_keys(bounds[start:end], shift)
            first = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])  # each /prefix's first boundary
            first = first[np.isin(keys[first], start_keys[k], assume_unique=True)]  # not only range ends
            keys_of.append(keys[first])
            firsts_of.append(first + start)
            levels[k, :2] = shift, end
            levels[k, 3] = max(len(first) * _V6_FILTER_BITS // 64, 1)
            levels[k, 5] = int(len(first) / _V6_LOAD) + 1  # at least one slot empty: every probe ends
        levels[1:, 2] = np.cumsum(levels[:-1, 3])
        levels[1:, 4] = np.cumsum(levels[:-1, 5])
        bloom = np.zeros(int(levels[:, 3].sum()), dtype=np.uint64)
        slots = np.zeros(int(levels[:, 5].sum()), dtype=np.uint32)
        for k, (keys, firsts) in enumerate(zip(keys_of, firsts_of, strict=True)):
            at, size, slot_at, slot_size = levels[k, 2:].tolist()
            kernels.v6_fill(keys, firsts, s_bits, bloom[at : at + size], slots[slot_at : slot_at + slot_size])
        return cls(bounds, head, floor, offsets, ids, levels, bloom, slots, s_bits, len(first_hi))

    def nbytes(self) -> int:
        arrays = (self.bounds, self.head, self.offsets, self.ids, self.levels, self.bloom, self.slots)
        return sum(a.nbytes for a in arrays)

    def lookup(self, addresses: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``addresses``: (n, 16) uint8 in network order; ``rows``: which of them to look up.
        Returns (row, payload) pairs."""
        if not self.ranges or not len(rows):
            return np.empty(0, np.int64), np.empty(0, np.int32)
        words = np.ascontiguousarray(addresses).view(np.uint64).reshape(-1, 2)
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        n = len(rows) * len(self.levels)
        pos, interval = np.empty(n, np.int64), np.empty(n, np.int64)
        found = kernels.v6_locate(words, rows, self.levels, self.bloom, self.slots, self.s_bits, self.bounds,
                                  pos, interval)  # fmt: skip
        heads = np.empty(found, np.int32)
        total = kernels.heads(interval, found, self.head, self.floor, self.offsets, heads)
        out_rows, out_payload = np.empty(total, np.int64), np.empty(total, np.int32)
        kernels.emit(pos, heads, found, self.floor, self.offsets, self.ids, np.empty(0, np.int64), out_rows,
                     out_payload)  # fmt: skip
        return out_rows, out_payload
