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


@_jit(
    f"int64({_KEYS}, {_U64}, {_I64}, int64, int32[::1], uint8[:, ::1], int32[::1], uint8[:, ::1], {_I64}, "
    f"{_I64}, int64)"
)
def locate_rare(
    keys, entry, rare, n_rare, sorted_base, sorted_keys, dense_base, dense_keys, pos, interval, k
):  # pragma: no cover - compiled
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
    """Pass 4, one random read per found interval: its head (see ``V4Intervals.head``). Returns the
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
    their address byte-swapped into numeric order (other rows: 0), in one pass. Returns whether every
    row is IPv4."""
    mapped = np.uint32(0xFFFF0000)  # bytes 00 00 ff ff read as a little-endian word
    every = True
    for i in range(len(v4)):
        w3 = words[i, 3]
        flag = (words[i, 0] == 0) & (words[i, 1] == 0) & (words[i, 2] == mapped)
        is_v4[i] = flag
        every &= flag
        swapped = (w3 >> 24) | ((w3 >> 8) & 0xFF00) | ((w3 << 8) & 0xFF0000) | ((w3 << 24) & 0xFF000000)
        v4[i] = swapped * flag  # IPv6 rows: 0, one /24 entry that stays cached in the IPv4 lookup
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


# IPv6 levels (see ``intervals.V6Level``): per level, a blocked Bloom filter of the /prefixes that
# hold boundaries (one uint64 word per key read, three bits tested), then, for the few addresses it
# passes, a hash table (linear probing) from each such /prefix to its first boundary; slots are
# uint32, ``fingerprint << s_bits | (first + 1)``, 0 empty.
_MIX1, _MIX2 = np.uint64(0xFF51AFD7ED558CCD), np.uint64(0xC4CEB9FE1A85EC53)
_U29, _U32, _U1, _U63 = np.uint64(29), np.uint64(32), np.uint64(1), np.uint64(63)
_BYTES1, _BYTES2 = np.uint64(0x00FF00FF00FF00FF), np.uint64(0x0000FFFF0000FFFF)
_V6_CHUNK = 2048  # addresses per round of passes: what one pass reads is still cached for the next


@numba.njit(cache=True, nogil=True, inline="always")
def _mix(key):  # pragma: no cover - compiled
    """A multiply-xorshift hash: the high bits (filter word, slot) depend on every key bit, and so,
    through the xorshift, do the low ones (filter bits, fingerprint)."""
    h = (key ^ (key >> _U29)) * _MIX1
    return h ^ (h >> _U32)


@numba.njit(cache=True, nogil=True, inline="always")
def _bswap(x):  # pragma: no cover - compiled
    """A big-endian word read as native (little-endian) back to its numeric value (one movbe)."""
    x = ((x & _BYTES1) << np.uint64(8)) | ((x >> np.uint64(8)) & _BYTES1)
    x = ((x & _BYTES2) << np.uint64(16)) | ((x >> np.uint64(16)) & _BYTES2)
    return (x << _U32) | (x >> _U32)


@numba.njit(cache=True, nogil=True, inline="always")
def _prefix_key(hi, shift):  # pragma: no cover - compiled
    """The /(64 - shift) prefix of an address's high word (shift 64: the one /0)."""
    return hi >> np.uint64(shift) if shift < 64 else np.uint64(0)


@numba.njit(cache=True, nogil=True, inline="always")
def _filter_bits(h):  # pragma: no cover - compiled
    """Three bits of a filter word, from hash bits the word's index does not use."""
    return (
        (_U1 << (h & _U63)) | (_U1 << ((h >> np.uint64(6)) & _U63)) | (_U1 << ((h >> np.uint64(12)) & _U63))
    )


@numba.njit(cache=True, nogil=True, inline="always")
def _scaled(h, size):  # pragma: no cover - compiled
    """The hash's high 32 bits scaled to [0, size) (multiply-shift: any size, no modulo)."""
    return np.int64(((h >> _U32) * np.uint64(size)) >> _U32)


@numba.njit(cache=True, nogil=True, inline="always")
def _at_or_below(bounds, k, hi, lo):  # pragma: no cover - compiled
    """bounds[k] <= (hi, lo), as 128-bit numbers."""
    b = bounds[k, 0]
    return (b < hi) | ((b == hi) & (bounds[k, 1] <= lo))


@_jit(f"{_U64}(uint64[:, ::1], int64)")
def v6_prefix_keys(bounds, shift):  # pragma: no cover - compiled
    out = np.empty(bounds.shape[0], np.uint64)
    for k in range(bounds.shape[0]):
        out[k] = _prefix_key(bounds[k, 0], shift)
    return out


@_jit(f"void({_U64}, {_I64}, int64, {_U64}, uint32[::1])")
def v6_fill(keys, firsts, s_bits, bloom, slots):  # pragma: no cover - compiled
    """Each /prefix's key into the filter and the table, its slot holding its fingerprint and the
    position + 1 of its first boundary."""
    fp_mask = (_U1 << np.uint64(32 - s_bits)) - _U1
    for b in range(len(keys)):
        h = _mix(keys[b])
        bloom[_scaled(h, len(bloom))] |= _filter_bits(h)
        j = _scaled(h, len(slots))
        while slots[j] != 0:
            j = j + 1 if j + 1 < len(slots) else 0
        slots[j] = np.uint32(((h & fp_mask) << np.uint64(s_bits)) | np.uint64(firsts[b] + 1))


