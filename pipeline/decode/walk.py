"""The one per-record loop of decoding, compiled: where each field of IPFIX variable-length records
starts (RFC 7011 §7). Each record's start depends on the previous record's lengths, so this cannot be
vectorised; in Python it cost ~1 µs per record, which let 64 KB datagrams of 1-byte records cost
~100 ms of CPU each. Compiled (numba, cached on disk like the matcher's kernels), ~10-20 ns.
"""

from __future__ import annotations

import numba
import numpy as np

VARIABLE = 65535


@numba.njit(cache=True, nogil=True, boundscheck=False)
def walk(data, lengths, limit, starts, ends):  # pragma: no cover - compiled
    """Fill ``starts[i, j]`` (where field ``j`` of record ``i`` starts in ``data``) and ``ends[i]``
    for at most ``limit`` records (< 0: as many as fit ``starts``); stop at the first record that
    does not fit. Returns (records, bytes used)."""
    nf = len(lengths)
    end = len(data)
    min_len = 0
    for j in range(nf):
        min_len += 1 if lengths[j] == VARIABLE else lengths[j]
    most = starts.shape[0] if limit < 0 else min(limit, starts.shape[0])
    pos = 0
    n = 0
    while n < most and min_len > 0 and end - pos >= min_len:
        p = pos
        ok = True
        for j in range(nf):
            size = lengths[j]
            if size == VARIABLE:
                if p >= end:
                    ok = False
                    break
                size = np.int64(data[p])
                p += 1
                if size == 255:
                    if p + 2 > end:
                        ok = False
                        break
                    size = (np.int64(data[p]) << 8) | np.int64(data[p + 1])
                    p += 2
            starts[n, j] = p
            p += size
            if p > end:
                ok = False
                break
        if not ok:
            break
        ends[n] = p
        n += 1
        pos = p
    return n, pos
