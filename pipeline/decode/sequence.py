"""Sequence accounting: lost export packets or records per exporter and observation domain.

NetFlow v5 counts flows, v9 export packets, IPFIX data records (RFC 7011 §3.1). A forward jump is
loss (``sequence_gaps``); a backward one is an exporter restart or reordering (``sequence_resets``).
"""

from __future__ import annotations

import numpy as np

from pipeline.decode.stats import DecoderStats
from pipeline.decode.streams import put_bounded

SequenceKey = tuple[str, int, int]
"""exporter, observation domain, version"""


class SequenceTracker:
    def __init__(self, stats: DecoderStats, max_streams: int) -> None:
        self.stats = stats
        self.max_streams = max_streams
        self.expected: dict[SequenceKey, int | None] = {}
        """The sequence number each stream's next packet should carry (None: not countable, as
        after an IPFIX message holding data for an unknown template)."""

    def check(self, exporter: str, domain: int, version: int, seq: int, units: int | None) -> None:
        """One packet: ``seq`` against what was expected, then ``units`` (records or packets) on."""
        key = (exporter, domain, version)
        expected = self.expected.get(key)
        if expected is not None:
            diff = (seq - expected) & 0xFFFFFFFF
            if diff and diff < 0x80000000:
                self.stats.sequence_gaps[(exporter, domain)] += diff
            elif diff:
                self.stats.sequence_resets[(exporter, domain)] += 1
        self._put(key, None if units is None else (seq + units) & 0xFFFFFFFF)

    def check_runs(
        self, keys: list[SequenceKey], space: np.ndarray, seq: np.ndarray, units: np.ndarray
    ) -> None:
        """:meth:`check` over consecutive packets of the sequence spaces ``keys`` (numbered in order of
        first packet; ``space``: each packet's), all at once: one pass of numpy for any number of
        spaces, then one dict update per space. Counters are added in the order the per-packet walk
        first touches them (the space's first packet with a gap, or a reset), so that bounded
        counters fold the same streams."""
        if len(keys) > 1:
            order = np.argsort(space, kind="stable")
            seq, units, space = seq[order], units[order], space[order]
        else:  # the usual case: already in order
            order = np.arange(len(space))
        starts = np.flatnonzero(np.diff(space, prepend=-1))
        last = np.append(starts[1:], len(space)) - 1
        expected = np.empty_like(seq)
        expected[1:] = (seq[:-1] + units[:-1]) & 0xFFFFFFFF
        previous = [self.expected.get(key) for key in keys]
        known = np.array([p is not None for p in previous])
        expected[starts] = np.where(known, [p or 0 for p in previous], seq[starts])
        diff = (seq - expected) & 0xFFFFFFFF
        reset = diff >= 0x80000000
        lost = np.where(reset, 0, diff)
        for counter, events, amounts in (
            (self.stats.sequence_gaps, lost > 0, lost),
            (self.stats.sequence_resets, reset, reset),
        ):
            at = np.flatnonzero(events)
            if not len(at):
                continue
            firsts = at[np.flatnonzero(np.diff(space[at], prepend=-1))]  # each space's first event
            totals = np.add.reduceat(amounts.astype(np.int64), starts)
            for pos in firsts[np.argsort(order[firsts])].tolist():
                key = keys[int(space[pos])]
                counter[(key[0], key[1])] += int(totals[space[pos]])
        following = ((seq[last] + units[last]) & 0xFFFFFFFF).tolist()
        for key, value in zip(keys, following, strict=True):
            self._put(key, value)

    def _put(self, key: SequenceKey, value: int | None) -> None:
        put_bounded(self.expected, key, value, self.max_streams, self.stats.evictions)
