"""NetFlow v5 / v9 / IPFIX decoder: datagrams in, flow-schema record batches out.

:class:`FlowDecoder` is the one interface; it owns the state of every exporter and wires the parts,
each a module of its own:

- per packet: :mod:`~pipeline.decode.netflow_v5` and :mod:`~pipeline.decode.v9_ipfix` (headers and
  sets walked in Python, records only found);
- per block of datagrams (the collector's path): :mod:`~pipeline.decode.block`;
- records of a call grouped per template layout (across streams) and decoded at once:
  :mod:`~pipeline.decode.records` (variable-length ones through
  :mod:`~pipeline.decode.variable_length`), then flow columns: :mod:`~pipeline.decode.columns`;
- state: templates (:mod:`~pipeline.decode.template_state`), sampling and system init times
  (:mod:`~pipeline.decode.sampling`), sequence numbers (:mod:`~pipeline.decode.sequence`), data
  waiting for its template (:mod:`~pipeline.decode.pending`), the variable-length budget
  (:mod:`~pipeline.decode.budget`), stream keys (:mod:`~pipeline.decode.streams`).

Never raises on input: each reject is counted by reason in :attr:`FlowDecoder.stats` and the rest of
the packet goes on.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.decode.block import BlockHeaders, BlockWalker
from pipeline.decode.budget import VariableRecordBudget
from pipeline.decode.columns import (
    EARLIEST_US,
    Context,
    FieldArrays,
    RowSpace,
    build_batch,
    empty_batch,
    fill,
    has_address,
)
from pipeline.decode.datagram import DecoderConfig
from pipeline.decode.netflow_v5 import V5Decoder
from pipeline.decode.pending import PendingBuffer
from pipeline.decode.records import RecordGroups, group_fields, rows_of, select_rows
from pipeline.decode.sampling import SamplingState
from pipeline.decode.sequence import SequenceTracker
from pipeline.decode.stats import DecoderStats
from pipeline.decode.streams import Streams
from pipeline.decode.template_state import TemplateStore
from pipeline.decode.v9_ipfix import MessageDecoder

log = logging.getLogger(__name__)


class FlowDecoder:
    """Stateful decoder for all exporters seen by one collector."""

    def __init__(self, config: DecoderConfig | None = None) -> None:
        self.config = config = config or DecoderConfig()
        self.stats = stats = DecoderStats(config.max_stat_exporters)
        self.streams = Streams(config, stats)
        self.templates = TemplateStore(config, stats)
        self.sampling = SamplingState(config, stats)
        self.sequence = SequenceTracker(stats, config.max_streams)
        self.pending = PendingBuffer(config, stats)
        self.budget = VariableRecordBudget(config, stats)
        self.groups = RecordGroups()
        self._v5 = V5Decoder(stats, self.streams, self.sequence, self.groups)
        self._messages = MessageDecoder(
            config, stats, self.streams, self.templates, self.sampling, self.sequence, self.pending,
            self.budget, self.groups,
        )  # fmt: skip
        self._block = BlockWalker(
            stats, self.streams, self.templates, self.sampling, self.sequence, self.pending, self.budget,
            self.groups,
        )  # fmt: skip
        self._time_bounds = (EARLIEST_US, int(config.max_time_ahead_seconds * 1_000_000))

    # -- public surface ----------------------------------------------------------------------------
    def decode(self, datagrams: Sequence[Any]) -> pa.RecordBatch:
        """Decode a batch of :class:`Datagram` (or same-shaped tuples). Never raises on bad input."""
        self.groups.clear()
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
        datagrams, but one batch per template layout instead of one concatenated batch. With ``into``,
        the flows are written straight into the row space it hands out (the collector's batcher) and
        nothing is returned. ``data`` is not kept after the call. Never raises on bad input.
        """
        self.groups.clear()
        if len(lengths):
            data = np.ascontiguousarray(data, dtype=np.uint8)
            self._block.walk(BlockHeaders(data, lengths, source, sources, received), self._safe_packet)
        return self._finish(into)

    def expire(self, now: float) -> None:
        """Forget templates not refreshed within the TTL and pending sets older than their TTL."""
        self.templates.expire(now)
        self.pending.expire(now)

    def save_state(self, path: str | Path) -> None:
        """Persist templates, sampling rates and system init times (JSON, written atomically)."""
        state = {"format": 1, "templates": self.templates.to_state(), **self.sampling.to_state()}
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, path)

    def load_state(self, path: str | Path) -> None:
        """Restore a saved state. Saved by an older version or edited by hand: every entry passes the
        checks a packet's would, one bad entry is skipped (logged) and the rest restored, within the
        same caps."""
        state = json.loads(Path(path).read_text())
        if not isinstance(state, dict) or state.get("format") != 1:
            raise ValueError("not a decoder state file (format 1)")
        skipped = self.templates.load_state(state.get("templates", []))
        skipped += self.sampling.load_state(state, time.time())
        if skipped:
            log.warning("decoder state %s: %d invalid entries skipped", path, skipped)

    # -- state, read by tests and benchmarks -------------------------------------------------------
    @property
    def _templates(self) -> dict:
        return self.templates.tables

    @property
    def _sequence(self) -> dict:
        return self.sequence.expected

    @property
    def _sampling(self) -> dict:
        return self.sampling.rates

    @property
    def _sysinit(self) -> dict:
        return self.sampling.sysinit

    @property
    def _pending(self) -> dict:
        return self.pending.queues

    @property
    def _pending_bytes(self) -> int:
        return self.pending.bytes

    @property
    def _pending_load(self) -> dict:
        return self.pending.load

    # -- per packet --------------------------------------------------------------------------------
    def _safe_packet(self, payload: bytes, exporter: str, port: int, received: float) -> None:
        try:
            if len(payload) < 4:
                self.stats.error(exporter, "short_packet")
                return
            version = (payload[0] << 8) | payload[1]
            if version == 10:
                self._messages.ipfix(payload, exporter, port, received)
            elif version == 9:
                self._messages.v9(payload, exporter, port, received)
            elif version == 5:
                self._v5.packet(payload, exporter, port, received)
            else:
                self.stats.error(exporter, "unknown_version")
        except Exception:  # a decoder bug must not take the collector down: count and go on
            log.exception("internal decoder error on a packet from %s", exporter)
            self.stats.error(exporter, "internal_error")

    # -- records to flows --------------------------------------------------------------------------
    def _finish(self, into: RowSpace | None = None) -> list[pa.RecordBatch]:
        """One batch per template layout group of the current call (empty ones left out), or with
        ``into`` every group written into the rows it hands out."""
        batches = []
        count = self.streams.count_by_exporter
        for group in self.groups.values():
            spans: list = []
            try:
                fields, n, ctx = group_fields(group)
                if not n:
                    continue
                self.sampling.apply_to_records(fields, group.domain, ctx)
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
                    for columns, at, rows in spans:
                        f, c = (fields, ctx) if rows == n else rows_of(fields, ctx, done, done + rows)
                        self._count_bad_times(c, fill(f, rows, c, columns, at, self._time_bounds))
                        done += rows
            except Exception:
                log.exception("internal decoder error building template %d", group.template.template_id)
                self.stats.error(group.domain[0], "internal_error")
                for columns, at, rows in spans:  # rows handed out but not (all) filled
                    columns.discard(at, at + rows)
                continue
            count(self.stats.flows, ctx.exporter)
        self.groups.clear()
        return batches

    def _usable_rows(self, fields: FieldArrays, n: int, ctx: Context) -> tuple[FieldArrays, int, Context]:
        """Records without any address (all zero) give no usable flow: left out and counted. (Times out
        of range become null in :func:`fill`, counted by :meth:`_count_bad_times`.)"""
        keep = has_address(fields)
        if keep is not None and not keep.all():
            self.streams.count_by_exporter(self.stats.rows_rejected, ctx.exporter[~keep], "no_address")
            fields, ctx = select_rows(fields, ctx, keep)
            n = int(keep.sum())
        return fields, n, ctx

    def _count_bad_times(self, ctx: Context, bad: np.ndarray | None) -> None:
        if bad is not None:
            self.streams.count_by_exporter(self.stats.rows_rejected, ctx.exporter[bad], "time_out_of_range")
