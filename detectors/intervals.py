"""Address ranges -> the payloads of every range covering each address, answered for whole arrays.

Every range boundary splits the address space into *elementary intervals*; each interval keeps the
list (CSR) of the payload of every range that covers it, so a lookup returns all matching prefixes —
nested and overlapping ones included — not only the longest.

IPv4 (the bulk of backbone traffic) is answered with gathers, never a search: a DIR-24-8-style table
of 2^24 int32 (one per /24) holds 0 where nothing covers the /24, ``i + 1`` where the whole /24 lies
in one non-empty interval ``i``, and ``-(j + 1)`` where interval boundaries fall inside it. Block
``j`` then keeps the interval at the /24's first address (``base``) and its inner boundaries, so the
interval of low byte ``x`` is ``base + #(inner boundaries <= x)``. Full 256-entry second-level
blocks would cost 1 KiB for every /24 holding one scattered /32 (6 GiB at 10M indicators), so blocks
with up to 6 boundaries are one packed word (below), up to 32 sorted bytes counted by compares, and
only crowded ones a 256-byte table. The table is an anonymous mapping: 64 MiB of address space, of
which only the pages the build writes become resident. Allowlists (looked up for hits only) and IPv6 use sorted boundaries and a search.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass, field

import numpy as np

V4_SLASH24 = 1 << 24
TIER_WIDTHS = (6, 32)  # inner boundaries per /24 in packed words, sorted bytes; beyond: dense table
_PAD = 255  # tier-1 keys are boundary - 1 (0..254); 255 is never < a low byte
# Tier 0 packs a block in one uint64: six 9-bit lanes holding boundaries k (1..255, 256 = none) and,
# above them, one bit per sub-interval saying whether any range covers it. (x | 256) - k never
# borrows across lanes and has bit 8 set exactly when k <= x, so one subtraction and a popcount
# count the boundaries <= x for six lanes at once, and most lookups (addresses in the gaps between
# scattered /32s) end there without touching the CSR.
_LANE = 9
_LANES = TIER_WIDTHS[0]
_LANE_MASK = np.uint64((1 << (_LANE * _LANES)) - 1)
_REPLICATE = np.uint64(sum(1 << (_LANE * i) for i in range(_LANES)))
_GUARDS = np.uint64(sum(256 << (_LANE * i) for i in range(_LANES)))
_FLAGS_AT = _LANE * _LANES


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """np.unique by sorting (numpy 2.4's hash-based np.unique is ~15x slower on millions of keys)."""
    out = np.sort(values)
    return out[np.r_[True, out[1:] != out[:-1]]] if len(out) else out


def _offsets_dtype(total: int) -> type:
    return np.int32 if total < 2**31 - 1 else np.int64


def _csr(
    boundaries: np.ndarray, starts: np.ndarray, ends_excl_idx: np.ndarray, payload: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """CSR (offsets, payloads) from each range's [start index, end index) in interval space."""
    first = np.searchsorted(boundaries, starts, side="left")
    counts = (ends_excl_idx - first).astype(np.int64)
    total = int(counts.sum())
    entry = np.repeat(np.arange(len(starts), dtype=np.int64), counts)
    offsets_in = np.repeat(np.cumsum(counts) - counts, counts)
    interval = np.repeat(first, counts) + (np.arange(total, dtype=np.int64) - offsets_in)
    del offsets_in
    order = np.argsort(interval, kind="stable")
    per_interval = np.bincount(interval, minlength=len(boundaries))
    del interval
    offsets = np.zeros(len(boundaries) + 1, dtype=_offsets_dtype(total))
    np.cumsum(per_interval, out=offsets[1:])
    return offsets, payload[entry[order]].astype(np.int32)


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


def _zeroed_int32(n: int) -> np.ndarray:
    """A zero-filled array on anonymous pages: only the pages written later become resident."""
    buf = mmap.mmap(-1, 4 * n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return np.frombuffer(buf, dtype=np.int32)


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


@dataclass
class V4Intervals:
    offsets: np.ndarray  # CSR over elementary intervals (int32 unless huge)
    ids: np.ndarray  # int32 payloads
    boundaries: np.ndarray | None = None  # uint32; kept only without the direct table (search path)
    level1: np.ndarray | None = None  # int32[2^24], see module docstring
    tier_base: list[np.ndarray] = field(default_factory=list)  # per tier (widths..., dense): int32
    tier_keys: list[np.ndarray] = field(default_factory=list)  # uint8 [n, width] or [n, 256] deltas

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
        level1 = _zeroed_int32(V4_SLASH24)
        # Whole /24s inside one non-empty interval: level1 = interval + 1.
        nonempty = np.flatnonzero(offsets[1 : len(boundaries) + 1] != offsets[: len(boundaries)])
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
                level1[blocks] = np.repeat((nonempty[part] + 1).astype(np.int32), s)
        # /24s with boundaries inside: tiers of sorted inner bytes, dense delta tables when crowded.
        inner = np.flatnonzero((boundaries & np.uint64(255)) != 0)
        tier_base: list[np.ndarray] = []
        tier_keys: list[np.ndarray] = []
        if len(inner):
            block_of = (boundaries[inner] >> np.uint64(8)).astype(np.int64)
            low = (boundaries[inner] & np.uint64(255)).astype(np.int64)
            starts = np.flatnonzero(np.r_[True, block_of[1:] != block_of[:-1]])
            counts = np.diff(np.r_[starts, len(inner)])
            blocks, base = block_of[starts], (inner[starts] - 1).astype(np.int32)
            rank = np.arange(len(inner)) - np.repeat(starts, counts)
            tier_of = np.searchsorted(np.array(TIER_WIDTHS), counts, side="left")  # len(TIERS) = dense
            next_j = 0
            for t in range(len(TIER_WIDTHS) + 1):
                sel = np.flatnonzero(tier_of == t)
                width = TIER_WIDTHS[t] if t < len(TIER_WIDTHS) else 256
                keys = np.full((len(sel), width), _PAD if t < len(TIER_WIDTHS) else 0, dtype=np.uint8)
                row_in_tier = np.full(len(blocks), -1, dtype=np.int64)
                row_in_tier[sel] = np.arange(len(sel))
                members = np.repeat(tier_of == t, counts)
                r, k = np.repeat(row_in_tier, counts)[members], rank[members]
                if t == 0:
                    lanes = np.full((len(sel), width), 256, dtype=np.uint64)
                    lanes[r, k] = low[members]
                    keys = np.zeros(len(sel), dtype=np.uint64)
                    for lane in range(width):
                        keys |= lanes[:, lane] << np.uint64(_LANE * lane)
                    covered = offsets[1:] != offsets[:-1]
                    for sub in range(width + 1):
                        rows = np.flatnonzero(counts[sel] >= sub)
                        flag = covered[base[sel][rows] + sub].astype(np.uint64)
                        keys[rows] |= flag << np.uint64(_FLAGS_AT + sub)
                elif t < len(TIER_WIDTHS):
                    keys[r, k] = low[members] - 1
                else:  # delta[x] = #(inner boundaries <= x), by a cumulative sum over marks
                    marks = np.zeros((len(sel), 256), dtype=np.uint8)
                    marks[r, low[members]] = 1
                    keys = np.cumsum(marks, axis=1, dtype=np.uint8)
                tier_base.append(base[sel])
                tier_keys.append(keys)
                level1[blocks[sel]] = -(next_j + np.arange(len(sel), dtype=np.int32) + 1)
                next_j += len(sel)
        return cls(offsets, ids, level1=level1, tier_base=tier_base, tier_keys=tier_keys)

    def nbytes(self, fixed: bool = True) -> int:
        """Bytes held; ``fixed=False`` leaves out the 64 MiB /24 table."""
        arrays = [self.offsets, self.ids, *self.tier_base, *self.tier_keys]
        if self.boundaries is not None:
            arrays.append(self.boundaries)
        if fixed and self.level1 is not None:
            arrays.append(self.level1)
        return sum(a.nbytes for a in arrays)

    def intervals(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(positions in ``keys``, interval) for the keys some interval with ranges may hold."""
        if self.level1 is None:
            assert self.boundaries is not None
            unique, inverse = np.unique(keys, return_inverse=True)  # sorted queries: cache-friendly
            found = np.searchsorted(self.boundaries, unique, side="right") - 1
            return np.arange(len(keys), dtype=np.int64), found[inverse]
        # numpy's nonzero is ~10x faster on a bool array than on ints, and take beats mask indexing.
        top = np.take(self.level1, (keys >> 8).astype(np.intp))
        pos = np.flatnonzero(top != 0)
        value = np.take(top, pos)
        inner = np.flatnonzero(value < 0)
        if not len(inner):
            return pos, value.astype(np.int64) - 1
        direct = np.flatnonzero(value > 0)
        out_pos, out_interval = [np.take(pos, direct)], [np.take(value, direct).astype(np.int64) - 1]
        pos, j = np.take(pos, inner), ~np.take(value, inner)  # ~v == -(v + 1): the block index
        low = (np.take(keys, pos) & 255).astype(np.uint8)
        start, j_min, j_max = 0, int(j.min()), int(j.max())
        for base, keys_t in zip(self.tier_base, self.tier_keys, strict=True):
            stop = start + len(base)
            sel = None if start <= j_min and j_max < stop else np.flatnonzero((j >= start) & (j < stop))
            jj = j if sel is None else np.take(j, sel)
            jj = jj - start if start else jj
            x = low if sel is None else np.take(low, sel)
            if not len(jj):
                start = stop
                continue
            rows = np.take(keys_t, jj, axis=0)
            if keys_t.ndim == 1:  # packed words: count lanes <= x, then keep covered sub-intervals
                lanes = (x.astype(np.uint64) * _REPLICATE | _GUARDS) - (rows & _LANE_MASK)
                delta = np.bitwise_count(lanes & _GUARDS)
                flag = (rows >> (delta.astype(np.uint64) + np.uint64(_FLAGS_AT))) & np.uint64(1)
                covered = np.flatnonzero(flag.astype(bool))
                sel = covered if sel is None else np.take(sel, covered)
                jj, delta = np.take(jj, covered), np.take(delta, covered)
            elif keys_t.shape[1] == 256:
                delta = rows[np.arange(len(jj)), x]
            else:
                delta = np.count_nonzero(rows < x[:, None], axis=1)
            out_pos.append(pos if sel is None else np.take(pos, sel))
            out_interval.append(np.take(base, jj) + delta.astype(np.int64))
            start = stop
        return np.concatenate(out_pos), np.concatenate(out_interval)

    def lookup(self, keys: np.ndarray, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``keys``: uint32 addresses of ``rows`` (None: of rows 0..n-1). Returns (row, payload) pairs."""
        if not len(self.ids) or not len(keys):
            return np.empty(0, np.int64), np.empty(0, np.int32)
        pos, interval = self.intervals(keys)
        return expand(self.offsets, self.ids, pos if rows is None else np.take(rows, pos), interval)


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
