"""NetFlow v9 and IPFIX messages, one packet at a time: header, then set by set.

Only headers and set boundaries are walked here in Python. Template sets update the stream's
templates (and release data that waited for them); data sets are appended to their template's group
(:mod:`pipeline.decode.records`) and decoded later with the rest of the call's records (a
variable-length set's records are counted here, compiled, within the exporter's budget: the count
is what IPFIX sequence numbers and the budget need); options data updates sampling state. Never raises on input: each reject is counted by reason and the walk goes on
with the next set.

A packet's context travels as a tuple (cheaper than an object on this path): 16-byte exporter, port,
observation domain, version, reception time (s), header export time (µs), header sysUptime (ms, -1
for IPFIX), then, once the stream's state is looked up, system init time (ms, -1 if unknown) and
sampling rate.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

from pipeline.decode.budget import VariableRecordBudget
from pipeline.decode.datagram import DecoderConfig
from pipeline.decode.pending import PendingBuffer
from pipeline.decode.records import RecordGroups, decode_fields
from pipeline.decode.sampling import SamplingState
from pipeline.decode.sequence import SequenceTracker
from pipeline.decode.stats import DecoderStats
from pipeline.decode.streams import Streams, TemplateKey
from pipeline.decode.template_state import TemplateStore
from pipeline.decode.templates import Template, TemplateError, parse_template_set

V9_HEADER = struct.Struct("!HHIIII")
IPFIX_HEADER = struct.Struct("!HHIII")
_SET = struct.Struct("!HH")


class MessageDecoder:
    """The per-packet walk of v9 and IPFIX messages over the decoder's shared state."""

    def __init__(
        self,
        config: DecoderConfig,
        stats: DecoderStats,
        streams: Streams,
        templates: TemplateStore,
        sampling: SamplingState,
        sequence: SequenceTracker,
        pending: PendingBuffer,
        budget: VariableRecordBudget,
        groups: RecordGroups,
    ) -> None:
        self.config = config
        self.stats = stats
        self.streams = streams
        self.templates = templates
        self.sampling = sampling
        self.sequence = sequence
        self.pending = pending
        self.budget = budget
        self.groups = groups
        self._count_records: Any = None

    def v9(self, payload: bytes, exporter: str, port: int, received: float) -> None:
        if len(payload) < V9_HEADER.size:
            self.stats.error(exporter, "short_packet")
            return
        _, _count, uptime, secs, seq, source_id = V9_HEADER.unpack_from(payload)
        tkey, ex16 = self.streams.packet(exporter, port, source_id, 9)
        self.sequence.check(exporter, source_id, 9, seq, 1)
        ctx = (ex16, port, source_id, 9, received, secs * 1_000_000, uptime, -1)
        self._sets(payload, V9_HEADER.size, len(payload), tkey, ctx, received, ipfix=False)

    def ipfix(self, payload: bytes, exporter: str, port: int, received: float) -> None:
        if len(payload) < IPFIX_HEADER.size:
            self.stats.error(exporter, "short_packet")
            return
        _, length, export_time, seq, domain = IPFIX_HEADER.unpack_from(payload)
        tkey, ex16 = self.streams.packet(exporter, port, domain, 10)
        if length < IPFIX_HEADER.size:
            self.stats.error(exporter, "bad_message_length")
            return
        if length > len(payload):
            self.stats.error(exporter, "message_truncated")
        elif length < len(payload):
            # Some encoders (scapy among them) leave the final set's padding out of the message
            # length; nfdump accepts such messages, so sets are bounded by the datagram instead.
            self.stats.error(exporter, "length_mismatch")
        ctx = (ex16, port, domain, 10, received, export_time * 1_000_000, -1, -1)
        records = self._sets(payload, IPFIX_HEADER.size, len(payload), tkey, ctx, received, ipfix=True)
        self.sequence.check(exporter, domain, 10, seq, records)

    def _sets(
        self, payload: bytes, pos: int, end: int, tkey: TemplateKey, ctx: tuple, received: float, ipfix: bool
    ) -> int | None:
        """Walk the sets of one message. Returns the data records seen (None if some could not be
        counted because their template is unknown) for IPFIX sequence accounting."""
        exporter = tkey[0]
        records: int | None = 0
        view = memoryview(payload)
        template_set, options_set = (2, 3) if ipfix else (0, 1)
        templates = self.templates.tables.get(tkey)
        groups = self.groups
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
                if template is not None and template.usable:
                    # Hot path: a data set of a known flow template is appended to its group.
                    template.last_used = received
                    if full is None:
                        full = self._full_context(tkey, ctx)
                    if template.variable:
                        count = self._variable_records(template, tkey, payload, start, pos, full)
                    else:
                        count = (length - 4) // template.record_length
                        if count:
                            group = groups.get(template.group_key)
                            if group is None:
                                group = groups.group(template, (tkey[0], tkey[1], tkey[2]))
                            group.pieces.append(
                                (view[start : start + count * template.record_length], count, full)
                            )
                    if records is not None:
                        records += count
                    continue
                n = self._data_set(view[start:pos], set_id, tkey, ctx, received)
                records = None if n is None or records is None else records + n
            elif set_id in (template_set, options_set):
                self._template_set(bytes(view[start:pos]), tkey, received, ipfix, set_id == options_set)
                templates = self.templates.tables.get(tkey)
            else:
                self.stats.error(exporter, "reserved_set_id")
        if end - pos > 0 and end - pos < 4 and any(payload[pos:end]):
            self.stats.error(exporter, "trailing_bytes")
        return records

    def _full_context(self, tkey: TemplateKey, ctx: tuple) -> tuple:
        """``ctx`` with the stream's system init time and default sampling rate."""
        sampling = self.sampling
        dkey = (tkey[0], tkey[1], tkey[2])
        rate = sampling.default_rate(dkey) if sampling.rates else 1
        return (*ctx[:7], sampling.sysinit.get(dkey, -1) if sampling.sysinit else -1, rate)

    def _template_set(
        self, body: bytes, tkey: TemplateKey, received: float, ipfix: bool, options: bool
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
                self.templates.withdraw(tkey, item, options)
                added = False
                continue
            item.last_seen = received
            if self.templates.add(tkey, item):
                self._drain_pending(tkey, item.template_id)
            else:
                added = False
        # Remember a plain template set that fully took effect: the block path recognises its repeats.
        ids = [item.template_id for item in items if not isinstance(item, int)]
        if added and ids and len(set(ids)) == len(ids):
            self.templates.remember_set(tkey, body, ids)

    def _drain_pending(self, tkey: TemplateKey, template_id: int) -> None:
        queue = self.pending.take(tkey, template_id)
        if not queue:
            return
        template = self.templates.tables[tkey][template_id]
        for item in queue:
            self.apply(template, tkey, item.data, item.ctx)
            self.stats.pending_decoded[tkey[0]] += 1

    def _data_set(
        self, body: memoryview, set_id: int, tkey: TemplateKey, ctx: tuple, received: float
    ) -> int | None:
        template = self.templates.tables.get(tkey, {}).get(set_id)
        if template is None:
            self.pending.add(tkey, set_id, bytes(body), ctx, received)
            return None
        return self.apply(template, tkey, body, ctx)

    def apply(
        self, template: Template, tkey: TemplateKey, body: memoryview | bytes, ctx: tuple
    ) -> int | None:
        """One data set of a known template off the hot path of :meth:`_sets`: data that waited for
        its template, options data (updates sampling state), data of a template without addresses
        (not read). Returns the records it held (None if not counted)."""
        dkey = (tkey[0], tkey[1], tkey[2])
        template.last_used = ctx[4]
        if template.options:
            fields, n = decode_fields(template, bytes(body))
            self.sampling.options_records(fields, n, dkey, ctx[4])
            return n
        if not template.usable:  # no address field: no flow can come out, so nothing is read
            self.stats.error(tkey[0], "no_address_set")
            return len(body) // template.record_length if template.record_length else None
        full = (*ctx[:7], self.sampling.sysinit.get(dkey, -1), self.sampling.default_rate(dkey))
        if template.variable:
            return self._variable_records(template, tkey, body, 0, len(body), full)
        count = len(body) // template.record_length
        if count:
            self.groups.add(template, dkey, body[: count * template.record_length], count, full)
        return count

    def _variable_records(
        self, template: Template, tkey: TemplateKey, data: Any, start: int, end: int, full: tuple
    ) -> int:
        """Count the whole records of a variable-length set (``data[start:end]``) within the
        exporter's budget (the rest of a set the budget cuts is not read, counted); they are packed
        with their group later."""
        count_records = self._count_records
        if count_records is None:  # the compiler loads with the first variable-length set
            from pipeline.decode.variable_length import count_records

            self._count_records = count_records
        exporter = tkey[0]
        limit = self.budget.left(exporter, full[4])
        # bytes go to the compiled count as they are (a numpy view of them costs as much as the count)
        raw = data if type(data) is bytes else np.frombuffer(data, dtype=np.uint8)
        n, used = count_records(raw, start, end, template.runs, limit)
        self.budget.spend(exporter, n)
        if n == limit and any(data[used:end]):
            self.stats.error(exporter, "variable_budget")
        if n:
            piece = memoryview(data)[start:used]
            self.groups.add(template, (tkey[0], tkey[1], tkey[2]), piece, n, full)
        return n
