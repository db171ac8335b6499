"""Compiled (numba) passes of the matcher's hot path, the IPv4 lookup above all: memory latency, not
interpreter passes, sets the pace.

A numpy pipeline spends one pass over the batch per operation; at 10M indicators those passes cost as
much as the random reads themselves. Here each stage is one loop. The table is read in a loop that
does nothing else, so the CPU keeps dozens of misses in flight (decoding the entry in the same loop
measured slower than numpy: the work behind each miss fills the reorder window); the stages after it
run sequentially, without data-dependent branches where it matters (selects and conditional
increments). The layout of a /24 table entry is documented in :mod:`detectors.intervals`.
"""

from __future__ import annotations

import sys

import numba
import numpy as np
from numba import types

if sys.byteorder != "little":  # ipv4_words reads network-order bytes as little-endian words
    raise ImportError("detectors.kernels assumes a little-endian host")

_J_MASK = (1 << 62) - 1


def _jit(*signatures: str | tuple):
    """Compiled for the given signatures when this module is imported (cached on disk after the first
    time), so the first batch never waits for the compiler; other argument types (read-only arrays,
    say) still compile on first use."""

    def decorate(func):
        dispatcher = numba.njit(cache=True, nogil=True, boundscheck=False, error_model="numpy")(func)
        for signature in signatures:
            dispatcher.compile(signature)
        return dispatcher

    return decorate


_KEYS, _I64, _U64 = "uint32[::1]", "int64[::1]", "uint64[::1]"


@_jit(f"void({_KEYS}, {_U64}, {_U64})")
def gather(keys, level1, entry):  # pragma: no cover - compiled
    """Pass 1: the /24 table's entry for each key. Nothing else happens in this loop, so the CPU
    keeps dozens of its cache misses in flight; any work on the entry here (even compacting) would
    fill the reorder window and serialise them."""
    for i in range(len(keys)):
        entry[i] = level1[np.int64(keys[i]) >> 8]


@_jit(f"int64({_U64}, {_I64})")
def nonzero(entry, pos):  # pragma: no cover - compiled
    """Pass 2, sequential: the non-zero entries and their positions, compacted in place."""
    k = 0
    for i in range(len(entry)):
        e = entry[i]
        pos[k] = i
        entry[k] = e
        k += e != 0
    return k


@_jit(f"UniTuple(int64, 2)({_KEYS}, int64, int32[::1], {_I64}, {_U64}, {_I64}, {_I64})")
def classify(keys, m, base16, pos, entry, interval, rare):  # pragma: no cover - compiled
    """Pass 3, compute only (``base16`` stays in cache): the interval of each entry found, where the
    entry alone tells it (a whole /24, or an inline block whose sub-interval is covered), compacted
    in place into ``pos``/``interval``; keys in crowded blocks go to ``rare`` (their entries to the
    front of ``entry``). Integer arithmetic without branches. Returns (found, rare)."""
    k = 0
    r = 0
    for t in range(m):
        i = pos[t]
        key = np.int64(keys[i])
        e = np.int64(entry[t])
        x = key & 255
        count = (e >> 32) & 7
        d = 0  # inner boundaries <= x among the used lanes: (x + 256 - lane) has bit 8 set iff lane <= x
        for lane in range(4):
            d += ((x + 256 - ((e >> (8 * lane)) & 255)) >> 8) & ((lane - count) >> 63) & 1
        covered = (e >> (35 + d)) & 1
        inline_iv = base16[key >> 16] + ((e >> 40) & 0x3FFFFF) + d
        kind = (e >> 62) & 3  # 0: whole /24 (e > 0), 2: crowded block, 3: inline block
        direct = (e > 0) & 1
        pos[k] = i
        interval[k] = (e - 1) * direct + inline_iv * (1 - direct)
        k += direct | ((kind == 3) & covered)
        rare[r] = i
        entry[r] = e  # in place too (r <= t): pass 3b needs no second read of the table
        r += kind == 2
    return k, r


@_jit(f"int64({_KEYS}, {_U64}, {_I64}, int64, int32[::1], uint8[:, ::1], int32[::1], uint8[:, ::1], {_I64}, "
      f"{_I64}, int64)")
def locate_rare(keys, entry, rare, n_rare, sorted_base, sorted_keys, dense_base, dense_keys, pos,
                interval, k):  # pragma: no cover - compiled
    """Pass 3b, the few keys in crowded blocks (> 4 inner boundaries): sorted bytes or a 256-byte table."""
    n_sorted = len(sorted_base)
    for t in range(n_rare):
        i = rare[t]
        key = np.int64(keys[i])
        j = np.int64(entry[t]) & _J_MASK
        x = key & 255
        if j < n_sorted:
            d = 0  # ascending, padded with 255 (never < x): stop at the first key >= x
            while d < sorted_keys.shape[1] and np.int64(sorted_keys[j, d]) < x:
                d += 1
            iv = np.int64(sorted_base[j]) + d
        else:
            j -= n_sorted
            iv = np.int64(dense_base[j]) + np.int64(dense_keys[j, x])
        pos[k] = i
        interval[k] = iv
        k += 1
    return k


