"""NetFlow v5: a 24-byte header and fixed 48-byte records, no templates.

The record layout is expressed as a template (:data:`V5_TEMPLATE`) so that v5 records take the same
column path as v9 and IPFIX ones.
"""

from __future__ import annotations

import struct

from pipeline.decode.records import RecordGroups
from pipeline.decode.sequence import SequenceTracker
from pipeline.decode.stats import DecoderStats
from pipeline.decode.streams import Streams
from pipeline.decode.templates import Field, Template

V5_HEADER = struct.Struct("!HHIIIIBBH")
V5_RECORD = 48
# IE 0 = padding (never mapped).
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


class V5Decoder:
    """Per-packet NetFlow v5: header checks, sequence accounting, records onto their group. The
    observation domain is engine type * 256 + engine id; the sampling rate comes from the header."""

    def __init__(
        self, stats: DecoderStats, streams: Streams, sequence: SequenceTracker, groups: RecordGroups
    ) -> None:
        self.stats = stats
        self.streams = streams
        self.sequence = sequence
        self.groups = groups

    def packet(self, payload: bytes, exporter: str, port: int, received: float) -> None:
        if len(payload) < V5_HEADER.size:
            self.stats.error(exporter, "short_packet")
            return
        _, count, uptime, secs, nsecs, seq, engine_type, engine_id, sampling = V5_HEADER.unpack_from(payload)
        self.stats.packets[(exporter, 5)] += 1
        domain = (engine_type << 8) | engine_id
        available = (len(payload) - V5_HEADER.size) // V5_RECORD
        if count > available:
            self.stats.error(exporter, "records_truncated")
            count = available
        self.sequence.check(exporter, domain, 5, seq, count)
        if not count:
            return
        rate = sampling & 0x3FFF or 1
        ctx = (
            self.streams.ex16(exporter),
            port,
            domain,
            5,
            received,
            secs * 1_000_000 + nsecs // 1000,
            uptime,
            -1,
            rate,
        )
        data = memoryview(payload)[V5_HEADER.size : V5_HEADER.size + count * V5_RECORD]
        self.groups.add(V5_TEMPLATE, (exporter, 0, domain), data, count, ctx)
