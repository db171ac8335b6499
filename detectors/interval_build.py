"""Compiled (numba) passes that build the IPv4 /24 table of :class:`detectors.intervals.V4Intervals`.

Written with numpy, the build held about ten int64 arrays per interval boundary at once (sorted
copies, boundary indices, CSR offsets, block numbers, ranks, masks): 3.6 GiB at 10M indicators for
an index of 0.3 GiB. Here each pass walks sorted data once and writes its result in place, so the
build holds the ranges sorted (12 bytes each), the boundaries (4 bytes each) and one int32 per
interval (its count, then in place its head), besides the table itself. The layout written is the
one :mod:`detectors.intervals` documents and :mod:`detectors.kernels` reads.
"""

from __future__ import annotations

import numba
import numpy as np

_TOP = 1 << 32  # one past the last IPv4 address
_BLOCK = np.uint64(1 << 63)
_INLINE = np.uint64(1 << 62)
INLINE_MAX, SORTED_MAX = 4, 32  # inner boundaries per /24: inline in the entry, sorted bytes; beyond: dense


def _jit(*signatures: str):
    def decorate(func):
        dispatcher = numba.njit(cache=True, nogil=True, boundscheck=False)(func)
        for signature in signatures:
            dispatcher.compile(signature)
        return dispatcher

    return decorate


@_jit("void(uint32[::1], uint64[::1])")
def pack_keys(first, out):  # pragma: no cover - compiled
    """(first << 32 | position) per range: sorting these orders ranges by start, ties by position."""
    for k in range(len(first)):
        out[k] = (np.uint64(first[k]) << np.uint64(32)) | np.uint64(k)


@_jit("void(uint64[::1], uint32[::1], int32[::1], uint32[::1], uint32[::1], int32[::1])")
def unpack_sorted(keys, last, payload, first_out, last_out, payload_out):  # pragma: no cover - compiled
    """The ranges in the order of the sorted ``keys``."""
    for t in range(len(keys)):
        key = keys[t]
        k = np.int64(key & np.uint64(0xFFFFFFFF))
        first_out[t] = np.uint32(key >> np.uint64(32))
        last_out[t] = last[k]
        payload_out[t] = payload[k]


@_jit("int64(uint32[::1], uint32[::1], uint32[::1])")
def merge_boundaries(starts, lasts, out):  # pragma: no cover - compiled
    """Sorted distinct values of {0}, ``starts`` and every ``last + 1`` below 2^32 (both inputs
    ascending) into ``out``; returns how many."""
    n, m = len(starts), len(lasts)
    i = 0
    j = 0
    out[0] = 0
    k = 1
    prev = np.int64(0)
    while i < n or j < m:
        if j >= m or (i < n and np.int64(starts[i]) <= np.int64(lasts[j]) + 1):
            v = np.int64(starts[i])
            i += 1
        else:
            v = np.int64(lasts[j]) + 1
            j += 1
        if v < _TOP and v != prev:
            out[k] = np.uint32(v)
            k += 1
            prev = v
    return k


@numba.njit(cache=True, nogil=True, boundscheck=False, inline="always")
def _end_index(boundaries, nb, at, end):  # pragma: no cover - compiled
    """Index of ``end`` among the boundaries (nb for 2^32), searched forward from ``at``: most
    ranges end a few boundaries after they start, so a galloping search ends in a few steps."""
    if end >= _TOP:
        return nb
    lo = at + 1
    step = 1
    hi = lo
    while hi < nb and np.int64(boundaries[hi]) < end:
        lo = hi + 1
        hi = lo + step
        step *= 2
    hi = min(hi, nb)
    while lo < hi:
        mid = (lo + hi) >> 1
        if np.int64(boundaries[mid]) < end:
            lo = mid + 1
        else:
            hi = mid
    return lo


@_jit("void(uint32[::1], uint32[::1], uint32[::1], int32[::1])")
def interval_counts(boundaries, first, last, counts):  # pragma: no cover - compiled
    """Ranges (sorted by start) covering each interval, into ``counts`` (zeroed, one per boundary)."""
    nb = len(boundaries)
    at = 0
    for k in range(len(first)):
        start = np.int64(first[k])
        while np.int64(boundaries[at]) < start:
            at += 1
        end = _end_index(boundaries, nb, at, np.int64(last[k]) + 1)
        counts[at] += 1
        if end < nb:
            counts[end] -= 1
    running = 0
    for i in range(nb):
        running += counts[i]
        counts[i] = running


@_jit("UniTuple(int64, 2)(int32[::1])")
def multi_totals(counts):  # pragma: no cover - compiled
    """(intervals covered more than once, their payloads in all)."""
    m = 0
    total = 0
    for i in range(len(counts)):
        c = counts[i]
        if c > 1:
            m += 1
            total += c
    return m, total


