"""Packet builders for decoder tests. Data records come from scapy's NetFlow encoder; the few shapes
scapy cannot express (IPFIX variable-length fields) are packed by hand and checked against tshark."""

from __future__ import annotations

import struct

import numpy as np
from scapy.layers.netflow import (
    GetNetflowRecordV9,
    NetflowDataflowsetV9,
    NetflowFlowsetV9,
    NetflowHeader,
    NetflowHeaderV9,
    NetflowHeaderV10,
    NetflowOptionsFlowsetOptionV9,
    NetflowOptionsFlowsetScopeV9,
    NetflowOptionsFlowsetV9,
    NetflowTemplateFieldV9,
    NetflowTemplateV9,
)

from pipeline.decode import Datagram

EXPORT = 1_800_000_000
UPTIME = 3_600_000
V4 = [(8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (2, 4), (1, 4), (22, 4), (21, 4)]


def template_set(tid: int, fields: list[tuple[int, int]], ipfix: bool) -> NetflowFlowsetV9:
    tf = [NetflowTemplateFieldV9(fieldType=t, fieldLength=n) for t, n in fields]
    return NetflowFlowsetV9(
        flowSetID=2 if ipfix else 0,
        templates=[NetflowTemplateV9(templateID=tid, fieldCount=len(tf), template_fields=tf)],
    )


def data_set(tset: NetflowFlowsetV9, tid: int, rows: list[list]) -> NetflowDataflowsetV9:
    cls = GetNetflowRecordV9(tset, tid)
    specs = cls.fields_desc

    def encode(spec, value):
        # scapy types only the IEs it knows; others are raw bytes of the template's length.
        if isinstance(value, int) and "Str" in type(spec).__name__:
            return value.to_bytes(spec.length_from(None), "big")
        return value

    return NetflowDataflowsetV9(
        templateID=tid,
        records=[cls(**{s.name: encode(s, v) for s, v in zip(specs, r, strict=True)}) for r in rows],
    )


def v4_rows(n: int, first_port: int = 1000) -> list[list]:
    return [
        [
            f"198.51.100.{i + 1}",
            f"203.0.113.{i + 1}",
            first_port + i,
            443,
            6,
            10 + i,
            1000 + i,
            UPTIME - 5000,
            UPTIME - 1000,
        ]
        for i in range(n)
    ]


def v9(body, seq: int = 0, source_id: int = 1, count: int = 1) -> bytes:
    hdr = NetflowHeader(version=9) / NetflowHeaderV9(
        count=count, sysUptime=UPTIME, unixSecs=EXPORT, packageSequence=seq, SourceID=source_id
    )
    return bytes(hdr / body)


def ipfix(body, seq: int = 0, domain: int = 1) -> bytes:
    raw = bytearray(
        bytes(
            NetflowHeader(version=10)
            / NetflowHeaderV10(ExportTime=EXPORT, flowSequence=seq, ObservationDomainID=domain)
            / body
        )
    )
    raw[2:4] = len(raw).to_bytes(2, "big")  # scapy leaves set padding out of the message length
    return bytes(raw)


def v9_sampling_options(tid: int, interval: int) -> tuple:
    """An options template (scope System, SAMPLING_INTERVAL + SAMPLING_ALGORITHM) and its data."""
    tpl = NetflowOptionsFlowsetV9(
        templateID=tid,
        option_scope_length=4,
        option_field_length=8,
        scopes=[NetflowOptionsFlowsetScopeV9(scopeFieldType=1, scopeFieldlength=4)],
        options=[
            NetflowOptionsFlowsetOptionV9(optionFieldType=34, optionFieldlength=4),
            NetflowOptionsFlowsetOptionV9(optionFieldType=35, optionFieldlength=1),
        ],
    )
    record = struct.pack("!IIB", 0, interval, 2)
    body = record + b"\x00" * (-(len(record) + 4) % 4)
    data = struct.pack("!HH", tid, 4 + len(body)) + body
    return tpl, data


def ipfix_variable(tid: int, names: list[bytes]) -> bytes:
    """Hand-packed IPFIX template + data set: addresses, ports, interfaceName (IE 82, variable length;
    names of 255+ bytes use the 3-byte length escape), an enterprise field (PEN 9, IE 100), octets."""
    fields = (
        struct.pack("!HH", 8, 4)
        + struct.pack("!HH", 12, 4)
        + struct.pack("!HH", 7, 2)
        + struct.pack("!HH", 11, 2)
    )
    fields += (
        struct.pack("!HH", 82, 65535) + struct.pack("!HHI", 0x8000 | 100, 4, 9) + struct.pack("!HH", 1, 8)
    )
    tset = struct.pack("!HHHH", 2, 8 + len(fields), tid, 7) + fields
    records = b""
    for i, name in enumerate(names):
        length = bytes([len(name)]) if len(name) < 255 else b"\xff" + struct.pack("!H", len(name))
        records += bytes([198, 51, 100, i + 1, 203, 0, 113, i + 1]) + struct.pack("!HH", 2000 + i, 53)
        records += length + name + struct.pack("!I", 0xDEADBEEF) + struct.pack("!Q", 5000 + i)
    dset = struct.pack("!HH", tid, 4 + len(records)) + records
    body = tset + dset
    return struct.pack("!HHIII", 10, 16 + len(body), EXPORT, 0, 7) + body


def as_block(datagrams: list[Datagram], width: int = 3000, seed: int = 0) -> tuple:
    """The arguments of ``decode_block`` for ``datagrams``; bytes past each length are random, as
    stale bytes of earlier datagrams are in the receive buffer."""
    sources: list[tuple[str, int]] = []
    index = []
    data = np.random.default_rng(seed).integers(0, 256, (len(datagrams), width), dtype=np.uint8)
    for i, d in enumerate(datagrams):
        if (d.exporter, d.port) not in sources:
            sources.append((d.exporter, d.port))
        index.append(sources.index((d.exporter, d.port)))
        data[i, : len(d.payload)] = np.frombuffer(d.payload, dtype=np.uint8)
    lengths = np.array([len(d.payload) for d in datagrams], dtype=np.int64)
    return data, lengths, np.array(index, dtype=np.intp), sources, datagrams[0].received if datagrams else 0.0
