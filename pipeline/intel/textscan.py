"""Compiled (numba) scanning of indicator list text: millions of lines without a Python object each.

:func:`scan_lines` splits a block of bytes into lines exactly as Python's ``str.splitlines`` does and
finds each line's entry and reference as :func:`pipeline.intel.lists.split_line` does (``#`` and
``;`` comments, whitespace-separated fields). It parses the common entries itself — an IPv4 or
IPv6 address, optionally ``/prefix`` and ``|port``, in exactly the forms ``ipaddress.ip_network``
and ``int`` accept — and hands every other line back to the Python parser (malformed entries, rare
forms such as netmasks or IPv4-in-IPv6 tails, lines with non-ASCII text), so errors keep their wording and nothing is parsed differently. No
library parses address text in bulk (``ipaddress`` and ``socket.inet_pton`` take one string at a
time), hence this module.
"""

from __future__ import annotations

import numba
import numpy as np

FAST, ENTRY, LINE = 1, 2, 3
"""Row kinds: IPv4 parsed here; an ASCII entry for the Python parser; a whole non-ASCII line for it."""


def _jit(func):
    return numba.njit(cache=True, nogil=True, boundscheck=False)(func)


@_jit
def _space(b: int) -> bool:  # pragma: no cover - compiled
    """ASCII whitespace as str.split/str.strip see it (\\x1c-\\x1f included)."""
    return b == 32 or 9 <= b <= 13 or 28 <= b <= 31


@_jit
def _break_len(buf, i: int, n: int) -> int:  # pragma: no cover - compiled
    """Length of the line break starting at ``i`` (0: none), as str.splitlines sees them."""
    b = buf[i]
    if b == 13:
        return 2 if i + 1 < n and buf[i + 1] == 10 else 1
    if 10 <= b <= 12 or 28 <= b <= 30:
        return 1
    if b == 0xC2 and i + 1 < n and buf[i + 1] == 0x85:  # U+0085
        return 2
    if b == 0xE2 and i + 2 < n and buf[i + 1] == 0x80 and (buf[i + 2] == 0xA8 or buf[i + 2] == 0xA9):
        return 3  # U+2028, U+2029
    return 0


@_jit
def count_breaks(buf) -> int:  # pragma: no cover - compiled
    """An upper bound of the lines in ``buf`` (its line-break bytes, plus one)."""
    k = 1
    for i in range(len(buf)):
        b = buf[i]
        k += (b == 10) | (b == 11) | (b == 12) | (b == 13) | (b == 28) | (b == 29) | (b == 30) | (b == 0x85)
        k += (b == 0xA8) | (b == 0xA9)
    return k


@_jit
def _digits(buf, i: int, end: int, most: int) -> tuple[int, int]:  # pragma: no cover - compiled
    """(value, count) of the ASCII digits from ``i`` (at most ``most``; count -1 if more follow)."""
    value = 0
    k = 0
    while i + k < end and 48 <= buf[i + k] <= 57:
        if k == most:
            return 0, -1
        value = value * 10 + (buf[i + k] - 48)
        k += 1
    return value, k


@_jit
def _hex(b: int) -> int:  # pragma: no cover - compiled
    if 48 <= b <= 57:
        return b - 48
    if 97 <= b <= 102:
        return b - 87
    if 65 <= b <= 70:
        return b - 55
    return -1


@_jit
def _v4_address(buf, i: int, end: int) -> tuple[bool, int, int]:  # pragma: no cover - compiled
    """A dotted IPv4 address from ``i`` as ipaddress reads one (no leading zeros, octets <= 255):
    (ok, value, index after it)."""
    address = 0
    for octet in range(4):
        value, k = _digits(buf, i, end, 3)
        if k <= 0 or value > 255 or (k > 1 and buf[i] == 48):
            return False, 0, i
        address = address * 256 + value
        i += k
        if octet < 3:
            if i >= end or buf[i] != 46:
                return False, 0, i
            i += 1
    return True, address, i


