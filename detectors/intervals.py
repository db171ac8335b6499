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

from detectors import kernels

V4_SLASH24 = 1 << 24
V4_SLASH16 = 1 << 16
TIER_WIDTHS = (4, 32)  # inner boundaries per /24: inline in the entry, sorted bytes; beyond: dense table
_PAD = 255  # sorted-byte keys are boundary - 1 (0..254); 255 is never < a low byte
_BLOCK, _INLINE = np.uint64(1 << 63), np.uint64(1 << 62)
_COUNT_AT, _FLAGS_AT, _REL_AT = 32, 35, 40


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
    head: np.ndarray | None = None  # int32 per interval with the /24 table: see _heads
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
        """``first``/``last``: inclusive uint32-valued bounds; ``direct``: build the /24 table."""
        order = np.argsort(first, kind="stable")  # sorted starts: searches below run in cache order
        first, payload = first[order].astype(np.uint64), payload[order]
        end = last[order].astype(np.uint64) + np.uint64(1)
        del order
        boundaries = sorted_unique(np.concatenate([first, end, np.zeros(1, np.uint64)]))
        end_idx = np.searchsorted(boundaries, end, side="left")
        offsets, ids = _csr(boundaries, first, end_idx, payload)
        del first, end, end_idx
        if boundaries[-1] == 1 << 32:  # the end of the last range starts no interval (and fits no uint32)
            boundaries = boundaries[:-1]
        if not direct:
            return cls(offsets, ids, boundaries=boundaries.astype(np.uint32))
        level1 = _zeroed_uint64(V4_SLASH24, huge=len(payload) >= _HUGE_FROM)
        covered = offsets[1 : len(boundaries) + 1] != offsets[: len(boundaries)]
        # Whole /24s inside one non-empty interval: level1 = interval + 1.
        nonempty = np.flatnonzero(covered)
        lo = (boundaries[nonempty] + np.uint64(255)) >> np.uint64(8)
        hi_bound = np.append(boundaries[1:], np.uint64(1 << 32))[nonempty]
        hi = hi_bound >> np.uint64(8)  # first /24 not wholly inside
        span = (hi.astype(np.int64) - lo.astype(np.int64)).clip(0)
        has = np.flatnonzero(span)
        if len(has):
            span, lo, nonempty = span[has], lo[has].astype(np.int64), nonempty[has]
            for part in np.array_split(np.arange(len(span)), max(1, int(span.sum()) // 20_000_000)):
                s = span[part]
                blocks = np.repeat(lo[part] - (np.cumsum(s) - s), s) + np.arange(int(s.sum()), dtype=np.int64)
                level1[blocks] = np.repeat((nonempty[part] + 1).astype(np.uint64), s)
        slash16 = np.arange(V4_SLASH16, dtype=np.uint64) << np.uint64(16)
        base16 = (np.searchsorted(boundaries, slash16, side="right") - 1).astype(np.int32)
        # /24s with boundaries inside: inline entries, sorted inner bytes, dense delta tables.
        inner = np.flatnonzero((boundaries & np.uint64(255)) != 0)
        tier_base: list[np.ndarray] = []
        tier_keys: list[np.ndarray] = []
        if len(inner):
            block_of = (boundaries[inner] >> np.uint64(8)).astype(np.int64)
            low = (boundaries[inner] & np.uint64(255)).astype(np.uint64)
            starts = np.flatnonzero(np.r_[True, block_of[1:] != block_of[:-1]])
            counts = np.diff(np.r_[starts, len(inner)])
            blocks, base = block_of[starts], (inner[starts] - 1).astype(np.int64)
            rank = np.arange(len(inner)) - np.repeat(starts, counts)
            tier_of = np.searchsorted(np.array(TIER_WIDTHS), counts, side="left")  # len(TIERS) = dense
            # Inline blocks: lanes, count, covered flags and relative base packed into the entry.
            sel = np.flatnonzero(tier_of == 0)
            members = np.repeat(tier_of == 0, counts)
            row_in_tier = np.full(len(blocks), -1, dtype=np.int64)
            row_in_tier[sel] = np.arange(len(sel))
            words = np.zeros(len(sel), dtype=np.uint64)
            np.bitwise_or.at(
                words,
                np.repeat(row_in_tier, counts)[members],
                low[members] << (np.uint64(8) * rank[members].astype(np.uint64)),
            )
            words |= counts[sel].astype(np.uint64) << np.uint64(_COUNT_AT)
            for sub in range(TIER_WIDTHS[0] + 1):
                rows = np.flatnonzero(counts[sel] >= sub)
                flag = covered[base[sel][rows] + sub].astype(np.uint64)
                words[rows] |= flag << np.uint64(_FLAGS_AT + sub)
            rel = base[sel] - base16[blocks[sel] >> 8]
            words |= rel.astype(np.uint64) << np.uint64(_REL_AT)
            level1[blocks[sel]] = words | _BLOCK | _INLINE
            next_j = 0
            for t in (1, 2):  # crowded blocks: sorted bytes, then dense delta tables
                sel = np.flatnonzero(tier_of == t)
                width = TIER_WIDTHS[t] if t < len(TIER_WIDTHS) else 256
                row_in_tier = np.full(len(blocks), -1, dtype=np.int64)
                row_in_tier[sel] = np.arange(len(sel))
                members = np.repeat(tier_of == t, counts)
                r, k = np.repeat(row_in_tier, counts)[members], rank[members]
                if t == 1:
                    keys = np.full((len(sel), width), _PAD, dtype=np.uint8)
                    keys[r, k] = low[members] - np.uint64(1)
                else:  # delta[x] = #(inner boundaries <= x), by a cumulative sum over marks
                    marks = np.zeros((len(sel), 256), dtype=np.uint8)
                    marks[r, low[members].astype(np.int64)] = 1
                    keys = np.cumsum(marks, axis=1, dtype=np.uint8)
                tier_base.append(base[sel].astype(np.int32))
                tier_keys.append(keys)
                level1[blocks[sel]] = (next_j + np.arange(len(sel), dtype=np.uint64)) | _BLOCK
                next_j += len(sel)
        head, floor, offsets, ids = _heads(offsets, ids)
        return cls(offsets, ids, head=head, floor=floor, level1=level1, base16=base16, tier_base=tier_base,
                   tier_keys=tier_keys)  # fmt: skip

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


@dataclass
class V6Intervals:
    boundaries: np.ndarray  # S16, sorted
    offsets: np.ndarray
    ids: np.ndarray

    @classmethod
    def build(
        cls,
        first_hi: np.ndarray,
        first_lo: np.ndarray,
        last_hi: np.ndarray,
        last_lo: np.ndarray,
        payload: np.ndarray,
    ) -> V6Intervals:
        end_hi, end_lo, wrapped = _plus_one(last_hi, last_lo)
        starts = to_keys(first_hi, first_lo)
        ends = to_keys(end_hi[~wrapped], end_lo[~wrapped])
        boundaries = sorted_unique(
            np.concatenate([starts, ends, to_keys(np.zeros(1, np.uint64), np.zeros(1, np.uint64))])
        )
        end_idx = np.full(len(starts), len(boundaries), dtype=np.int64)
        end_idx[~wrapped] = np.searchsorted(boundaries, ends, side="left")
        offsets, ids = _csr(boundaries, starts, end_idx, payload)
        return cls(boundaries, offsets, ids)

    def nbytes(self) -> int:
        return self.boundaries.nbytes + self.offsets.nbytes + self.ids.nbytes

    def lookup(self, keys: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not len(self.ids) or not len(keys):
            return np.empty(0, np.int64), np.empty(0, np.int32)
        unique, inverse = np.unique(keys, return_inverse=True)
        intervals = np.searchsorted(self.boundaries, unique, side="right") - 1
        return expand(self.offsets, self.ids, rows, intervals[inverse])
