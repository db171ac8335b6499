"""NetFlow v5 / v9 / IPFIX decoder: datagrams in, one flow-schema record batch out.

Per packet, only headers and set boundaries are walked in Python. Data records are collected per
template across the whole datagram batch and decoded at once (``np.frombuffer`` with the template's
compiled dtype; an offsets pass first for variable-length templates). The decoder owns the template,
sampling and sequence state of every exporter, and never raises on input: each reject is counted by
reason in :attr:`stats` and the rest of the packet goes on.
"""

from __future__ import annotations

import json
import logging
import os
import struct
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.decode import ies
from pipeline.decode.columns import Context, FieldArrays, as_uint, build_batch, empty_batch
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
    """Records of one template gathered from the current batch of datagrams."""

    template: Template
    domain: DomainKey
    parts: list = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    ctx: list[tuple] = field(default_factory=list)


class FlowDecoder:
    """Stateful decoder for all exporters seen by one collector."""

    def __init__(self, config: DecoderConfig | None = None) -> None:
        self.config = config or DecoderConfig()
        self.stats = DecoderStats()
        self._templates: dict[TemplateKey, dict[int, Template]] = {}
        self._template_count: dict[str, int] = {}
        self._sampling: dict[DomainKey, dict[int, int]] = {}
        self._sysinit: dict[DomainKey, int] = {}
        self._sequence: dict[tuple[str, int, int], int | None] = {}
        self._pending: dict[tuple[TemplateKey, int], deque[_Pending]] = {}
        self._pending_load: dict[str, list[int]] = {}  # exporter -> [sets, bytes]
        self._exporter16: dict[str, bytes] = {}
        self._groups: dict[int, _Group] = {}
        self._streams: dict[tuple[str, int, int, int], tuple[TemplateKey, bytes, tuple[str, int]]] = {}

    # -- public surface ----------------------------------------------------------------------------
    def decode(self, datagrams: Sequence[Any]) -> pa.RecordBatch:
        """Decode a batch of :class:`Datagram` (or same-shaped tuples). Never raises on bad input."""
        self._groups = {}
        for d in datagrams:
            payload, exporter, port, received = d[0], d[1], d[2], d[3]
            try:
                self._packet(payload, exporter, port, received)
            except Exception:  # a decoder bug must not take the collector down: count and go on
                log.exception("internal decoder error on a packet from %s", exporter)
                self.stats.error(exporter, "internal_error")
        batches = []
        for group in self._groups.values():
            try:
                batch = self._build(group)
            except Exception:
                log.exception("internal decoder error building template %d", group.template.template_id)
                self.stats.error(group.domain[0], "internal_error")
                continue
            if batch.num_rows:
                batches.append(batch)
                self.stats.flows[group.domain[0]] += batch.num_rows
        self._groups = {}
        if not batches:
            return empty_batch()
        if len(batches) == 1:
            return batches[0]
        return pa.Table.from_batches(batches).combine_chunks().to_batches(max_chunksize=None)[0]

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
        """Persist templates, sampling rates and system init times (JSON, written atomically)."""
        state = {
            "format": 1,
            "templates": [
                {"key": list(k), "template": t.to_json()}
                for k, table in self._templates.items()
                for t in table.values()
            ],
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
        if state.get("format") != 1:
            raise ValueError(f"unknown decoder state format {state.get('format')!r}")
        for item in state["templates"]:
            exporter, port, domain, version = item["key"]
            self._add_template(
                (str(exporter), int(port), int(domain), int(version)), Template.from_json(item["template"])
            )
        for exporter, port, domain, sid, rate in state["sampling"]:
            self._sampling.setdefault((exporter, port, domain), {})[sid] = rate
        for exporter, port, domain, value in state["sysinit"]:
            self._sysinit[(exporter, port, domain)] = value

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
                if template is not None and not template.options and not template.variable:
                    # Hot path: a fixed-length data set is just appended to its template's group.
                    count = (length - 4) // template.record_length
                    if count:
                        if full is None:
                            dkey = (tkey[0], tkey[1], tkey[2])
                            rate = self._default_rate(dkey) if self._sampling else 1
                            full = (*ctx[:7], self._sysinit.get(dkey, -1) if self._sysinit else -1, rate)
                        group = self._groups.get(id(template))
                        if group is None:
                            group = self._groups[id(template)] = _Group(template, (tkey[0], tkey[1], tkey[2]))
                        group.parts.append(view[start : start + count * template.record_length])
                        group.counts.append(count)
                        group.ctx.append(full)
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
        for item in items:
            if isinstance(item, int):
                self._withdraw(tkey, item, options)
                continue
            item.last_seen = received
            if self._add_template(tkey, item):
                self._drain_pending(tkey, item.template_id)

    def _add_template(self, tkey: TemplateKey, template: Template) -> bool:
        exporter = tkey[0]
        table = self._templates.setdefault(tkey, {})
        old = table.get(template.template_id)
        if old is not None and old.same_layout(template):
            old.last_seen = max(old.last_seen, template.last_seen)
            return True
        if old is None:
            if self._template_count.get(exporter, 0) >= self.config.max_templates_per_exporter:
                self.stats.error(exporter, "template_limit")
                return False
            self._template_count[exporter] = self._template_count.get(exporter, 0) + 1
        table[template.template_id] = template
        self.stats.templates_active[exporter] = self._template_count[exporter]
        return True

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
        del self._templates[tkey][template_id]
        exporter = tkey[0]
        self._template_count[exporter] -= 1
        self.stats.templates_active[exporter] = self._template_count[exporter]

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
        if template.options:
            return self._options_data(template, dkey, body)
        full = (*ctx[:7], self._sysinit.get(dkey, -1), self._default_rate(dkey))
        if template.variable:
            starts, _, used = variable_offsets(template, bytes(body))
            if len(starts):
                self._add_records(template, dkey, bytes(body[:used]), len(starts), full)
            return len(starts)
        count = len(body) // template.record_length
        if count:
            self._add_records(template, dkey, body[: count * template.record_length], count, full)
        return count

    def _add_records(self, template: Template, dkey: DomainKey, data: Any, count: int, ctx: tuple) -> None:
        group = self._groups.get(id(template))
        if group is None:
            group = self._groups[id(template)] = _Group(template, dkey)
        group.parts.append(data)
        group.counts.append(count)
        group.ctx.append(ctx)

    def _fields(self, template: Template, data: bytes) -> tuple[FieldArrays, int]:
        """Decode records of one template: one frombuffer, or offsets-then-gather when variable."""
        if not template.variable:
            usable = len(data) - len(data) % template.record_length  # sets may end in padding
            rec = np.frombuffer(data, dtype=template.dtype, count=usable // template.record_length)
            return {ie: rec[name] for ie, name in template.names.items()}, len(rec)
        starts, _, _ = variable_offsets(template, data)
        raw = np.frombuffer(data, dtype=np.uint8)
        out: FieldArrays = {}
        for j, f in enumerate(template.fields):
            if f.ie in template.names and f.ie not in out and f.length != 65535 and f.mapped:
                idx = starts[:, j][:, None] + np.arange(f.length)
                out[f.ie] = raw[idx] if len(starts) else np.zeros((0, f.length), np.uint8)
        return out, len(starts)

    def _build(self, group: _Group) -> pa.RecordBatch:
        template = group.template
        if template.variable:
            pieces, counts = [], []
            for part in group.parts:
                fields, n = self._fields(template, bytes(part))
                pieces.append(fields)
                counts.append(n)
            n = sum(counts)
            fields = {ie: np.concatenate([p[ie] for p in pieces]) for ie in pieces[0]} if pieces else {}
            group.counts = counts
        else:
            fields, n = self._fields(template, b"".join(group.parts))
        if n == 0:
            return empty_batch()
        counts = np.asarray(group.counts)
        cols = list(zip(*group.ctx, strict=True))

        def rep(i: int, dtype: Any) -> np.ndarray:
            values = cols[i]
            if values.count(values[0]) == len(values):  # usually constant across a template's group
                return np.full(n, values[0], dtype=dtype)
            return np.repeat(np.asarray(values, dtype=dtype), counts)

        exporters = cols[0]
        if exporters.count(exporters[0]) == len(exporters):
            exporter = np.frombuffer(exporters[0] * n, dtype=np.uint8).reshape(n, 16)
        else:
            exporter = np.repeat(
                np.frombuffer(b"".join(exporters), dtype=np.uint8).reshape(-1, 16), counts, axis=0
            )
        received = np.repeat((np.asarray(cols[4], dtype=np.float64) * 1e6).astype(np.int64), counts)
        ctx = Context(
            exporter=exporter,
            exporter_port=rep(1, np.uint16),
            domain=rep(2, np.uint32),
            version=rep(3, np.uint8),
            received_us=received,
            export_us=rep(5, np.int64),
            uptime_ms=rep(6, np.int64),
            sysinit_ms=rep(7, np.int64),
            sampling=rep(8, np.uint32),
        )
        self._record_sampling(fields, group.domain, ctx)
        return build_batch(fields, n, ctx)

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

    def _options_data(self, template: Template, dkey: DomainKey, body: Any) -> int:
        fields, n = self._fields(template, bytes(body))
        values = {ie: as_uint(v) for ie, v in fields.items()}
        for i in range(n):
            rec = {ie: int(v[i]) for ie, v in values.items()}
            if ies.SYSTEM_INIT_MS in rec:
                self._sysinit[dkey] = rec[ies.SYSTEM_INIT_MS]
            rate = rec.get(ies.SAMPLING_INTERVAL) or rec.get(ies.SAMPLER_RANDOM_INTERVAL)
            if not rate and rec.get(ies.SAMPLING_PACKET_INTERVAL):
                interval = rec[ies.SAMPLING_PACKET_INTERVAL]
                rate = round((interval + rec.get(ies.SAMPLING_PACKET_SPACE, 0)) / interval)
            if rate:
                sid = rec.get(ies.SAMPLER_ID, rec.get(ies.SELECTOR_ID, 0))
                self._sampling.setdefault(dkey, {})[sid] = min(rate, 0xFFFFFFFF)
        return n

    # -- pending (data before template) ------------------------------------------------------------
    def _buffer_pending(
        self, tkey: TemplateKey, set_id: int, data: bytes, ctx: tuple, received: float
    ) -> None:
        exporter = tkey[0]
        self.stats.template_misses[exporter] += 1
        load = self._pending_load.setdefault(exporter, [0, 0])
        cfg = self.config
        if (
            load[0] >= cfg.pending_max_sets_per_exporter
            or load[1] + len(data) > cfg.pending_max_bytes_per_exporter
        ):
            self.stats.error(exporter, "pending_limit")
            self.stats.pending_expired[exporter] += 1
            return
        self._pending.setdefault((tkey, set_id), deque()).append(_Pending(data, ctx, received))
        load[0] += 1
        load[1] += len(data)
        self.stats.pending_buffered[exporter] += 1

    def _drain_pending(self, tkey: TemplateKey, template_id: int) -> None:
        queue = self._pending.pop((tkey, template_id), None)
        if not queue:
            return
        template = self._templates[tkey][template_id]
        load = self._pending_load[tkey[0]]
        for item in queue:
            load[0] -= 1
            load[1] -= len(item.data)
            self._apply(template, tkey, item.data, item.ctx)
            self.stats.pending_decoded[tkey[0]] += 1

    def _drop_pending(self, pkey: tuple[TemplateKey, int], item: _Pending) -> None:
        exporter = pkey[0][0]
        load = self._pending_load[exporter]
        load[0] -= 1
        load[1] -= len(item.data)
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
        self._sequence[key] = None if units is None else (seq + units) & 0xFFFFFFFF

    def _stream(self, exporter: str, port: int, domain: int, version: int) -> tuple[TemplateKey, bytes]:
        """Template key and 16-byte exporter of one export stream, cached: the per-packet path then
        costs one dict lookup. Also counts the packet."""
        skey = (exporter, port, domain, version)
        cached = self._streams.get(skey)
        if cached is None:
            if len(self._streams) > 65536:
                self._streams.clear()
            tkey = (exporter, port if self.config.template_key_includes_port else 0, domain, version)
            cached = self._streams[skey] = (tkey, self._ex16(exporter), (exporter, version))
        packets = self.stats.packets
        packets[cached[2]] = packets.get(cached[2], 0) + 1
        return cached[0], cached[1]

    def _ex16(self, exporter: str) -> bytes:
        raw = self._exporter16.get(exporter)
        if raw is None:
            try:
                raw = ip_to_bytes16(exporter)
            except ValueError:
                raw = bytes(16)
            if len(self._exporter16) > 65536:
                self._exporter16.clear()
            self._exporter16[exporter] = raw
        return raw