@_jit
def _v6_address(buf, start: int, end: int) -> tuple[bool, np.uint64, np.uint64, int]:  # pragma: no cover
    """Hex groups and one ``::`` (no IPv4 tail, no scope) by ipaddress's rules: (ok, hi, lo, index
    after it). Anything else is not ok, and left to ipaddress."""
    stop = start
    while stop < end and (buf[stop] == 58 or _hex(buf[stop]) >= 0):
        stop += 1
    parts = 1
    for i in range(start, stop):
        parts += buf[i] == 58
    if parts < 3 or parts > 9:
        return False, np.uint64(0), np.uint64(0), stop
    groups = np.zeros(9, np.int64)
    lengths = np.zeros(9, np.int64)
    p = 0
    for i in range(start, stop):
        if buf[i] == 58:
            p += 1
        else:
            lengths[p] += 1
            if lengths[p] > 4:
                return False, np.uint64(0), np.uint64(0), stop
            groups[p] = groups[p] * 16 + _hex(buf[i])
    skip = -1
    for i in range(1, parts - 1):
        if lengths[i] == 0:
            if skip >= 0:
                return False, np.uint64(0), np.uint64(0), stop
            skip = i
    if skip >= 0:
        hi_parts, lo_parts = skip, parts - skip - 1
        if lengths[0] == 0:
            hi_parts -= 1
            if hi_parts:
                return False, np.uint64(0), np.uint64(0), stop
        if lengths[parts - 1] == 0:
            lo_parts -= 1
            if lo_parts:
                return False, np.uint64(0), np.uint64(0), stop
        if 8 - (hi_parts + lo_parts) < 1:
            return False, np.uint64(0), np.uint64(0), stop
    else:
        if parts != 8 or lengths[0] == 0 or lengths[parts - 1] == 0:
            return False, np.uint64(0), np.uint64(0), stop
        hi_parts, lo_parts = parts, 0
    words = np.zeros(8, np.uint64)
    first = 1 if lengths[0] == 0 else 0
    for k in range(hi_parts):
        words[k] = groups[first + k]
    for k in range(lo_parts):
        words[8 - lo_parts + k] = groups[parts - lo_parts + k - (1 if lengths[parts - 1] == 0 else 0)]
    hi = np.uint64(0)
    lo = np.uint64(0)
    for k in range(4):
        hi = (hi << np.uint64(16)) | words[k]
        lo = (lo << np.uint64(16)) | words[4 + k]
    return True, hi, lo, stop


@_jit
def parse_entry(
    buf, start: int, end: int
) -> tuple[bool, int, np.uint64, np.uint64, int, int]:  # pragma: no cover
    """``address[/prefix][|port]`` exactly as ipaddress.ip_network(strict=False) and int() accept it:
    a dotted IPv4 address (no leading zeros) or IPv6 hex groups, prefix within the family, port
    0-65535. Returns (ok, version, hi, lo, prefix, port or -1): the network address as 128-bit
    words (IPv4 mapped), host bits cleared. Not ok also for forms Python would accept that this
    does not read (IPv4-in-IPv6 tails, scopes, netmasks, ``+80``): the caller asks Python."""
    no = (False, 0, np.uint64(0), np.uint64(0), 0, -1)
    ok, value, i = _v4_address(buf, start, end)
    if ok:
        version, width = 4, 32
        hi, lo = np.uint64(0), np.uint64(0xFFFF00000000) | np.uint64(value)
    else:
        ok, hi, lo, i = _v6_address(buf, start, end)
        if not ok:
            return no
        version, width = 6, 128
    prefix = width
    if i < end and buf[i] == 47:
        prefix, k = _digits(buf, i + 1, end, 9)
        if k <= 0 or prefix > width:
            return no
        i += 1 + k
    port = -1
    if i < end and buf[i] == 124:
        port, k = _digits(buf, i + 1, end, 9)
        if k <= 0 or port > 65535:
            return no
        i += 1 + k
    if i != end:
        return no
    host = width - prefix  # bits to clear, counted from the low end of the 128-bit value
    if host >= 64:
        lo = np.uint64(0)
        if host >= 128:
            hi = np.uint64(0)
        elif host > 64:
            hi &= ~((np.uint64(1) << np.uint64(host - 64)) - np.uint64(1))
    elif host > 0:
        lo &= ~((np.uint64(1) << np.uint64(host)) - np.uint64(1))
    return True, version, hi, lo, prefix, port


@_jit
def _strip(buf, start: int, end: int) -> tuple[int, int]:  # pragma: no cover - compiled
    while start < end and _space(buf[start]):
        start += 1
    while end > start and _space(buf[end - 1]):
        end -= 1
    return start, end


