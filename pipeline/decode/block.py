"""The collector's path: a block of datagrams held as rows of one 2-D receive buffer.

The header and first set of every row are read for all rows at once with numpy (:class:`BlockHeaders`).
A row that is one header plus one data set of a known template (what a router sends nearly always),
or a byte-for-byte repeat of its stream's last template set followed by one, then costs a few dict
lookups: its packet is counted, its sequence number checked and its records gathered straight from the
buffer in stretches of such rows. Every other row takes the per-packet walk, in order, so both entry
points give the same flows and the same counters.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np

from pipeline.decode.budget import VariableRecordBudget
from pipeline.decode.netflow_v5 import V5_RECORD, V5_TEMPLATE
from pipeline.decode.pending import PendingBuffer
from pipeline.decode.records import RecordGroups, Run
from pipeline.decode.sampling import SamplingState
from pipeline.decode.sequence import SequenceTracker
from pipeline.decode.stats import DecoderStats
from pipeline.decode.streams import StreamEntry, Streams, TemplateKey
from pipeline.decode.template_state import TemplateStore
from pipeline.decode.templates import Template
from pipeline.decode.v9_ipfix import IPFIX_HEADER, V9_HEADER

log = logging.getLogger(__name__)

# Header and first set of every row of a block, one fixed 24-byte layout per version.
_V9_ROW = np.dtype(
    [("version", ">u2"), ("count", ">u2"), ("uptime", ">u4"), ("secs", ">u4"), ("seq", ">u4"),
     ("domain", ">u4"), ("set_id", ">u2"), ("set_len", ">u2")]
)  # fmt: skip
_IPFIX_ROW = np.dtype(
    [("version", ">u2"), ("length", ">u2"), ("export", ">u4"), ("seq", ">u4"), ("domain", ">u4"),
     ("set_id", ">u2"), ("set_len", ">u2"), ("_", "V4")]
)  # fmt: skip
_V5_ROW = np.dtype(
    [("version", ">u2"), ("count", ">u2"), ("uptime", ">u4"), ("secs", ">u4"), ("nsecs", ">u4"),
     ("seq", ">u4"), ("engine_type", "u1"), ("engine_id", "u1"), ("sampling", ">u2")]
)  # fmt: skip
_ROW_HEADER = 24
_SLOW, _FAST_V5, _FAST_V9 = 0, 5, 9  # block row kinds: the per-packet walk, or the version
_REFRESH = 100  # added to the version: a template set, then the data set
_MISSES_BEFORE_WALK, _WALK_AFTER_MISSES = 4, 64


class BlockHeaders:
    """The fixed-position fields of a block's rows, read with numpy, and which rows can take the fast
    path: one v9/IPFIX header followed by exactly one data set that ends the datagram (IPFIX: with a
    matching message length), optionally preceded by one template set (a refresh, checked against the
    decoder's state in the walk), or a v5 packet whose records are all there."""

    def __init__(
        self,
        data: np.ndarray,
        lengths: np.ndarray,
        source: np.ndarray,
        sources: Sequence[tuple[str, int]],
        received: float,
    ) -> None:
        n = len(lengths)
        self.data = data
        self.lengths = lengths
        self.source = source
        self.sources = sources
        self.port = np.array([port for _, port in sources], dtype=np.int64)
        self.received = received
        head = np.zeros((n, _ROW_HEADER), dtype=np.uint8)
        width = min(_ROW_HEADER, data.shape[1])
        head[:, :width] = data[:, :width]
        v9, ipfix, v5 = head.view(_V9_ROW).ravel(), head.view(_IPFIX_ROW).ravel(), head.view(_V5_ROW).ravel()
        length = lengths.astype(np.int64)
        version = v9["version"]
        is10 = (version == 10) & (ipfix["length"] == length)
        header = np.where(is10, 16, 20)
        set_id = np.where(is10, ipfix["set_id"], v9["set_id"]).astype(np.int64)
        set_len = np.where(is10, ipfix["set_len"], v9["set_len"]).astype(np.int64)
        is9 = (version == 9) & (length >= 24)
        is10 &= length >= 20
        ends = header + set_len == length
        data_only = (is9 | is10) & (set_id >= 256) & (set_len >= 4) & ends
        # [template set][data set]: where the second set starts, and its id and length.
        second = header + set_len
        refresh = ((is9 & (set_id == 0)) | (is10 & (set_id == 2))) & (set_len >= 4) & (second + 4 <= length)
        if refresh.any() and data.shape[1] >= _ROW_HEADER + 4:
            at = np.minimum(second, data.shape[1] - 4)[:, None] + np.arange(4)
            raw = data[np.arange(n)[:, None], at].astype(np.int64)
            id2, len2 = (raw[:, 0] << 8) | raw[:, 1], (raw[:, 2] << 8) | raw[:, 3]
            refresh &= (id2 >= 256) & (len2 >= 4) & (second + len2 == length)
        else:
            refresh[:] = False
            id2 = len2 = np.zeros(n, dtype=np.int64)
        is5 = (version == 5) & (length >= 24) & (v5["count"].astype(np.int64) * V5_RECORD + 24 <= length)
        version = version.astype(np.int64)
        self.kind = np.where(
            data_only, version, np.where(refresh, version + _REFRESH, np.where(is5, 5, _SLOW))
        )
        self.set_id = np.where(refresh, id2, set_id)
        self.size = np.where(is5, v5["count"], np.where(refresh, len2, set_len)).astype(np.int64)
        """v9/IPFIX: data set length; v5: record count."""
        self.offset = np.where(refresh, second, header) + 4
        """Where the records start in the row."""
        self.template_end = second
        """Refresh rows: where the template set ends (its body starts after the set header)."""
        engine = (v5["engine_type"].astype(np.int64) << 8) | v5["engine_id"]
        self.domain = np.where(is5, engine, np.where(is10, ipfix["domain"], v9["domain"])).astype(np.int64)
        self.seq = np.where(is5, v5["seq"], np.where(is10, ipfix["seq"], v9["seq"])).astype(np.int64)
        secs = np.where(is10, ipfix["export"], v9["secs"]).astype(np.int64)
        self.export_us = secs * 1_000_000 + np.where(is5, v5["nsecs"].astype(np.int64) // 1000, 0)
        self.uptime_ms = np.where(is10, -1, v9["uptime"].astype(np.int64))
        self.v5_rate = (v5["sampling"] & 0x3FFF).astype(np.int64)
        self.v5_rate[self.v5_rate == 0] = 1


PacketWalk = Callable[[bytes, str, int, float], None]
"""The per-packet walk of one datagram (payload, exporter, port, received); never raises."""


class BlockWalker:
    """Walks a block's rows in order over the decoder's shared state."""

    def __init__(
        self,
        stats: DecoderStats,
        streams: Streams,
        templates: TemplateStore,
        sampling: SamplingState,
        sequence: SequenceTracker,
        pending: PendingBuffer,
        budget: VariableRecordBudget,
        groups: RecordGroups,
    ) -> None:
        self.stats = stats
        self.streams = streams
        self.templates = templates
        self.sampling = sampling
        self.sequence = sequence
        self.pending = pending
        self.budget = budget
        self.groups = groups

    def walk(self, hdr: BlockHeaders, walk_packet: PacketWalk) -> None:
        """Rows in order: stretches of fast rows are handled with numpy (:meth:`_fast_rows`); any
        other row goes through the per-packet walk, which may change templates, sampling rates or
        system init times, so the next stretch starts new runs."""
        n = len(hdr.lengths)
        lens = hdr.lengths.tolist()

        def walk(row: int) -> None:
            exporter, port = hdr.sources[int(hdr.source[row])]
            walk_packet(hdr.data[row, : lens[row]].tobytes(), exporter, port, hdr.received)

        i, misses = 0, 0
        for stop in [*np.flatnonzero(hdr.kind == _SLOW).tolist(), n]:
            while i < stop:
                if misses >= _MISSES_BEFORE_WALK:
                    # Rows that look fast but are not (data for unknown templates, a flood of them
                    # perhaps): each try costs a stretch's fixed numpy work, so walk a few instead.
                    for row in range(i, min(stop, i + _WALK_AFTER_MISSES)):
                        walk(row)
                    i, misses = min(stop, i + _WALK_AFTER_MISSES), 0
                    continue
                start = i
                try:
                    i = self._fast_rows(hdr, i, stop)
                except Exception:  # as in decode(): count, go on with the next row
                    exporter = hdr.sources[int(hdr.source[i])][0]
                    log.exception("internal decoder error on a packet from %s", exporter)
                    self.stats.error(exporter, "internal_error")
                    i += 1
                    continue
                misses = misses + 1 if i == start else 0
                if i < stop:  # this row turned out to need the per-packet walk
                    walk(i)
                    i += 1
            if stop < n:
                walk(stop)
            i = stop + 1

    def _fast_rows(self, hdr: BlockHeaders, first: int, stop: int) -> int:
        """Rows ``first..stop-1`` passed the header checks. Take them up to the first one whose
        template is unknown (or options, or without addresses), whose template refresh is not a
        pure repeat, or whose variable-length records the exporter's budget would cut; count their
        packets, check their sequence numbers and append their records to new runs, exactly as the
        per-packet walk would. Returns where it stopped."""
        rows = slice(first, stop)
        kind = hdr.kind[rows]
        version = np.where(kind > _REFRESH, kind - _REFRESH, kind)
        domain = hdr.domain[rows]
        stream_key = (hdr.source[rows].astype(np.int64) << 36) | (version << 32) | domain
        keys, stream_of = _distinct(stream_key)
        streams = [
            self._block_stream(hdr.sources[k >> 36], k & 0xFFFFFFFF, (k >> 32) & 0xF) for k in keys.tolist()
        ]
        tkeys, template_of = _distinct(stream_of * 65536 + np.where(version == _FAST_V5, 0, hdr.set_id[rows]))
        templates: list[Template | None] = []
        for k in tkeys.tolist():
            tkey = streams[k >> 16][0]
            if tkey[3] == 5:
                templates.append(V5_TEMPLATE)
                continue
            table = self.templates.tables.get(tkey)
            t = table.get(k & 0xFFFF) if table is not None else None
            templates.append(None if t is None or t.options or not t.usable else t)
        end = stop - first
        unknown = np.flatnonzero(np.array([t is None for t in templates])[template_of])
        if len(unknown):
            end = int(unknown[0])
        refreshed = []
        for r in np.flatnonzero(kind[:end] > _REFRESH).tolist():
            known = self._refresh_of(streams[stream_of[r]][0], int(version[r]), hdr.data, first + r, hdr)
            if known is None:
                end = r
                break
            refreshed.append((r, known))
        first_row = _first_rows(stream_of[:end], len(streams))
        by_first_row = [0] if len(streams) == 1 else np.argsort(first_row, kind="stable").tolist()
        end = self._sequence_room(streams, first_row, by_first_row, end)
        stream_of, template_of, version = stream_of[:end], template_of[:end], version[:end]
        size = hdr.size[first : first + end]
        record_length = np.array([t.record_length or 1 if t is not None else 1 for t in templates])
        count = np.where(version == _FAST_V5, size, (size - 4) // record_length[template_of])
        if any(t is not None and t.variable for t in templates):
            end = self._variable_rows(hdr, first, streams, stream_of, templates, template_of, count)
            stream_of, template_of, version, count = (
                a[:end] for a in (stream_of, template_of, version, count)
            )
        if end == 0:
            return first
        for r, known in refreshed:
            if r < end:
                for t in known:
                    t.last_seen = max(t.last_seen, hdr.received)
        units = np.where(version == _FAST_V9, 1, count)
        packets = self.stats.packets
        per_stream = np.bincount(stream_of, minlength=len(streams)).tolist()
        spaces: dict[tuple[str, int, int], int] = {}  # sequence spaces, in order of first row
        space_of = np.zeros(len(streams), dtype=np.intp)
        for s in by_first_row:  # new per-stream state and counters in the order the walk creates them
            if not per_stream[s]:
                break  # the rest have no rows either
            tkey, _, pkey = streams[s]
            packets[pkey] = packets.get(pkey, 0) + per_stream[s]
            space_of[s] = spaces.setdefault((tkey[0], tkey[2], tkey[3]), len(spaces))
        self.sequence.check_runs(list(spaces), space_of[stream_of], hdr.seq[first : first + end], units)
        # One run per group key (templates of one layout share it, whatever their stream), in order
        # of first records.
        same: dict[int, int] = {}
        canonical = np.array(
            [same.setdefault(t.group_key if t is not None else 0, i) for i, t in enumerate(templates)]
        )
        has = np.flatnonzero(count > 0)
        for t in _distinct(template_of[has], values_only=True)[0].tolist():
            templates[t].last_used = hdr.received
        canonical = canonical[template_of]
        order, _ = _distinct(canonical[has], values_only=True)
        if len(order):
            context = self._stream_context(streams)
        for t in order.tolist():
            at = has[canonical[has] == t]
            tkey = streams[stream_of[at[0]]][0]
            run = Run(hdr, *context, rows=at + first, counts=count[at], stream=stream_of[at])
            self.groups.group(templates[t], (tkey[0], tkey[1], tkey[2])).pieces.append(run)
        return first + end

    def _variable_rows(
        self,
        hdr: BlockHeaders,
        first: int,
        streams: list[StreamEntry],
        stream_of: np.ndarray,
        templates: list[Template | None],
        template_of: np.ndarray,
        count: np.ndarray,
    ) -> int:
        """Count the records of the rows of variable-length templates (into ``count``), then take
        each exporter's from the budget it has left, as the per-packet walk would. Returns how many
        rows stay fast: the rest, from the first row the budget would cut (or whose exporter's new
        budget would evict another's), take the per-packet walk, which cuts and counts exactly."""
        from pipeline.decode.variable_length import count_sets

        end = len(stream_of)
        flat = hdr.data.reshape(-1)
        variable = np.zeros(end, dtype=bool)
        for t, template in enumerate(templates):
            if template is None or not template.variable:
                continue
            mine = np.flatnonzero(template_of == t)
            if not len(mine):
                continue
            variable[mine] = True
            rows = mine + first
            starts = rows * hdr.data.shape[1] + hdr.offset[rows]
            counts = np.empty(len(mine), dtype=np.int64)
            count_sets(flat, starts, starts + hdr.size[rows] - 4, template.runs, counts)
            count[mine] = counts
        rows = np.flatnonzero(variable)
        if not len(rows):
            return end
        names = [tkey[0] for tkey, _, _ in streams]
        exporter_of = np.unique(names, return_inverse=True)[1].ravel()[stream_of[rows]]
        spent = []
        for e in _distinct(exporter_of, values_only=True)[0].tolist():
            mine = rows[exporter_of == e]
            if mine[0] >= end:
                break
            name = names[int(stream_of[mine[0]])]
            if self.budget.would_evict(name):
                end = int(mine[0])
                break
            left = self.budget.left(name, hdr.received)
            over = np.flatnonzero(np.cumsum(count[mine]) >= left)
            if len(over):
                end = min(end, int(mine[over[0]]))
            spent.append((name, mine))
        for name, mine in spent:
            self.budget.spend(name, int(count[mine[mine < end]].sum()))
        return end

    def _sequence_room(
        self, streams: list[StreamEntry], first_row: np.ndarray, by_first_row: list[int], end: int
    ) -> int:
        """Rows up to the first whose new sequence space would evict another's at ``max_streams``:
        that row takes the per-packet walk, so evictions fall on the streams they would packet by
        packet (a run checks its packets at once, so it cannot interleave with an eviction)."""
        expected = self.sequence.expected
        room = self.sequence.max_streams - len(expected)
        if len(streams) <= room or end == 0:
            return end
        seen: set[tuple[str, int, int]] = set()
        for s in by_first_row:
            if first_row[s] >= end:
                break
            tkey = streams[s][0]
            skey = (tkey[0], tkey[2], tkey[3])
            if skey in expected or skey in seen:
                continue
            if len(seen) == room:
                return int(first_row[s])
            seen.add(skey)
        return end

    def _refresh_of(
        self, tkey: TemplateKey, version: int, data: np.ndarray, row: int, hdr: BlockHeaders
    ) -> tuple[Template, ...] | None:
        """The templates of a row's leading template set if it repeats byte for byte the last one
        this stream sent, they are still in place and nothing is pending for them: then all the
        per-packet walk would do is refresh their ``last_seen``. None: the row needs that walk."""
        known = self.templates.known_sets.get(tkey)
        if known is None:
            return None
        body, templates = known
        table = self.templates.tables.get(tkey)
        if table is None or any(table.get(tid) is not t for tid, t in templates):
            return None
        if self.pending.waiting(tkey, [tid for tid, _ in templates]):
            return None
        start = (IPFIX_HEADER.size if version == 10 else V9_HEADER.size) + 4
        if data[row, start : int(hdr.template_end[row])].tobytes() != body:
            return None
        return tuple(t for _, t in templates)

    def _block_stream(self, sender: tuple[str, int], domain: int, kind: int) -> StreamEntry:
        """(template key, 16-byte exporter, packet counter key) of one stream of a block."""
        exporter, port = sender
        if kind == _FAST_V5:
            return (exporter, 0, domain, 5), self.streams.ex16(exporter), (exporter, 5)
        return self.streams.entry(exporter, port, domain, kind)

    def _stream_context(self, streams: list[StreamEntry]) -> tuple[np.ndarray, ...]:
        """Per stream of a stretch: its version, system init time (-1: none), sampling rate (-1: per
        row from the header, NetFlow v5) and 16-byte exporter, as a :class:`Run` takes them."""
        version = np.array([tkey[3] for tkey, _, _ in streams], dtype=np.int64)
        v5 = version == 5
        sampling = self.sampling
        if sampling.rates:
            rate = np.array([sampling.default_rate(tkey[:3]) for tkey, _, _ in streams], dtype=np.int64)
        else:
            rate = np.ones(len(streams), dtype=np.int64)
        if sampling.sysinit:
            sysinit = np.array([sampling.sysinit.get(tkey[:3], -1) for tkey, _, _ in streams], dtype=np.int64)
        else:
            sysinit = np.full(len(streams), -1, dtype=np.int64)
        rate[v5], sysinit[v5] = -1, -1
        exporters = np.frombuffer(b"".join(ex16 for _, ex16, _ in streams), dtype=np.uint8).reshape(-1, 16)
        return version, sysinit, rate, exporters


def _first_rows(stream_of: np.ndarray, n: int) -> np.ndarray:
    """The first row of each of ``n`` streams (``len(stream_of)`` for one without rows): bounded
    per-stream maps evict, and counters fold, in the order the per-packet walk creates entries."""
    first_row = np.full(n, len(stream_of), dtype=np.intp)
    np.minimum.at(first_row, stream_of, np.arange(len(stream_of)))
    return first_row


def _distinct(keys: np.ndarray, values_only: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values of ``keys`` and each key's index among them (``values_only``: the values in
    order of first appearance, and no index). One comparison when all keys agree (the usual case)."""
    if len(keys) == 0 or (keys == keys[0]).all():
        return keys[:1], np.zeros(len(keys), dtype=np.intp)
    if values_only:
        values, first_at = np.unique(keys, return_index=True)
        return values[np.argsort(first_at)], np.empty(0, dtype=np.intp)
    values, index = np.unique(keys, return_inverse=True)
    return values, index.ravel()