@_jit("void(int32[::1], int64, int64[::1])")
def mark_heads(counts, floor, multi_offsets):  # pragma: no cover - compiled
    """Counts into heads, in place (see ``V4Intervals.head``): ``floor - 1`` empty, ``floor`` a single
    payload still to write, ``floor - 2 - m`` the m-th interval with several (offsets written)."""
    m = 0
    total = 0
    multi_offsets[0] = 0
    for i in range(len(counts)):
        c = counts[i]
        if c == 0:
            counts[i] = floor - 1
        elif c == 1:
            counts[i] = floor
        else:
            counts[i] = floor - 2 - m
            total += c
            m += 1
            multi_offsets[m] = total


@_jit("void(uint32[::1], uint32[::1], uint32[::1], int32[::1], int32[::1], int64, int64[::1], int32[::1])")
def fill_heads(boundaries, first, last, payload, head, floor, cursor, ids):  # pragma: no cover - compiled
    """Each range's payload into its intervals: the head of an interval it alone covers, the
    interval's run in ``ids`` otherwise (``cursor``: each multi interval's next free slot)."""
    nb = len(boundaries)
    at = 0
    for k in range(len(first)):
        start = np.int64(first[k])
        while np.int64(boundaries[at]) < start:
            at += 1
        end = _end_index(boundaries, nb, at, np.int64(last[k]) + 1)
        p = payload[k]
        for i in range(at, end):
            h = np.int64(head[i])
            if h < floor - 1:
                m = floor - 2 - h
                ids[cursor[m]] = p
                cursor[m] += 1
            else:
                head[i] = p


@_jit("void(uint32[::1], int32[::1])")
def slash16_bases(boundaries, out):  # pragma: no cover - compiled
    """The interval holding each /16's first address."""
    nb = len(boundaries)
    at = 0
    for s in range(len(out)):
        address = np.int64(s) << 16
        while at + 1 < nb and np.int64(boundaries[at + 1]) <= address:
            at += 1
        out[s] = at


@_jit("void(uint32[::1], int32[::1], int64, uint64[::1])")
def whole_blocks(boundaries, head, floor, level1):  # pragma: no cover - compiled
    """``interval + 1`` for every /24 lying wholly inside one covered interval."""
    nb = len(boundaries)
    for i in range(nb):
        if head[i] == floor - 1:
            continue
        lo = (np.int64(boundaries[i]) + 255) >> 8
        hi = (np.int64(boundaries[i + 1]) >> 8) if i + 1 < nb else np.int64(1 << 24)
        for block in range(lo, hi):
            level1[block] = np.uint64(i + 1)


@_jit("UniTuple(int64, 2)(uint32[::1])")
def crowded_blocks(boundaries):  # pragma: no cover - compiled
    """(blocks with 5-32 inner boundaries, blocks with more)."""
    nb = len(boundaries)
    n_sorted = 0
    n_dense = 0
    i = 0
    while i < nb:
        if boundaries[i] & 255 == 0:
            i += 1
            continue
        block = boundaries[i] >> 8
        j = i
        while j < nb and boundaries[j] >> 8 == block:
            j += 1
        c = j - i
        n_sorted += (c > INLINE_MAX) & (c <= SORTED_MAX)
        n_dense += c > SORTED_MAX
        i = j
    return n_sorted, n_dense


@_jit("void(uint32[::1], int32[::1], int64, int32[::1], uint64[::1], int32[::1], uint8[:, ::1], int32[::1], "
      "uint8[:, ::1])")  # fmt: skip
def inner_blocks(
    boundaries, head, floor, base16, level1, sorted_base, sorted_keys, dense_base, dense_keys
):  # pragma: no cover
    """Entries of the /24s with boundaries inside: inline words (up to 4), sorted bytes (up to 32) or
    a 256-byte table of inner boundaries <= each low byte, and each block's first interval."""
    nb = len(boundaries)
    n_sorted = len(sorted_base)
    js = 0
    jd = 0
    i = 0
    while i < nb:
        if boundaries[i] & 255 == 0:
            i += 1
            continue
        block = np.int64(boundaries[i] >> 8)
        j = i
        while j < nb and np.int64(boundaries[j] >> 8) == block:
            j += 1
        c = j - i
        base = i - 1  # the interval holding the block's first address
        if c <= INLINE_MAX:
            word = np.uint64(0)
            for r in range(c):
                word |= np.uint64(boundaries[i + r] & 255) << np.uint64(8 * r)
            word |= np.uint64(c) << np.uint64(32)
            for sub in range(c + 1):
                if head[base + sub] != floor - 1:
                    word |= np.uint64(1) << np.uint64(35 + sub)
            word |= np.uint64(base - base16[block >> 8]) << np.uint64(40)
            level1[block] = word | _BLOCK | _INLINE
        elif c <= SORTED_MAX:
            for r in range(SORTED_MAX):
                sorted_keys[js, r] = (boundaries[i + r] & 255) - 1 if r < c else 255
            sorted_base[js] = base
            level1[block] = np.uint64(js) | _BLOCK
            js += 1
        else:
            r = 0
            for x in range(256):
                while r < c and np.int64(boundaries[i + r] & 255) <= x:
                    r += 1
                dense_keys[jd, x] = r
            dense_base[jd] = base
            level1[block] = np.uint64(n_sorted + jd) | _BLOCK
            jd += 1
        i = j
