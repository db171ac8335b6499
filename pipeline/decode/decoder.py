"""NetFlow v5 / v9 / IPFIX decoder: datagrams in, one flow-schema record batch out.

Per packet, only headers and set boundaries are walked in Python. Data records are collected per
template across the whole datagram batch and decoded at once (``np.frombuffer`` with the template's
compiled dtype; an offsets pass first for variable-length templates). The decoder owns the template,
sampling and sequence state of every exporter, and never raises on input: each reject is counted by
reason in :attr:`stats` and the rest of the packet goes on.

:meth:`FlowDecoder.decode_block` is the collector's entry point: datagrams as rows of one 2-D buffer.
Their headers and first set are read for all rows at once with numpy; a row that is one header plus
one data set of a known fixed-length template (what a router sends nearly always) then costs a few
dict lookups, and its records are gathered straight from the buffer. Every other row takes the
per-packet walk, in order, so both entry points give the same flows and the same counters.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import logging
import os
import struct
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.decode import ies
from pipeline.decode.columns import (
    EARLIEST_US,
    Context,
    FieldArrays,
    FlowColumns,
    RowSpace,
    as_uint,
    build_batch,
    empty_batch,
    fill,
    has_address,
)
from pipeline.decode.datagram import DecoderConfig
from pipeline.decode.stats import DecoderStats
from pipeline.decode.templates import Field, Template, TemplateError, parse_template_set, variable_offsets
from pipeline.schemas import ip_to_bytes16

log = logging.getLogger(__name__)

_V5_HEADER = struct.Struct("!HHIIIIBBH")
_V9_HEADER = struct.Struct("!HHIIII")
_IPFIX_HEADER = struct.Struct("!HHIII")
_SET = struct.Struct("!HH")
_V5_RECORD = 48
# NetFlow v5's fixed record, expressed as a template so it shares the column path (IE 0 = padding).
V5_TEMPLATE = Template(
    0,
    tuple(
        Field(ie, n)
        for ie, n in (
            (8, 4),
            (12, 4),
            (15, 4),
            (10, 2),
            (14, 2),
            (2, 4),
            (1, 4),
            (22, 4),
            (21, 4),
            (7, 2),
            (11, 2),
            (0, 1),
            (6, 1),
            (4, 1),
            (5, 1),
            (16, 2),
            (17, 2),
            (9, 1),
            (13, 1),
            (0, 2),
        )
    ),
)

TemplateKey = tuple[str, int, int, int]  # exporter, port (or 0), domain, version
DomainKey = tuple[str, int, int]  # exporter, port (or 0), domain


@dataclass
class _Pending:
    data: bytes
    ctx: tuple
    received: float


@dataclass
class _Group:
    """Records of one template gathered from the current batch of datagrams, in arrival order: each
    piece is either ``(data, count, ctx)`` from the per-packet walk or a :class:`_Run` of block rows."""

    template: Template
    domain: DomainKey
    pieces: list = field(default_factory=list)


@dataclass
class _Run:
    """Fast rows of one template from one stretch of a block (no per-packet walk in between, so the
    decoder state they depend on, sampling and system init time, is the same for all of them). One
    template may serve several streams: NetFlow v5's for every exporter, a v9/IPFIX one for every
    source port when templates are not keyed by port."""

    block: _BlockHeaders
    version: int
    sysinit: int
    rate: int
    """-1: per row from the header (NetFlow v5)."""
    exporters: np.ndarray
    """(streams, 16) uint8: the 16-byte exporter of each stream of the stretch."""
    rows: np.ndarray
    counts: np.ndarray
    stream: np.ndarray
    """Per row: its stream (index into ``exporters``)."""


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
_UNUSED_SAVED = 1_024
"""Templates no data has used yet that :meth:`FlowDecoder.save_state` keeps (the most recent)."""
_MAX_SAMPLERS = 256
"""Sampler ids remembered per observation domain."""


class _BlockHeaders:
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
        is5 = (version == 5) & (length >= 24) & (v5["count"].astype(np.int64) * _V5_RECORD + 24 <= length)
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


class FlowDecoder:
    """Stateful decoder for all exporters seen by one collector."""

    def __init__(self, config: DecoderConfig | None = None) -> None:
        self.config = config or DecoderConfig()
        self.stats = DecoderStats(self.config.max_stat_exporters)
        self._templates: dict[TemplateKey, dict[int, Template]] = {}
        self._template_total = 0
        self._sampling: dict[DomainKey, dict[int, int]] = {}
        self._sysinit: dict[DomainKey, int] = {}
        self._sequence: dict[tuple[str, int, int], int | None] = {}
        self._pending: dict[tuple[TemplateKey, int], deque[_Pending]] = {}
        self._pending_load: dict[str, list[int]] = {}  # exporter -> [sets, bytes]; only while > 0
        self._pending_bytes = 0
        self._pending_sets = 0
        self._budget: dict[str, list[float]] = {}  # exporter -> [variable-length records left, at]
        self._exporter16: dict[str, bytes] = {}
        self._exporter_names: dict[bytes, str] = {}
        self._time_bounds = (EARLIEST_US, int(self.config.max_time_ahead_seconds * 1_000_000))
        self._groups: dict[int, _Group] = {}
        self._streams: dict[tuple[str, int, int, int], tuple[TemplateKey, bytes, tuple[str, int]]] = {}
        self._known_sets: dict[TemplateKey, tuple[bytes, tuple[tuple[int, Template], ...]]] = {}
        """Last fully applied template set of each stream (its body), and the templates it gave."""

    # -- public surface ----------------------------------------------------------------------------
    def decode(self, datagrams: Sequence[Any]) -> pa.RecordBatch:
        """Decode a batch of :class:`Datagram` (or same-shaped tuples). Never raises on bad input."""
        self._groups = {}
        for d in datagrams:
            self._safe_packet(d[0], d[1], d[2], d[3])
        batches = self._finish()
        if not batches:
            return empty_batch()
        if len(batches) == 1:
            return batches[0]
        return pa.Table.from_batches(batches).combine_chunks().to_batches(max_chunksize=None)[0]

    def decode_block(
        self,
        data: np.ndarray,
        lengths: np.ndarray,
        source: np.ndarray,
        sources: Sequence[tuple[str, int]],
        received: float,
        into: RowSpace | None = None,
    ) -> list[pa.RecordBatch]:
        """Decode datagrams held as rows of ``data`` ((n, width) uint8; row ``i`` is datagram ``i`` in
        its first ``lengths[i]`` bytes, sent by ``sources[source[i]]``, an (ip, port) pair), all
        received at ``received``. Same flows, order and counters as :meth:`decode` on the same
        datagrams, but one batch per template instead of one concatenated batch. With ``into``, the
        flows are written straight into the row space it hands out (the collector's batcher) and
        nothing is returned. ``data`` is not kept after the call. Never raises on bad input.
        """
        self._groups = {}
        if len(lengths):
            data = np.ascontiguousarray(data, dtype=np.uint8)
            self._walk_block(_BlockHeaders(data, lengths, source, sources, received))
        return self._finish(into)

    def _safe_packet(self, payload: bytes, exporter: str, port: int, received: float) -> None:
        try:
            self._packet(payload, exporter, port, received)
        except Exception:  # a decoder bug must not take the collector down: count and go on
            log.exception("internal decoder error on a packet from %s", exporter)
            self.stats.error(exporter, "internal_error")

    def _finish(self, into: RowSpace | None = None) -> list[pa.RecordBatch]:
        """One batch per template group of the current call (empty ones left out), or with ``into``
        every group written into the rows it hands out."""
        batches = []
        for group in self._groups.values():
            spans: list[tuple[FlowColumns, int, int]] = []
            try:
                fields, n, ctx = self._group_fields(group)
                if not n:
                    continue
                fields, n, ctx = self._usable_rows(fields, n, ctx)
                if not n:
                    continue
                if into is None:
                    batch, bad = build_batch(fields, n, ctx, self._time_bounds)
                    batches.append(batch)
                    self._count_bad_times(ctx, bad)
                else:
                    spans = into.reserve(n)
                    done = 0
                    for columns, at, count in spans:
                        f, c = (fields, ctx) if count == n else _rows_of(fields, ctx, done, done + count)
                        self._count_bad_times(c, fill(f, count, c, columns, at, self._time_bounds))
                        done += count
            except Exception:
                log.exception("internal decoder error building template %d", group.template.template_id)
                self.stats.error(group.domain[0], "internal_error")
                for columns, at, count in spans:  # rows handed out but not (all) filled
                    columns.discard(at, at + count)
                continue
            self._count_by_exporter(self.stats.flows, ctx.exporter)
        self._groups = {}
        return batches

    def _usable_rows(self, fields: FieldArrays, n: int, ctx: Context) -> tuple[FieldArrays, int, Context]:
        """Records without any address (all zero) give no usable flow: left out and counted. (Times out
        of range become null in :func:`fill`, counted by :meth:`_count_bad_times`.)"""
        keep = has_address(fields)
        if keep is not None and not keep.all():
            self._count_by_exporter(self.stats.rows_rejected, ctx.exporter[~keep], "no_address")
            fields, ctx = _select_rows(fields, ctx, keep)
            n = int(keep.sum())
        return fields, n, ctx

    def _count_bad_times(self, ctx: Context, bad: np.ndarray | None) -> None:
        if bad is not None:
            self._count_by_exporter(self.stats.rows_rejected, ctx.exporter[bad], "time_out_of_range")

    def _count_by_exporter(self, counter: Any, exporter: np.ndarray, reason: str | None = None) -> None:
        """Add each exporter's row count (rows as 16-byte exporter addresses) to ``counter``."""
        n = len(exporter)
        if not n:
            return
        if (exporter == exporter[0]).all():
            groups: list[tuple[bytes, int]] = [(exporter[0].tobytes(), n)]
        else:
            values, counts = np.unique(exporter.view(np.dtype((np.void, 16))).ravel(), return_counts=True)
            groups = [(v.tobytes(), int(c)) for v, c in zip(values, counts, strict=True)]
        for raw, count in groups:
            name = self._exporter_names.get(raw) or _ip_text(raw)
            counter[name if reason is None else (name, reason)] += count

    def _walk_block(self, hdr: _BlockHeaders) -> None:
        """Rows in order: stretches of fast rows are handled with numpy (:meth:`_fast_rows`); any
        other row goes through the per-packet walk, which may change templates, sampling rates or
        system init times, so the next stretch starts new runs."""
        n = len(hdr.lengths)
        lens = hdr.lengths.tolist()

        def walk(row: int) -> None:
            exporter, port = hdr.sources[int(hdr.source[row])]
            self._safe_packet(hdr.data[row, : lens[row]].tobytes(), exporter, port, hdr.received)

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

    def _fast_rows(self, hdr: _BlockHeaders, first: int, stop: int) -> int:
        """Rows ``first..stop-1`` passed the header checks. Take them up to the first one whose
        template is unknown (or options, or variable-length) or whose template refresh is not a pure
        repeat; count their packets, check their sequence numbers and append their records to new
        runs, exactly as the per-packet walk would. Returns where it stopped."""
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
            table = self._templates.get(tkey)
            t = table.get(k & 0xFFFF) if table is not None else None
            templates.append(None if t is None or t.options or t.variable or not t.usable else t)
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
            refreshed.append(known)
        if end == 0:
            return first
        for known in refreshed:
            for t in known:
                t.last_seen = max(t.last_seen, hdr.received)
        stream_of, template_of, version = stream_of[:end], template_of[:end], version[:end]
        size = hdr.size[first : first + end]
        record_length = np.array([t.record_length if t is not None else 1 for t in templates])[template_of]
        count = np.where(version == _FAST_V5, size, (size - 4) // record_length)
        units = np.where(version == _FAST_V9, 1, count)
        packets = self.stats.packets
        per_stream = np.bincount(stream_of, minlength=len(streams)).tolist()
        by_sequence: dict[tuple[str, int, int], list[int]] = {}
        for s, (tkey, _, pkey) in enumerate(streams):
            if per_stream[s]:
                packets[pkey] = packets.get(pkey, 0) + per_stream[s]
                by_sequence.setdefault((tkey[0], tkey[2], tkey[3]), []).append(s)
        seq = hdr.seq[first : first + end]
        for skey, members in by_sequence.items():
            mine = stream_of == members[0] if len(members) == 1 else np.isin(stream_of, members)
            self._sequence_run(skey, seq[mine], units[mine])
        # One run per template object (streams may share one), in order of first records.
        same: dict[int, int] = {}
        canonical = np.array([same.setdefault(id(t), i) for i, t in enumerate(templates)])[template_of]
        has = np.flatnonzero(count > 0)
        order, _ = _distinct(canonical[has], values_only=True)
        exporters = np.frombuffer(b"".join(ex16 for _, ex16, _ in streams), dtype=np.uint8).reshape(-1, 16)
        for t in order.tolist():
            at = has[canonical[has] == t]
            self._new_run(
                hdr,
                templates[t],
                streams[stream_of[at[0]]][0],
                self._groups,
                exporters=exporters,
                rows=at + first,
                counts=count[at],
                stream=stream_of[at],
            )
        return first + end

    def _sequence_run(self, skey: tuple[str, int, int], seq: np.ndarray, units: np.ndarray) -> None:
        """:meth:`_check_sequence` over consecutive packets of one sequence space at once."""
        expected = np.empty_like(seq)
        expected[1:] = (seq[:-1] + units[:-1]) & 0xFFFFFFFF
        previous = self._sequence.get(skey)
        expected[0] = seq[0] if previous is None else previous
        diff = (seq - expected) & 0xFFFFFFFF
        lost = int(diff[diff < 0x80000000].sum())
        resets = int(np.count_nonzero(diff >= 0x80000000))
        exporter, domain = skey[0], skey[1]
        if lost:
            self.stats.sequence_gaps[(exporter, domain)] += lost
        if resets:
            self.stats.sequence_resets[(exporter, domain)] += resets
        self._put_stream(self._sequence, skey, int((seq[-1] + units[-1]) & 0xFFFFFFFF))

    def _refresh_of(
        self, tkey: TemplateKey, version: int, data: np.ndarray, row: int, hdr: _BlockHeaders
    ) -> tuple[Template, ...] | None:
        """The templates of a row's leading template set if it repeats byte for byte the last one
        this stream sent, they are still in place and nothing is pending for them: then all the
        per-packet walk would do is refresh their ``last_seen``. None: the row needs that walk."""
        known = self._known_sets.get(tkey)
        if known is None:
            return None
        body, templates = known
        table = self._templates.get(tkey)
        if table is None or any(table.get(tid) is not t for tid, t in templates):
            return None
        if self._pending and any((tkey, tid) in self._pending for tid, _ in templates):
            return None
        start = (_IPFIX_HEADER.size if version == 10 else _V9_HEADER.size) + 4
        if data[row, start : int(hdr.template_end[row])].tobytes() != body:
            return None
        return tuple(t for _, t in templates)

    def _block_stream(self, sender: tuple[str, int], domain: int, kind: int) -> tuple:
        """(template key, 16-byte exporter, packet counter key) of one stream of a block."""
        exporter, port = sender
        if kind == _FAST_V5:
            return (exporter, 0, domain, 5), self._ex16(exporter), (exporter, 5)
        tkey, ex16, pkey = self._stream_key(exporter, port, domain, kind)
        return tkey, ex16, pkey

    def _new_run(
        self, hdr: _BlockHeaders, template: Template, tkey: TemplateKey, groups: dict, **rows: Any
    ) -> _Run:
        """A run for ``template``, appended to its group (created first if need be, keyed by the
        domain of the run's first row, as the per-packet walk does)."""
        dkey = (tkey[0], tkey[1], tkey[2])
        if tkey[3] == 5:
            run = _Run(hdr, 5, -1, -1, **rows)
        else:
            rate = self._default_rate(dkey) if self._sampling else 1
            sysinit = self._sysinit.get(dkey, -1) if self._sysinit else -1
            run = _Run(hdr, tkey[3], sysinit, rate, **rows)
        template.last_used = hdr.received
        group = groups.get(id(template))
        if group is None:
            group = groups[id(template)] = _Group(template, dkey)
        group.pieces.append(run)
        return run

    def expire(self, now: float) -> None:
        """Forget templates not refreshed within the TTL and pending sets older than their TTL."""
        ttl = self.config.template_ttl_seconds
        for tkey, table in list(self._templates.items()):
            for tid, tpl in list(table.items()):
                if now - tpl.last_seen > ttl:
                    self._remove_template(tkey, tid)
        for pkey, queue in list(self._pending.items()):
            while queue and now - queue[0].received > self.config.pending_ttl_seconds:
                self._drop_pending(pkey, queue.popleft())
            if not queue:
                del self._pending[pkey]

    def save_state(self, path: str | Path) -> None:
        """Persist templates, sampling rates and system init times (JSON, written atomically).
        Templates data used are all kept; of those no data used yet (a template-only capture file, or
        a spoofed flood) only the ``_UNUSED_SAVED`` last seen, so a flood does not slow a restart."""
        every = [(k, t) for k, table in self._templates.items() for t in table.values()]
        unused = sorted(
            (item for item in every if not item[1].last_used), key=lambda item: -item[1].last_seen
        )
        kept = [item for item in every if item[1].last_used] + unused[:_UNUSED_SAVED]
        state = {
            "format": 1,
            "templates": [{"key": list(k), "template": t.to_json()} for k, t in kept],
            "sampling": [
                [*k, sid, rate] for k, table in self._sampling.items() for sid, rate in table.items()
            ],
            "sysinit": [[*k, v] for k, v in self._sysinit.items()],
        }
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, path)

    def load_state(self, path: str | Path) -> None:
        state = json.loads(Path(path).read_text())
        if not isinstance(state, dict) or state.get("format") != 1:
            raise ValueError("not a decoder state file (format 1)")
        # Saved by an older version or edited by hand: every entry passes the checks a packet's
        # would, one bad entry is skipped (logged) and the rest restored, within the same caps.
        now, skipped = time.time(), 0
        for item in state.get("templates", []):
            try:
                exporter, port, domain, version = item["key"]
                tkey = (str(exporter), int(port), int(domain), int(version))
                self._add_template(tkey, Template.from_json(item["template"]))
            except (TypeError, ValueError, KeyError):
                skipped += 1
        for entry in state.get("sampling", []):
            try:
                exporter, port, domain, sid, rate = entry
                dkey = (str(exporter), int(port), int(domain))
                if self._options_out_of_range(None, int(rate), now) or int(rate) < 1:
                    raise ValueError(rate)
                self._set_rate(dkey, int(sid), int(rate))
            except (TypeError, ValueError):
                skipped += 1
        for entry in state.get("sysinit", []):
            try:
                exporter, port, domain, value = entry
                if self._options_out_of_range(int(value), None, now):
                    raise ValueError(value)
                self._put_stream(self._sysinit, (str(exporter), int(port), int(domain)), int(value))
            except (TypeError, ValueError):
                skipped += 1
        if skipped:
            log.warning("decoder state %s: %d invalid entries skipped", path, skipped)

    # -- packets -----------------------------------------------------------------------------------
    def _packet(self, payload: bytes, exporter: str, port: int, received: float) -> None:
        if len(payload) < 4:
            self.stats.error(exporter, "short_packet")
            return
        version = (payload[0] << 8) | payload[1]
        if version == 5:
            self._v5(payload, exporter, port, received)
        elif version == 9:
            self._v9(payload, exporter, port, received)
        elif version == 10:
            self._ipfix(payload, exporter, port, received)
        else:
            self.stats.error(exporter, "unknown_version")

    def _v5(self, payload: bytes, exporter: str, port: int, received: float) -> None:
        if len(payload) < _V5_HEADER.size:
            self.stats.error(exporter, "short_packet")
            return
        _, count, uptime, secs, nsecs, seq, engine_type, engine_id, sampling = _V5_HEADER.unpack_from(payload)
        self.stats.packets[(exporter, 5)] += 1
        domain = (engine_type << 8) | engine_id
        available = (len(payload) - _V5_HEADER.size) // _V5_RECORD
        if count > available:
            self.stats.error(exporter, "records_truncated")
            count = available
        self._check_sequence(exporter, domain, 5, seq, count)
        if not count:
            return
        rate = sampling & 0x3FFF or 1
        dkey = (exporter, 0, domain)
        ctx = (
            self._ex16(exporter),
            port,
            domain,
            5,
            received,
            secs * 1_000_000 + nsecs // 1000,
            uptime,
            -1,
            rate,
        )
        data = memoryview(payload)[_V5_HEADER.size : _V5_HEADER.size + count * _V5_RECORD]
        self._add_records(V5_TEMPLATE, dkey, data, count, ctx)

    def _v9(self, payload: bytes, exporter: str, port: int, received: float) -> None:
        if len(payload) < _V9_HEADER.size:
            self.stats.error(exporter, "short_packet")
            return
        _, _count, uptime, secs, seq, source_id = _V9_HEADER.unpack_from(payload)
        tkey, ex16 = self._stream(exporter, port, source_id, 9)
        self._check_sequence(exporter, source_id, 9, seq, 1)
        ctx = (ex16, port, source_id, 9, received, secs * 1_000_000, uptime, -1)
        self._sets(payload, _V9_HEADER.size, len(payload), tkey, ctx, received, ipfix=False)

    def _ipfix(self, payload: bytes, exporter: str, port: int, received: float) -> None:
        if len(payload) < _IPFIX_HEADER.size:
            self.stats.error(exporter, "short_packet")
            return
        _, length, export_time, seq, domain = _IPFIX_HEADER.unpack_from(payload)
        tkey, ex16 = self._stream(exporter, port, domain, 10)
        if length < _IPFIX_HEADER.size:
            self.stats.error(exporter, "bad_message_length")
            return
        if length > len(payload):
            self.stats.error(exporter, "message_truncated")
        elif length < len(payload):
            # Some encoders (scapy among them) leave the final set's padding out of the message
            # length; nfdump accepts such messages, so sets are bounded by the datagram instead.
            self.stats.error(exporter, "length_mismatch")
        end = len(payload)
        ctx = (ex16, port, domain, 10, received, export_time * 1_000_000, -1, -1)
        records = self._sets(payload, _IPFIX_HEADER.size, end, tkey, ctx, received, ipfix=True)
        self._check_sequence(exporter, domain, 10, seq, records)

    def _sets(
        self, payload: bytes, pos: int, end: int, tkey: TemplateKey, ctx: tuple, received: float, ipfix: bool
    ) -> int | None:
        """Walk the sets of one message. Returns the data records seen (None if some could not be
        counted because their template is unknown) for IPFIX sequence accounting."""
        exporter = tkey[0]
        records: int | None = 0
        view = memoryview(payload)
        template_set, options_set = (2, 3) if ipfix else (0, 1)
        templates = self._templates.get(tkey)
        full: tuple | None = None  # per-record context, built once per packet when first needed
        while end - pos >= 4:
            set_id, length = _SET.unpack_from(payload, pos)
            if length < 4 or pos + length > end:
                self.stats.error(exporter, "set_overrun")
                break
            start = pos + 4
            pos += length
            if set_id >= 256:
                template = templates.get(set_id) if templates is not None else None
                if template is not None and template.usable and not template.variable:
                    # Hot path: a fixed-length data set is just appended to its template's group.
                    template.last_used = received
                    count = (length - 4) // template.record_length
                    if count:
                        if full is None:
                            dkey = (tkey[0], tkey[1], tkey[2])
                            rate = self._default_rate(dkey) if self._sampling else 1
                            full = (*ctx[:7], self._sysinit.get(dkey, -1) if self._sysinit else -1, rate)
                        group = self._groups.get(id(template))
                        if group is None:
                            group = self._groups[id(template)] = _Group(template, (tkey[0], tkey[1], tkey[2]))
                        group.pieces.append(
                            (view[start : start + count * template.record_length], count, full)
                        )
                    if records is not None:
                        records += count
                    continue
                n = self._data_set(view[start:pos], set_id, tkey, ctx, received)
                records = None if n is None or records is None else records + n
            elif set_id in (template_set, options_set):
                self._template_set(bytes(view[start:pos]), tkey, received, ipfix, set_id == options_set, ctx)
                templates = self._templates.get(tkey)
            else:
                self.stats.error(exporter, "reserved_set_id")
        if end - pos > 0 and end - pos < 4 and any(payload[pos:end]):
            self.stats.error(exporter, "trailing_bytes")
        return records

    # -- templates ---------------------------------------------------------------------------------
    def _template_set(
        self, body: bytes, tkey: TemplateKey, received: float, ipfix: bool, options: bool, ctx: tuple
    ) -> None:
        exporter = tkey[0]
        try:
            items = parse_template_set(body, ipfix, options, self.config.max_fields_per_template)
        except TemplateError as exc:
            self.stats.error(exporter, exc.reason)
            return
        added = not options
        for item in items:
            if isinstance(item, int):
                self._withdraw(tkey, item, options)
                added = False
                continue
            item.last_seen = received
            if self._add_template(tkey, item):
                self._drain_pending(tkey, item.template_id)
            else:
                added = False
        # Remember a plain template set that fully took effect: the block path recognises its repeats.
        ids = [item.template_id for item in items if not isinstance(item, int)]
        if added and ids and len(set(ids)) == len(ids):
            if len(self._known_sets) > 65536:
                self._known_sets.clear()
            table = self._templates.get(tkey, {})
            if all(tid in table for tid in ids):
                self._known_sets[tkey] = (body, tuple((tid, table[tid]) for tid in ids))

    def _add_template(self, tkey: TemplateKey, template: Template) -> bool:
        """Keep ``template`` for its stream. A stream over its own cap is refused (its templates, no
        one else's); at the global cap the least recently used templates of all streams go first."""
        exporter = tkey[0]
        table = self._templates.get(tkey)
        old = table.get(template.template_id) if table is not None else None
        if old is not None and old.same_layout(template):
            old.last_seen = max(old.last_seen, template.last_seen)
            return True
        if old is None:
            if table is not None and len(table) >= self.config.max_templates_per_exporter:
                self.stats.error(exporter, "template_limit")
                return False
            if self._template_total >= self.config.max_templates:
                self._evict_templates()
            self._template_total += 1
            active = self.stats.templates_active
            active[exporter] = active.get(exporter, 0) + 1
        self._templates.setdefault(tkey, {})[template.template_id] = template
        return True

    def _evict_templates(self) -> None:
        """Make room under ``max_templates``: drop a sixteenth, templates no data ever used first
        (what a spoofed template flood leaves), then the least recently used by data, so a router
        whose data keeps coming keeps its templates; one sort per many templates, not a scan each."""
        every = sorted(
            (
                (t.last_used, t.last_seen, tkey, tid)
                for tkey, table in self._templates.items()
                for tid, t in table.items()
            ),
            key=lambda item: (item[0], item[1]),
        )
        target = max(1, self.config.max_templates // 16)
        for _, _, tkey, tid in every[: max(target, self._template_total - self.config.max_templates + 1)]:
            self._remove_template(tkey, tid)
            self.stats.evictions["templates"] += 1

    def _withdraw(self, tkey: TemplateKey, template_id: int, options: bool) -> None:
        table = self._templates.get(tkey, {})
        if template_id in (2, 3):  # withdraw all templates (or all options templates)
            for tid in [t for t, tpl in table.items() if tpl.options == options]:
                self._remove_template(tkey, tid)
        elif template_id in table:
            self._remove_template(tkey, template_id)
        else:
            self.stats.error(tkey[0], "withdrawal_unknown_template")

    def _remove_template(self, tkey: TemplateKey, template_id: int) -> None:
        table = self._templates[tkey]
        del table[template_id]
        if not table:
            del self._templates[tkey]
            self._known_sets.pop(tkey, None)
        self._template_total -= 1
        active = self.stats.templates_active
        active[tkey[0]] -= 1
        if not active[tkey[0]] and len(active) > self.config.max_stat_exporters:
            del active[tkey[0]]  # the gauge shows 0 for a while, but spoofed sources do not pile up

    # -- data --------------------------------------------------------------------------------------
    def _data_set(
        self, body: memoryview, set_id: int, tkey: TemplateKey, ctx: tuple, received: float
    ) -> int | None:
        template = self._templates.get(tkey, {}).get(set_id)
        if template is None:
            self._buffer_pending(tkey, set_id, bytes(body), ctx, received)
            return None
        return self._apply(template, tkey, body, ctx)

    def _apply(self, template: Template, tkey: TemplateKey, body: memoryview | bytes, ctx: tuple) -> int:
        dkey = (tkey[0], tkey[1], tkey[2])
        template.last_used = ctx[4]
        if template.options:
            return self._options_data(template, dkey, body, ctx[4])
        if not template.usable:  # no address field: no flow can come out, so nothing is read
            self.stats.error(tkey[0], "no_address_set")
            return len(body) // template.record_length if template.record_length else None
        full = (*ctx[:7], self._sysinit.get(dkey, -1), self._default_rate(dkey))
        if template.variable:
            limit = self._variable_budget(tkey[0], ctx[4])
            starts, _, used = variable_offsets(template, bytes(body), limit)
            self._budget[tkey[0]][0] -= len(starts)
            if len(starts) == limit and any(bytes(body[used:])):
                self.stats.error(tkey[0], "variable_budget")  # the rest of this set is not read
            if len(starts):
                self._add_records(template, dkey, bytes(body[:used]), len(starts), full, starts)
            return len(starts)
        count = len(body) // template.record_length
        if count:
            self._add_records(template, dkey, body[: count * template.record_length], count, full)
        return count

    def _variable_budget(self, exporter: str, now: float) -> int:
        """Variable-length records ``exporter`` may still have walked (token bucket refilled at
        ``variable_records_per_second``, holding at most one second's worth)."""
        rate = self.config.variable_records_per_second
        bucket = self._budget.get(exporter)
        if bucket is None:
            bucket = [float(rate), now]
            self._put_stream(self._budget, exporter, bucket)
        bucket[0] = min(float(rate), bucket[0] + max(0.0, now - bucket[1]) * rate)
        bucket[1] = max(bucket[1], now)
        return max(0, int(bucket[0]))

    def _add_records(
        self, template: Template, dkey: DomainKey, data: Any, count: int, ctx: tuple, starts: Any = None
    ) -> None:
        group = self._groups.get(id(template))
        if group is None:
            group = self._groups[id(template)] = _Group(template, dkey)
        group.pieces.append((data, count, ctx) if starts is None else (data, count, ctx, starts))

    def _fields(self, template: Template, data: bytes, starts: Any = None) -> tuple[FieldArrays, int]:
        """Decode records of one template: one frombuffer, or offsets-then-gather when variable
        (``starts``: the offsets when already walked)."""
        if not template.variable:
            usable = len(data) - len(data) % template.record_length  # sets may end in padding
            rec = np.frombuffer(data, dtype=template.dtype, count=usable // template.record_length)
            return {ie: rec[name] for ie, name in template.names.items()}, len(rec)
        if starts is None:
            starts, _, _ = variable_offsets(template, data)
        raw = np.frombuffer(data, dtype=np.uint8)
        out: FieldArrays = {}
        for j, f in enumerate(template.fields):
            if f.ie in template.names and f.ie not in out and f.length != 65535 and f.mapped:
                idx = starts[:, j][:, None] + np.arange(f.length)
                out[f.ie] = raw[idx] if len(starts) else np.zeros((0, f.length), np.uint8)
        return out, len(starts)

    def _group_fields(self, group: _Group) -> tuple[FieldArrays, int, Context | None]:
        """A template group's records as field arrays, their count and their packet context."""
        template = group.template
        if template.variable:  # only the per-packet walk feeds variable-length templates
            pieces, counts = [], []
            for piece in group.pieces:
                fields, n = self._fields(template, bytes(piece[0]), piece[3] if len(piece) > 3 else None)
                pieces.append(fields)
                counts.append(n)
            n = sum(counts)
            fields = {ie: np.concatenate([p[ie] for p in pieces]) for ie in pieces[0]} if pieces else {}
            contexts = [_packet_context(counts, [p[2] for p in group.pieces], n)] if n else []
        else:
            chunks: list[Any] = []
            contexts = []
            packed: list[tuple] = []
            for piece in [*group.pieces, None]:
                if isinstance(piece, tuple):
                    packed.append(piece)
                    continue
                if packed:  # consecutive per-packet pieces: one join, context as the walk saw it
                    counts = [c for _, c, _ in packed]
                    chunks.extend(part for part, _, _ in packed)
                    contexts.append(_packet_context(counts, [c for _, _, c in packed], sum(counts)))
                    packed = []
                if piece is not None:
                    records, context = _gather_run(piece, template.record_length)
                    chunks.append(records)
                    contexts.append(context)
            fields, n = self._fields(template, chunks[0] if len(chunks) == 1 else b"".join(chunks))
        if n == 0:
            return fields, 0, None
        if len(contexts) == 1:
            columns = contexts[0]
        else:
            columns = [np.concatenate(parts) for parts in zip(*contexts, strict=True)]
        ctx = Context(*columns)
        self._record_sampling(fields, group.domain, ctx)
        return fields, n, ctx

    # -- sampling ----------------------------------------------------------------------------------
    def _default_rate(self, dkey: DomainKey) -> int:
        table = self._sampling.get(dkey)
        if not table:
            return 1
        if 0 in table:
            return table[0]
        return next(iter(table.values())) if len(table) == 1 else 1

    def _record_sampling(self, fields: FieldArrays, dkey: DomainKey, ctx: Context) -> None:
        """Rates carried by the data records themselves (Huawei IE 34), or their sampler id's rate."""
        for ie in (ies.SAMPLING_INTERVAL, ies.SAMPLER_RANDOM_INTERVAL):
            if ie in fields:
                rate = as_uint(fields[ie])
                ctx.sampling = np.where(rate > 0, np.minimum(rate, 0xFFFFFFFF), ctx.sampling).astype(
                    np.uint32
                )
                return
        for ie in (ies.SAMPLER_ID, ies.SELECTOR_ID):
            if ie in fields:
                table = self._sampling.get(dkey, {})
                ids = as_uint(fields[ie])
                for sid in np.unique(ids):
                    if int(sid) in table:
                        ctx.sampling[ids == sid] = table[int(sid)]
                return

    def _options_data(self, template: Template, dkey: DomainKey, body: Any, received: float) -> int:
        """Sampling rates and system init times from options records. A record with a value out of
        range is rejected whole (counted by reason) and changes no state: state outlives the packet,
        and one forged record must not break every later flow of its exporter."""
        fields, n = self._fields(template, bytes(body))
        values = {ie: as_uint(v) for ie, v in fields.items()}
        for i in range(n):
            rec = {ie: int(v[i]) for ie, v in values.items()}
            sysinit = rec.get(ies.SYSTEM_INIT_MS)
            rate = rec.get(ies.SAMPLING_INTERVAL) or rec.get(ies.SAMPLER_RANDOM_INTERVAL)
            if not rate and rec.get(ies.SAMPLING_PACKET_INTERVAL):
                interval = rec[ies.SAMPLING_PACKET_INTERVAL]
                rate = round((interval + rec.get(ies.SAMPLING_PACKET_SPACE, 0)) / interval)
            sid = rec.get(ies.SAMPLER_ID, rec.get(ies.SELECTOR_ID, 0))
            reason = self._options_out_of_range(sysinit, rate, received)
            if reason:
                self.stats.rows_rejected[(dkey[0], reason)] += 1
                continue
            if sysinit is not None:
                self._put_stream(self._sysinit, dkey, sysinit)
            if rate:
                self._set_rate(dkey, sid, rate)
        return n

    def _options_out_of_range(self, sysinit: int | None, rate: int | None, received: float) -> str:
        """Why option values cannot be true ('' if they can): a system init time before 1990 or
        after reception (plus the allowed clock skew), a sampling rate beyond 32 bits."""
        if sysinit is not None and not (
            EARLIEST_US // 1000 <= sysinit <= (received + self.config.max_time_ahead_seconds) * 1000
        ):
            return "options_sysinit_out_of_range"
        if rate is not None and not 0 <= rate <= 0xFFFFFFFF:
            return "options_sampling_out_of_range"
        return ""

    def _set_rate(self, dkey: DomainKey, sampler: int, rate: int) -> None:
        table = self._sampling.get(dkey)
        if table is None:
            table = {}
            self._put_stream(self._sampling, dkey, table)
        if sampler not in table and len(table) >= _MAX_SAMPLERS:
            self.stats.rows_rejected[(dkey[0], "sampler_limit")] += 1
            return
        table[sampler] = rate

    def _put_stream(self, state: dict, key: Any, value: Any) -> None:
        """Set per-stream state, evicting the oldest stream's (counted) at ``max_streams``."""
        if key not in state and len(state) >= self.config.max_streams:
            del state[next(iter(state))]
            self.stats.evictions["streams"] += 1
        state[key] = value

    # -- pending (data before template) ------------------------------------------------------------
    def _buffer_pending(
        self, tkey: TemplateKey, set_id: int, data: bytes, ctx: tuple, received: float
    ) -> None:
        exporter = tkey[0]
        self.stats.template_misses[exporter] += 1
        load = self._pending_load.get(exporter, (0, 0))
        cfg = self.config
        if (
            load[0] >= cfg.pending_max_sets_per_exporter
            or load[1] + len(data) > cfg.pending_max_bytes_per_exporter
            or self._pending_bytes + len(data) > cfg.pending_max_bytes
            or self._pending_sets >= cfg.pending_max_sets
        ):
            self.stats.error(exporter, "pending_limit")
            self.stats.pending_expired[exporter] += 1
            return
        self._pending.setdefault((tkey, set_id), deque()).append(_Pending(data, ctx, received))
        self._pending_account(exporter, 1, len(data))
        self.stats.pending_buffered[exporter] += 1

    def _pending_account(self, exporter: str, sets: int, size: int) -> None:
        """Add to an exporter's pending load (and the global one); an exporter whose load falls to
        zero leaves the table, so spoofed sources leave nothing behind."""
        load = self._pending_load.get(exporter)
        if load is None:
            load = self._pending_load[exporter] = [0, 0]
        load[0] += sets
        load[1] += size
        self._pending_bytes += size
        self._pending_sets += sets
        if load[0] <= 0:
            del self._pending_load[exporter]

    def _drain_pending(self, tkey: TemplateKey, template_id: int) -> None:
        queue = self._pending.pop((tkey, template_id), None)
        if not queue:
            return
        template = self._templates[tkey][template_id]
        for item in queue:
            self._pending_account(tkey[0], -1, -len(item.data))
            self._apply(template, tkey, item.data, item.ctx)
            self.stats.pending_decoded[tkey[0]] += 1

    def _drop_pending(self, pkey: tuple[TemplateKey, int], item: _Pending) -> None:
        exporter = pkey[0][0]
        self._pending_account(exporter, -1, -len(item.data))
        self.stats.pending_expired[exporter] += 1

    # -- sequence numbers --------------------------------------------------------------------------
    def _check_sequence(self, exporter: str, domain: int, version: int, seq: int, units: int | None) -> None:
        """v5 counts flows, v9 export packets, IPFIX data records (RFC 7011 §3.1). A forward jump is
        loss; a backward one is an exporter restart or reordering (a reset)."""
        key = (exporter, domain, version)
        expected = self._sequence.get(key)
        if expected is not None:
            diff = (seq - expected) & 0xFFFFFFFF
            if diff and diff < 0x80000000:
                self.stats.sequence_gaps[(exporter, domain)] += diff
            elif diff:
                self.stats.sequence_resets[(exporter, domain)] += 1
        self._put_stream(self._sequence, key, None if units is None else (seq + units) & 0xFFFFFFFF)

    def _stream(self, exporter: str, port: int, domain: int, version: int) -> tuple[TemplateKey, bytes]:
        """Template key and 16-byte exporter of one export stream, cached: the per-packet path then
        costs one dict lookup. Also counts the packet."""
        cached = self._stream_key(exporter, port, domain, version)
        packets = self.stats.packets
        packets[cached[2]] = packets.get(cached[2], 0) + 1
        return cached[0], cached[1]

    def _stream_key(
        self, exporter: str, port: int, domain: int, version: int
    ) -> tuple[TemplateKey, bytes, tuple[str, int]]:
        skey = (exporter, port, domain, version)
        cached = self._streams.get(skey)
        if cached is None:
            if len(self._streams) > 65536:
                self._streams.clear()
            tkey = (exporter, port if self.config.template_key_includes_port else 0, domain, version)
            cached = self._streams[skey] = (tkey, self._ex16(exporter), (exporter, version))
        return cached

    def _ex16(self, exporter: str) -> bytes:
        raw = self._exporter16.get(exporter)
        if raw is None:
            try:
                raw = ip_to_bytes16(exporter)
            except ValueError:
                raw = bytes(16)
            if len(self._exporter16) > 65536:
                self._exporter16.clear()
                self._exporter_names.clear()
            self._exporter16[exporter] = raw
            self._exporter_names[raw] = exporter
        return raw


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


def _packet_context(counts: list[int], ctxs: list[tuple], n: int) -> list[np.ndarray]:
    """Per-record :class:`Context` columns of per-packet pieces (``ctx`` tuples as the walk builds
    them, ``counts`` records each)."""
    cols = list(zip(*ctxs, strict=True))
    counts_arr = np.asarray(counts)

    def rep(i: int, dtype: Any) -> np.ndarray:
        values = cols[i]
        if values.count(values[0]) == len(values):  # usually constant across a template's group
            return np.full(n, values[0], dtype=dtype)
        return np.repeat(np.asarray(values, dtype=dtype), counts_arr)

    exporters = cols[0]
    if exporters.count(exporters[0]) == len(exporters):
        exporter = np.frombuffer(exporters[0] * n, dtype=np.uint8).reshape(n, 16)
    else:
        exporter = np.repeat(
            np.frombuffer(b"".join(exporters), dtype=np.uint8).reshape(-1, 16), counts_arr, axis=0
        )
    received = np.repeat((np.asarray(cols[4], dtype=np.float64) * 1e6).astype(np.int64), counts_arr)
    return [
        exporter,
        rep(1, np.uint16),
        rep(2, np.uint32),
        rep(3, np.uint8),
        received,
        rep(5, np.int64),
        rep(6, np.int64),
        rep(7, np.int64),
        rep(8, np.uint32),
    ]


def _select_rows(fields: FieldArrays, ctx: Context, keep: np.ndarray) -> tuple[FieldArrays, Context]:
    """The records where ``keep`` is set (copies)."""
    part = {ie: values[keep] for ie, values in fields.items()}
    return part, Context(*(getattr(ctx, f.name)[keep] for f in dataclasses.fields(ctx)))


def _ip_text(raw: bytes) -> str:
    """Text of a 16-byte exporter address (IPv4-mapped shown as IPv4)."""
    address = ipaddress.IPv6Address(raw)
    return str(address.ipv4_mapped or address)


def _rows_of(fields: FieldArrays, ctx: Context, lo: int, hi: int) -> tuple[FieldArrays, Context]:
    """Records ``lo:hi`` of a group (views), for a group split across two batches."""
    part = {ie: values[lo:hi] for ie, values in fields.items()}
    return part, Context(*(getattr(ctx, f.name)[lo:hi] for f in dataclasses.fields(ctx)))


def _per_record(values: np.ndarray, counts: np.ndarray, n: int, dtype: Any) -> np.ndarray:
    """Row values repeated for each of the row's records (a fill when all rows agree)."""
    if (values == values[0]).all():
        return np.full(n, values[0], dtype=dtype)
    return np.repeat(values.astype(dtype), counts)


def _gather_run(run: _Run, record_length: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """A run's records copied out of the block, and their context columns. Rows with different
    record counts take one take: the block seen as one record at every byte offset, indexed by each
    record's start."""
    hdr = run.block
    rows = np.asarray(run.rows, dtype=np.intp)
    counts = np.asarray(run.counts, dtype=np.int64)
    n = int(counts.sum())
    data = hdr.data
    offsets = hdr.offset[rows]
    most = int(counts.max())
    if int(counts.min()) == most:
        # Same record count in every row (one router's usual packets): one 2-D slice, then the few
        # rows whose records start elsewhere (after a template set) copied over their place.
        values, times = np.unique(offsets, return_counts=True)
        offset, width = int(values[np.argmax(times)]), most * record_length
        span = data[rows, offset : offset + width]
        if len(values) > 1:
            for j in np.flatnonzero(offsets != offset).tolist():
                span[j] = data[rows[j], offsets[j] : offsets[j] + width]
        records = span.reshape(-1)
    else:
        base = rows * data.shape[1] + offsets - (np.cumsum(counts) - counts) * record_length
        starts = np.repeat(base, counts) + np.arange(n, dtype=np.int64) * record_length
        every = np.ndarray(
            (data.size - record_length + 1,), np.dtype((np.void, record_length)), data, 0, (1,)
        )
        records = every[starts].view(np.uint8)
    received = (np.asarray([hdr.received], dtype=np.float64) * 1e6).astype(np.int64)[0]
    stream = run.stream
    if (stream == stream[0]).all():
        exporter = np.frombuffer(run.exporters[stream[0]].tobytes() * n, dtype=np.uint8).reshape(n, 16)
    else:
        exporter = np.repeat(run.exporters[stream], counts, axis=0)
    return records, [
        exporter,
        _per_record(hdr.port[hdr.source[rows]], counts, n, np.uint16),
        _per_record(hdr.domain[rows], counts, n, np.uint32),
        np.full(n, run.version, dtype=np.uint8),
        np.full(n, received, dtype=np.int64),
        _per_record(hdr.export_us[rows], counts, n, np.int64),
        _per_record(hdr.uptime_ms[rows], counts, n, np.int64),
        np.full(n, run.sysinit, dtype=np.int64),
        np.full(n, run.rate, dtype=np.uint32)
        if run.rate >= 0
        else _per_record(hdr.v5_rate[rows], counts, n, np.uint32),
    ]