@numba.njit(cache=True, nogil=True, inline="always")
def _v6_search(bounds, s, end, hi, lo):  # pragma: no cover - compiled
    """The last boundary <= (hi, lo) before ``end``, from its /prefix's first one ``s`` (boundaries
    past the /prefix are all above the address, so the /prefix's own end is not needed): the next
    four counted without branches (nearly every /prefix holds fewer), then, past them, doubling
    steps and halving."""
    below = 0
    for step in range(4):
        below += (s + step < end) & _at_or_below(bounds, min(s + step, end - 1), hi, lo)
    if below < 4:
        return s - 1 + below
    iv, step = s + 3, 1
    while iv + step < end and _at_or_below(bounds, iv + step, hi, lo):
        iv += step
        step *= 2
    top = min(iv + step, end)
    while top - iv > 1:
        mid = (iv + top) >> 1
        if _at_or_below(bounds, mid, hi, lo):
            iv = mid
        else:
            top = mid
    return iv


@_jit(
    f"int64(uint64[:, ::1], {_I64}, int64[:, ::1], {_U64}, uint32[::1], int64, uint64[:, ::1], {_I64}, {_I64})"
)
def v6_locate(words, rows, levels, bloom, slots, s_bits, bounds, out_rows, interval):  # pragma: no cover
    """For each of ``rows`` (its address: ``words[row]``, two big-endian words read natively) and
    each level whose /prefix of the address holds boundaries: the row and the interval, compacted
    into ``out_rows``/``interval``. In rounds of ``_V6_CHUNK`` rows, each pass reading what the one
    before left in cache: read the filter word of each row and level (a loop that does nothing
    else, so the misses overlap); keep what the filter passes (most rows are dismissed here),
    branch-free; read their slots; follow the probe to the slot whose fingerprint matches; read
    that boundary; check that it lies in the address's /prefix and search from it. Returns how
    many (row, interval) pairs were found."""
    n_levels = levels.shape[0]
    sb = np.uint64(s_bits)
    s_mask = (_U1 << sb) - _U1
    fp_mask = (_U1 << np.uint64(32 - s_bits)) - _U1
    high = np.empty(_V6_CHUNK, np.uint64)
    hashes = np.empty(_V6_CHUNK * n_levels, np.uint64)  # [level * _V6_CHUNK + t]
    seen = np.empty(_V6_CHUNK * n_levels, np.uint64)
    maybe = np.empty(_V6_CHUNK * n_levels, np.int64)
    first = np.empty(_V6_CHUNK * n_levels, np.int64)
    found = 0
    for c0 in range(0, len(rows), _V6_CHUNK):
        c1 = min(len(rows), c0 + _V6_CHUNK)
        for t in range(c1 - c0):
            high[t] = _bswap(words[rows[c0 + t], 0])
        for k in range(n_levels):
            shift, at, size = levels[k, 0], levels[k, 2], levels[k, 3]
            for t in range(c1 - c0):
                h = _mix(_prefix_key(high[t], shift))
                hashes[k * _V6_CHUNK + t] = h
                seen[k * _V6_CHUNK + t] = bloom[at + _scaled(h, size)]
        kept = 0
        for t in range(c1 - c0):  # in row order
            for k in range(n_levels):
                u = k * _V6_CHUNK + t
                bits = _filter_bits(hashes[u])
                maybe[kept] = u
                kept += (seen[u] & bits) == bits
        for v in range(kept):
            u = maybe[v]
            k = u // _V6_CHUNK
            seen[v] = slots[levels[k, 4] + _scaled(hashes[u], levels[k, 5])]
        for v in range(kept):  # the slot whose fingerprint matches (-1: none, a filter false positive)
            u = maybe[v]
            k = u // _V6_CHUNK
            h = hashes[u]
            fp = h & fp_mask
            j = _scaled(h, levels[k, 5])
            slot = seen[v]
            s = -1
            while slot != 0:
                if (slot >> sb) == fp:
                    s = np.int64(slot & s_mask) - 1
                    break
                j = j + 1 if j + 1 < levels[k, 5] else 0
                slot = np.uint64(slots[levels[k, 4] + j])
            first[v] = s
        for v in range(kept):  # a loop of its own: no branch between these misses
            seen[v] = bounds[max(first[v], 0), 0]
        for v in range(kept):
            s = first[v]
            if s < 0:
                continue
            u = maybe[v]
            k = u // _V6_CHUNK
            shift = levels[k, 0]
            row = rows[c0 + u % _V6_CHUNK]
            hi = _bswap(words[row, 0])
            key = _prefix_key(hi, shift)
            if _prefix_key(seen[v], shift) != key:  # another /prefix's fingerprint: probe on (rare)
                h = hashes[u]
                fp = h & fp_mask
                j = _scaled(h, levels[k, 5])
                s = -1
                while slots[levels[k, 4] + j] != 0:
                    slot = np.uint64(slots[levels[k, 4] + j])
                    b = np.int64(slot & s_mask) - 1
                    if (slot >> sb) == fp and _prefix_key(bounds[b, 0], shift) == key:
                        s = b
                        break
                    j = j + 1 if j + 1 < levels[k, 5] else 0
                if s < 0:
                    continue
            out_rows[found] = row
            interval[found] = _v6_search(bounds, s, levels[k, 1], hi, _bswap(words[row, 1]))
            found += 1
    return found
