"""A flow-schema address column viewed for lookups without copying or byte-swapping it whole.

The 16-byte values are read as four 32-bit words in one compiled pass that flags IPv4-mapped rows
and byte-swaps only their IPv4 word into numeric order. 128-bit (hi, lo) words,
needed for IPv6 ranges and pair constraints, are computed for the few rows that need them.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from detectors.kernels import ipv4_words


class Addresses:
    def __init__(self, raw: np.ndarray) -> None:
        """``raw``: (n, 16) uint8, network byte order."""
        self.raw = raw
        self.is_v4 = np.empty(len(raw), dtype=bool)
        self.v4 = np.empty(len(raw), dtype=np.uint32)  # numeric IPv4 value (meaningful where is_v4)
        words = np.ascontiguousarray(raw).view(np.uint32).reshape(-1, 4)
        self.all_v4 = bool(ipv4_words(words, self.v4, self.is_v4))

    @classmethod
    def from_column(cls, column: pa.Array | pa.ChunkedArray) -> Addresses:
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        if column.null_count:
            column = column.fill_null(bytes(16))
        n, offset = len(column), column.offset
        buf = np.frombuffer(column.buffers()[1], dtype=np.uint8, count=16 * (n + offset))
        return cls(buf[16 * offset :].reshape(n, 16))

    def __len__(self) -> int:
        return len(self.raw)

    def keys16(self, rows: np.ndarray | None = None) -> np.ndarray:
        raw = self.raw if rows is None else self.raw[rows]
        return np.ascontiguousarray(raw).view("S16").ravel()

    def hilo(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        words = np.ascontiguousarray(self.raw[rows]).view(">u8").reshape(-1, 2).astype(np.uint64)
        return words[:, 0], words[:, 1]
