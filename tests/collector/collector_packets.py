"""Export packets built with scapy's NetFlow encoders (independent of Shoal's decoder).

Every flow carries a unique (src_port, dst_port) pair so outputs of different collectors can be
joined flow by flow.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from scapy.layers.netflow import (
    GetNetflowRecordV9,
    NetflowDataflowsetV9,
    NetflowFlowsetV9,
    NetflowHeader,
    NetflowHeaderV5,
    NetflowHeaderV9,
    NetflowHeaderV10,
    NetflowRecordV5,
    NetflowTemplateFieldV9,
    NetflowTemplateV9,
)

EPOCH = 1_790_000_000  # 2026-09-21, whole seconds


@dataclass(frozen=True)
class Flow:
    src: str
    dst: str
    sport: int
    dport: int
    proto: int
    packets: int
    octets: int
    input_if: int
    output_if: int
    tcp_flags: int
    tos: int


def make_flows(rng: random.Random, n: int, v6: bool, first_id: int) -> list[Flow]:
    out = []
    for i in range(n):
        fid = first_id + i
        if v6:
            src, dst = (
                f"2001:db8:1::{rng.randrange(1, 0xFFFF):x}",
                f"2001:db8:2::{rng.randrange(1, 0xFFFF):x}",
            )
        else:
            src = f"198.51.100.{rng.randrange(1, 255)}"
            dst = f"203.0.113.{rng.randrange(1, 255)}"
        pk = rng.randrange(1, 5000)
        out.append(
            Flow(
                src,
                dst,
                1024 + fid // 50_000,
                fid % 50_000 + 1,
                rng.choice([6, 17]),
                pk,
                pk * rng.randrange(40, 1500),
                rng.randrange(1, 100),
                rng.randrange(1, 100),
                rng.choice([0x02, 0x12, 0x1B]),
                rng.choice([0, 0x20, 0xB8]),
            )
        )
    return out


def v5_packet(flows: list[Flow], seq: int, unix_secs: int = EPOCH, uptime: int = 3_600_000) -> bytes:
    recs = [
        NetflowRecordV5(
            src=f.src,
            dst=f.dst,
            srcport=f.sport,
            dstport=f.dport,
            prot=f.proto,
            dpkts=f.packets,
            dOctets=f.octets,
            input=f.input_if,
            output=f.output_if,
            tcpFlags=f.tcp_flags,
            tos=f.tos,
            first=uptime - 5000,
            last=uptime - 1000,
            src_as=64500,
            dst_as=64501,
            src_mask=24,
            dst_mask=24,
        )
        for f in flows
    ]
    hdr = NetflowHeader() / NetflowHeaderV5(
        count=len(recs), sysUptime=uptime, unixSecs=unix_secs, flowSequence=seq
    )
    return bytes(hdr) + b"".join(bytes(r) for r in recs)


V4_FIELDS = [
    (8, 4),
    (12, 4),
    (7, 2),
    (11, 2),
    (4, 1),
    (6, 1),
    (5, 1),
    (2, 4),
    (1, 4),
    (10, 4),
    (14, 4),
    (22, 4),
    (21, 4),
]
V6_FIELDS = [
    (27, 16),
    (28, 16),
    (7, 2),
    (11, 2),
    (4, 1),
    (6, 1),
    (5, 1),
    (2, 8),
    (1, 8),
    (10, 4),
    (14, 4),
    (152, 8),
    (153, 8),
]


class TemplatedExporter:
    """A v9 or IPFIX exporter: one template, sent in the first packet and every ``every``-th one."""

    def __init__(self, version: int, v6: bool, template_id: int = 256, domain: int = 1, every: int = 10):
        self.version, self.v6, self.domain, self.every = version, v6, domain, every
        fields = V6_FIELDS if v6 else V4_FIELDS
        if version == 9 and v6:
            fields = [(t, 4) if t in (152, 153) else (t, n) for t, n in fields]
            fields = [(21 if t == 153 else 22 if t == 152 else t, n) for t, n in fields]
        if version == 10 and not v6:
            fields = [(152, 8) if t == 22 else (153, 8) if t == 21 else (t, n) for t, n in fields]
        self.fields = fields
        tf = [NetflowTemplateFieldV9(fieldType=t, fieldLength=n) for t, n in fields]
        self.template = NetflowFlowsetV9(
            flowSetID=2 if version == 10 else 0,
            templates=[NetflowTemplateV9(templateID=template_id, fieldCount=len(tf), template_fields=tf)],
        )
        self.template_id = template_id
        self._record = GetNetflowRecordV9(self.template)
        self._names = [f.name for f in self._record.fields_desc]
        self.packets = 0
        self.sequence = 0

    def packet(self, flows: list[Flow], unix_secs: int = EPOCH, uptime: int = 3_600_000) -> bytes:
        absolute = any(t in (152, 153) for t, _ in self.fields)
        start, end = (
            ((unix_secs - 5) * 1000, (unix_secs - 1) * 1000) if absolute else (uptime - 5000, uptime - 1000)
        )
        recs = [
            self._record(
                **dict(
                    zip(
                        self._names,
                        [
                            f.src,
                            f.dst,
                            f.sport,
                            f.dport,
                            f.proto,
                            f.tcp_flags,
                            f.tos,
                            f.packets,
                            f.octets,
                            f.input_if,
                            f.output_if,
                            start,
                            end,
                        ],
                        strict=True,
                    )
                )
            )
            for f in flows
        ]
        data = NetflowDataflowsetV9(templateID=self.template_id, records=recs)
        with_template = self.packets % self.every == 0
        body = (self.template / data) if with_template else data
        if self.version == 10:
            hdr = NetflowHeader(version=10) / NetflowHeaderV10(
                ExportTime=unix_secs, flowSequence=self.sequence, ObservationDomainID=self.domain
            )
            self.sequence += len(recs)
        else:
            hdr = NetflowHeader(version=9) / NetflowHeaderV9(
                count=len(recs) + with_template,
                sysUptime=uptime,
                unixSecs=unix_secs,
                packageSequence=self.packets,
                SourceID=self.domain,
            )
        self.packets += 1
        return bytes(hdr / body)