@_jit
def scan_lines(
    buf, kind, line, version, hi, lo, prefix, port, entry_span, name_span, collapse
):  # pragma: no cover
    """Every line of ``buf`` that has an entry, in order: its kind (FAST/ENTRY/LINE), its 0-based line
    number, the parsed network (FAST: see :func:`parse_entry`), the entry's byte span, the reference's byte span (or -1)
    and whether its inner whitespace runs collapse to one space (a reference made of fields). Spans
    of LINE rows cover the whole line. Returns (rows, lines)."""
    n = len(buf)
    rows = 0
    lines = 0
    i = 0
    while i < n:
        start = i
        high = False
        hash_at = -1
        semi_at = -1
        brk = 0
        while i < n:
            b = buf[i]
            if b >= 0x80:
                brk = _break_len(buf, i, n)
                if brk:
                    break
                high = True
            elif b < 32:
                brk = _break_len(buf, i, n)
                if brk:
                    break
            elif b == 35 and hash_at < 0:
                hash_at = i
            elif b == 59 and semi_at < 0:
                semi_at = i
            i += 1
        end = i
        i += brk
        lines += 1
        if high:  # non-ASCII whitespace and text: the Python parser reads the whole line
            kind[rows] = LINE
            line[rows] = lines - 1
            entry_span[rows, 0], entry_span[rows, 1] = start, end
            rows += 1
            continue
        head_end = end
        name_s, name_e = -1, -1
        marked = False
        if hash_at >= 0:
            marked = True
            head_end = hash_at
            if 0 <= semi_at < hash_at:
                head_end = semi_at
            name_s, name_e = _strip(buf, hash_at + 1, end)
        elif semi_at >= 0:
            marked = True
            head_end = semi_at
            name_s, name_e = _strip(buf, semi_at + 1, end)
        es = start
        while es < head_end and _space(buf[es]):
            es += 1
        if es == head_end:
            continue  # blank or comment-only line
        ee = es
        while ee < head_end and not _space(buf[ee]):
            ee += 1
        if not marked:
            name_s, name_e = _strip(buf, ee, end)
        if name_s >= name_e:
            name_s, name_e = -1, -1
        ok, family, high, low, length, number = parse_entry(buf, es, ee)
        kind[rows] = FAST if ok else ENTRY
        line[rows] = lines - 1
        version[rows], hi[rows], lo[rows], prefix[rows], port[rows] = family, high, low, length, number
        entry_span[rows, 0], entry_span[rows, 1] = es, ee
        name_span[rows, 0], name_span[rows, 1] = name_s, name_e
        collapse[rows] = not marked
        rows += 1
    return rows, lines


@_jit
def parse_entries(data, offsets, kind, version, hi, lo, prefix, port):  # pragma: no cover - compiled
    """FAST for each string (Arrow ``offsets``/``data``) that :func:`parse_entry` reads, else ENTRY."""
    for r in range(len(offsets) - 1):
        ok, family, high, low, length, number = parse_entry(data, offsets[r], offsets[r + 1])
        kind[r] = FAST if ok else ENTRY
        version[r], hi[r], lo[r], prefix[r], port[r] = family, high, low, length, number


@_jit
def gather(src, spans, collapse, prefix_bytes, offsets, out) -> int:  # pragma: no cover - compiled
    """Copy each span of ``src`` (after ``prefix_bytes``) into ``out``, whitespace runs made one
    space where ``collapse``; ``offsets`` (n + 1) receives the Arrow offsets. Spans starting below 0
    are nulls (empty). Returns the bytes written; call with an empty ``out`` to size it."""
    k = 0
    fill = len(out) > 0
    offsets[0] = 0
    for r in range(len(spans)):
        s, e = spans[r, 0], spans[r, 1]
        if s >= 0:
            for j in range(len(prefix_bytes)):
                if fill:
                    out[k] = prefix_bytes[j]
                k += 1
            run = False
            for j in range(s, e):
                b = src[j]
                if collapse[r] and _space(b):
                    run = True
                    continue
                if run:
                    if fill:
                        out[k] = 32
                    k += 1
                    run = False
                if fill:
                    out[k] = b
                k += 1
        offsets[r + 1] = k
    return k
