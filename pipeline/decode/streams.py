"""Export streams: who sent a packet, and the keys the decoder's state is filed under.

A stream is (exporter address, source port, observation domain, version). Templates are keyed by it
(RFC 7011 §8.4), with the port left out where routers change it (``template_key_includes_port``);
sampling and system init times by (exporter, port, domain). Every per-stream table is bounded by
``max_streams`` (:func:`put_bounded`): the source address is whatever a datagram claims.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from typing import Any

import numpy as np

from pipeline.decode.datagram import DecoderConfig
from pipeline.decode.stats import DecoderStats
from pipeline.schemas import ip_to_bytes16

TemplateKey = tuple[str, int, int, int]
"""exporter, port (0 when templates are not keyed by port), observation domain, version"""
DomainKey = tuple[str, int, int]
"""exporter, port (or 0), observation domain"""
StreamEntry = tuple[TemplateKey, bytes, tuple[str, int]]
"""A stream's template key, 16-byte exporter address and packet counter key (exporter, version)."""

_MAX_CACHED = 65_536


def put_bounded(state: dict, key: Any, value: Any, limit: int, evictions: Counter) -> None:
    """Set per-stream state, evicting the oldest stream's (counted) at ``limit`` streams."""
    if key not in state and len(state) >= limit:
        del state[next(iter(state))]
        evictions["streams"] += 1
    state[key] = value


class Streams:
    """Keys of every stream seen, cached so the per-packet path costs one dict lookup, and the
    exporter names behind 16-byte addresses (flows are counted per exporter by name)."""

    def __init__(self, config: DecoderConfig, stats: DecoderStats) -> None:
        self.config = config
        self.stats = stats
        self._entries: dict[tuple[str, int, int, int], StreamEntry] = {}
        self._exporter16: dict[str, bytes] = {}
        self._names: dict[bytes, str] = {}

    def packet(self, exporter: str, port: int, domain: int, version: int) -> tuple[TemplateKey, bytes]:
        """Template key and 16-byte exporter of a packet's stream; counts the packet."""
        entry = self.entry(exporter, port, domain, version)
        packets = self.stats.packets
        packets[entry[2]] = packets.get(entry[2], 0) + 1
        return entry[0], entry[1]

    def entry(self, exporter: str, port: int, domain: int, version: int) -> StreamEntry:
        skey = (exporter, port, domain, version)
        cached = self._entries.get(skey)
        if cached is None:
            if len(self._entries) > _MAX_CACHED:
                self._entries.clear()
            tkey = (exporter, port if self.config.template_key_includes_port else 0, domain, version)
            cached = self._entries[skey] = (tkey, self.ex16(exporter), (exporter, version))
        return cached

    def ex16(self, exporter: str) -> bytes:
        """The exporter's address as 16 bytes (IPv4-mapped for IPv4; zeros if it is no address)."""
        raw = self._exporter16.get(exporter)
        if raw is None:
            try:
                raw = ip_to_bytes16(exporter)
            except ValueError:
                raw = bytes(16)
            if len(self._exporter16) > _MAX_CACHED:
                self._exporter16.clear()
                self._names.clear()
            self._exporter16[exporter] = raw
            self._names[raw] = exporter
        return raw

    def count_by_exporter(self, counter: Any, exporter: np.ndarray, reason: str | None = None) -> None:
        """Add each exporter's row count (rows as 16-byte exporter addresses) to ``counter``."""
        n = len(exporter)
        if not n:
            return
        halves = np.ascontiguousarray(exporter).view(np.uint64)
        high, low = halves[:, 0], halves[:, 1]
        if (low == low[0]).all() and (high == high[0]).all():
            groups: list[tuple[bytes, int]] = [(exporter[0].tobytes(), n)]
        else:
            # Rows come in stretches of one exporter (a packet's records): sort the stretches' first
            # rows, not every row (a block from hundreds of routers holds ~10^5 rows, ~10^3 stretches).
            change = np.flatnonzero((low[1:] != low[:-1]) | (high[1:] != high[:-1])) + 1
            starts = np.concatenate(([0], change))
            lengths = np.diff(starts, append=n)
            # The stretches' exporters in byte order, as np.unique sorts them, and each one's total.
            first_high, first_low = high[starts].byteswap(), low[starts].byteswap()
            order = np.lexsort((first_low, first_high))
            ordered = starts[order]
            first_high, first_low = first_high[order], first_low[order]
            new = np.empty(len(order), dtype=bool)
            new[0] = True
            new[1:] = (first_low[1:] != first_low[:-1]) | (first_high[1:] != first_high[:-1])
            counts = np.add.reduceat(lengths[order], np.flatnonzero(new)).tolist()
            raws = np.ascontiguousarray(exporter[ordered[new]]).view(np.dtype((np.void, 16))).ravel().tolist()
            groups = list(zip(raws, counts, strict=True))
        for raw, count in groups:
            name = self._names.get(raw) or _ip_text(raw)
            counter[name if reason is None else (name, reason)] += count


def _ip_text(raw: bytes) -> str:
    """Text of a 16-byte exporter address (IPv4-mapped shown as IPv4)."""
    address = ipaddress.IPv6Address(raw)
    return str(address.ipv4_mapped or address)
