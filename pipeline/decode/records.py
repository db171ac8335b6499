"""Records of one decode call, grouped per template layout, then decoded all at once.

The per-packet walk and the block path only find records; they append them to their template's
:class:`Group` in arrival order (templates of equal fields share one, whichever stream sent them: a
collector hearing hundreds of routers then decodes a few groups per call, not hundreds), as a
per-packet piece (the set's bytes, its record count, its packet context) or a :class:`Run` of block
rows. At the end of the call each group becomes field arrays with
one ``np.frombuffer`` over all its records, and per-record packet context columns. Records of a
variable-length template are first packed into fixed records by one compiled pass per stretch of
pieces (:mod:`pipeline.decode.variable_length`); from there both kinds take the same path.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.decode.columns import Context, FieldArrays
from pipeline.decode.streams import DomainKey
from pipeline.decode.templates import Template

if TYPE_CHECKING:
    from pipeline.decode.block import BlockHeaders


@dataclass
class Group:
    """Records of one template layout gathered from the current call, in arrival order (``template``
    and ``domain``: those of its first records): each piece is either ``(data, count, ctx)`` from the
    per-packet walk (``count`` whole records at the start of ``data``) or a :class:`Run` of block
    rows."""

    template: Template
    domain: DomainKey
    pieces: list = field(default_factory=list)


@dataclass
class Run:
    """Fast rows of one template layout (:attr:`Template.group_key`) from one stretch of a block,
    from any number of streams (no per-packet walk in between, so the decoder state they depend on,
    sampling and system init time, is the same for all of each stream's rows)."""

    block: BlockHeaders
    version: np.ndarray
    """Per stream of the stretch, as are ``sysinit``, ``rate`` and ``exporters``."""
    sysinit: np.ndarray
    rate: np.ndarray
    """-1: per row from the header (NetFlow v5)."""
    exporters: np.ndarray
    """(streams, 16) uint8: the 16-byte exporter of each stream."""
    rows: np.ndarray
    counts: np.ndarray
    stream: np.ndarray
    """Per row: its stream (index into ``exporters``)."""


class RecordGroups(dict[int, Group]):
    """The current call's groups, by :attr:`Template.group_key` (templates of one layout share a
    group, whichever stream they belong to), in order of first records."""

    def group(self, template: Template, dkey: DomainKey) -> Group:
        group = self.get(template.group_key)
        if group is None:
            group = self[template.group_key] = Group(template, dkey)
        return group

    def add(self, template: Template, dkey: DomainKey, data: Any, count: int, ctx: tuple) -> None:
        """Per-packet records: ``count`` records at the start of ``data``, with the packet's context
        tuple."""
        self.group(template, dkey).pieces.append((data, count, ctx))


def decode_fields(template: Template, data: Any) -> tuple[FieldArrays, int]:
    """The records of one data set (bytes), every whole one (options data: no budget applies)."""
    if template.variable:
        from pipeline.decode import variable_length

        raw = np.frombuffer(data, dtype=np.uint8)
        n, _ = variable_length.count_records(raw, 0, len(raw), template.runs, -1)
        if not template.dtype.itemsize:
            return {}, n
        bounds, counts = np.array([0], dtype=np.int64), np.array([n], dtype=np.int64)
        data = variable_length.pack(template, raw, bounds, np.array([len(raw)], dtype=np.int64), counts)
    return _fields(template, data)


def _fields(template: Template, data: Any) -> tuple[FieldArrays, int]:
    """Fixed records (a variable-length template's packed ones) decoded with one frombuffer; bytes
    after the last whole record (set padding) are left out."""
    size = template.dtype.itemsize
    rec = np.frombuffer(data, dtype=template.dtype, count=len(data) // size)
    return {ie: rec[name] for ie, name in template.names.items()}, len(rec)


def group_fields(group: Group) -> tuple[FieldArrays, int, Context | None]:
    """A template group's records as field arrays, their count and their packet context."""
    template = group.template
    variable = template.variable
    chunks: list[Any] = []
    contexts = []
    packed: list[tuple] = []
    for piece in [*group.pieces, None]:
        if isinstance(piece, tuple):
            packed.append(piece)
            continue
        if packed:  # consecutive per-packet pieces: one join, context as the walk saw it
            counts = [c for _, c, _ in packed]
            if variable:
                chunks.append(_pack_pieces(template, [part for part, _, _ in packed], counts))
            else:
                chunks.extend(part for part, _, _ in packed)
            contexts.append(_packet_context(counts, [c for _, _, c in packed], sum(counts)))
            packed = []
        if piece is not None:
            records, context = _pack_run(piece, template) if variable else _gather_run(piece, template)
            chunks.append(records)
            contexts.append(context)
    fields, n = _fields(template, chunks[0] if len(chunks) == 1 else b"".join(chunks))
    if n == 0:
        return fields, 0, None
    if len(contexts) == 1:
        columns = contexts[0]
    else:
        columns = [np.concatenate(parts) for parts in zip(*contexts, strict=True)]
    return fields, n, Context(*columns)


def select_rows(fields: FieldArrays, ctx: Context, keep: np.ndarray) -> tuple[FieldArrays, Context]:
    """The records where ``keep`` is set (copies)."""
    part = {ie: values[keep] for ie, values in fields.items()}
    return part, Context(*(getattr(ctx, f.name)[keep] for f in dataclasses.fields(ctx)))


def rows_of(fields: FieldArrays, ctx: Context, lo: int, hi: int) -> tuple[FieldArrays, Context]:
    """Records ``lo:hi`` of a group (views), for a group split across two batches."""
    part = {ie: values[lo:hi] for ie, values in fields.items()}
    return part, Context(*(getattr(ctx, f.name)[lo:hi] for f in dataclasses.fields(ctx)))


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


def _per_record(values: np.ndarray, counts: np.ndarray, n: int, dtype: Any) -> np.ndarray:
    """Row values repeated for each of the row's records (a fill when all rows agree)."""
    if (values == values[0]).all():
        return np.full(n, values[0], dtype=dtype)
    return np.repeat(values.astype(dtype), counts)


def _gather_run(run: Run, template: Template) -> tuple[np.ndarray, list[np.ndarray]]:
    """A run's records copied out of the block, and their context columns. Rows with different
    record counts take one take: the block seen as one record at every byte offset, indexed by each
    record's start."""
    record_length = template.record_length
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
    return records, _run_context(run, rows, counts, n)


def _pack_pieces(template: Template, parts: list[Any], counts: list[int]) -> np.ndarray:
    """Per-packet pieces of a variable-length template, packed (each piece holds exactly its
    records: the walk cut it where the last one ended)."""
    from pipeline.decode import variable_length

    data = np.frombuffer(parts[0] if len(parts) == 1 else b"".join(parts), dtype=np.uint8)
    ends = np.cumsum([len(part) for part in parts], dtype=np.int64)
    starts = ends - [len(part) for part in parts]
    return variable_length.pack(template, data, starts, ends, np.asarray(counts, dtype=np.int64))


def _pack_run(run: Run, template: Template) -> tuple[np.ndarray, list[np.ndarray]]:
    """A run's variable-length records packed straight out of the block, and their context columns."""
    from pipeline.decode import variable_length

    hdr = run.block
    rows = np.asarray(run.rows, dtype=np.intp)
    counts = np.asarray(run.counts, dtype=np.int64)
    starts = rows * hdr.data.shape[1] + hdr.offset[rows]
    ends = starts + hdr.size[rows] - 4
    records = variable_length.pack(template, hdr.data.reshape(-1), starts, ends, counts)
    return records, _run_context(run, rows, counts, int(counts.sum()))


def _run_context(run: Run, rows: np.ndarray, counts: np.ndarray, n: int) -> list[np.ndarray]:
    """Per-record :class:`Context` columns of a run's ``n`` records."""
    hdr = run.block
    received = (np.asarray([hdr.received], dtype=np.float64) * 1e6).astype(np.int64)[0]
    stream = run.stream
    if (stream == stream[0]).all():
        exporter = np.frombuffer(run.exporters[stream[0]].tobytes() * n, dtype=np.uint8).reshape(n, 16)
    else:
        exporter = np.repeat(run.exporters[stream], counts, axis=0)
    rate = run.rate[stream]
    if (rate < 0).any():
        rate = np.where(rate < 0, hdr.v5_rate[rows], rate)
    return [
        exporter,
        _per_record(hdr.port[hdr.source[rows]], counts, n, np.uint16),
        _per_record(hdr.domain[rows], counts, n, np.uint32),
        _per_record(run.version[stream], counts, n, np.uint8),
        np.full(n, received, dtype=np.int64),
        _per_record(hdr.export_us[rows], counts, n, np.int64),
        _per_record(hdr.uptime_ms[rows], counts, n, np.int64),
        _per_record(run.sysinit[stream], counts, n, np.int64),
        _per_record(rate, counts, n, np.uint32),
    ]