@_jit(*(f"int64({_I64}, int64, int32[::1], int64, {o}[::1], int32[::1])" for o in ("int32", "int64")))
def heads(interval, n, head, floor, offsets, out):  # pragma: no cover - compiled
    """Pass 4, one random read per found interval: its head (see ``intervals._heads``). Returns the
    number of payloads to emit."""
    total = 0
    for t in range(n):
        h = head[interval[t]]
        out[t] = h
        total += h >= floor
    for t in range(n):  # intervals with several payloads: rare
        h = np.int64(out[t])
        if h < floor - 1:
            m = floor - 2 - h
            total += offsets[m + 1] - offsets[m]
    return total


@_jit(*(f"void({_I64}, int32[::1], int64, int64, {o}[::1], int32[::1], {_I64}, {_I64}, int32[::1])"
        for o in ("int32", "int64")))  # fmt: skip
def emit(pos, heads, n, floor, offsets, ids, rows_in, out_rows, out_payload):  # pragma: no cover - compiled
    """Pass 5, sequential: one (row, payload) pair per covering range. ``rows_in`` maps positions to
    rows (empty: positions are rows)."""
    k = 0
    mapped = len(rows_in) > 0
    for t in range(n):
        h = np.int64(heads[t])
        if h >= floor:  # one payload: the head itself
            out_rows[k] = rows_in[pos[t]] if mapped else pos[t]
            out_payload[k] = h
            k += 1
        elif h < floor - 1:  # several payloads (floor - 1: none)
            row = rows_in[pos[t]] if mapped else pos[t]
            m = floor - 2 - h
            for p in range(offsets[m], offsets[m + 1]):
                out_rows[k] = row
                out_payload[k] = ids[p]
                k += 1


@_jit(
    "boolean(uint32[:, ::1], uint32[::1], boolean[::1])",
    (types.Array(types.uint32, 2, "C", readonly=True), types.uint32[::1], types.boolean[::1]),  # Arrow's
)
def ipv4_words(words, v4, is_v4):  # pragma: no cover - compiled
    """16-byte addresses seen as four native uint32 ``words`` per row: IPv4-mapped rows flagged and
    their address byte-swapped into numeric order, in one pass. Returns whether every row is IPv4."""
    mapped = np.uint32(0xFFFF0000)  # bytes 00 00 ff ff read as a little-endian word
    every = True
    for i in range(len(v4)):
        w3 = words[i, 3]
        flag = (words[i, 0] == 0) & (words[i, 1] == 0) & (words[i, 2] == mapped)
        is_v4[i] = flag
        every &= flag
        v4[i] = (w3 >> 24) | ((w3 >> 8) & 0xFF00) | ((w3 << 8) & 0xFF0000) | ((w3 << 24) & 0xFF000000)
    return every


@_jit(f"UniTuple(int64, 2)({_I64}, int32[::1], int64, {_I64}, int32[::1], {_I64}, int32[::1])")
def split_hits(rows, payload, code, plain_rows, plain_inds, c_rows, c_entries):  # pragma: no cover - compiled
    """Address hits of one side (``code`` 1 src, 2 dst) split by payload: plain conditions
    (``indicator * 3 + side``) that apply to this side, as (row, indicator); constrained entries
    (``-(k + 1)``), as (row, k), for the constraint checks. Returns (plain, constrained) counts."""
    p = 0
    c = 0
    for t in range(len(rows)):
        v = np.int64(payload[t])
        side = v % 3
        plain_rows[p] = rows[t]
        plain_inds[p] = v // 3
        p += (v >= 0) & ((side == 0) | (side == code))
        c_rows[c] = rows[t]
        c_entries[c] = ~v
        c += v < 0
    return p, c


@_jit(f"int64({_KEYS}, uint8[::1], {_I64})")
def coarse_candidates(keys, covered16, out):  # pragma: no cover - compiled
    """Positions of the keys whose /16 some range touches (``covered16``: one byte per /16, 64 KiB,
    cache-resident), compacted into ``out``: a small index then looks up only those."""
    k = 0
    for i in range(len(keys)):
        out[k] = i
        k += covered16[np.int64(keys[i]) >> 16]
    return k


@_jit(f"int64({_I64}, {_I64}, {_I64})")
def csr_counts(first, end, offsets):  # pragma: no cover - compiled
    """Range k covers intervals [first[k], end[k]): ``offsets`` (zeroed, intervals + 1) becomes the
    CSR offsets of the payloads per interval. Returns the total."""
    n = len(offsets) - 1
    for k in range(len(first)):  # difference array: +1 where a range starts covering, -1 past its end
        offsets[first[k] + 1] += 1
        if end[k] < n:
            offsets[end[k] + 1] -= 1
    running = 0
    total = 0
    for i in range(1, n + 1):  # per-interval counts, then their running sum
        running += offsets[i]
        total += running
        offsets[i] = total
    return total


@_jit(f"void({_I64}, {_I64}, int32[::1], {_I64}, int32[::1])")
def csr_fill(first, end, payload, offsets, ids):  # pragma: no cover - compiled
    """Each range's payload into every interval it covers, in range order within an interval. A
    range's intervals are consecutive and ranges come sorted by start, so a cursor per interval is
    the interval's offset plus the ranges already written there."""
    n = len(offsets) - 1
    cursor = np.empty(n, np.int64)
    for i in range(n):
        cursor[i] = offsets[i]
    for k in range(len(first)):
        for i in range(first[k], end[k]):
            ids[cursor[i]] = payload[k]
            cursor[i] += 1
