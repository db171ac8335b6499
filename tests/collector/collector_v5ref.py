"""A naive, test-only NetFlow v5 decoder (``struct`` per record) used to unit-test the service's
plumbing before/independently of the real decoder. Not a reference for field semantics beyond v5."""

from __future__ import annotations

import datetime as dt
import struct
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import pyarrow as pa

from pipeline.schemas import FLOW_SCHEMA, ip_to_bytes16

_HDR = struct.Struct("!HHIIIIBBH")
_REC = struct.Struct("!4s4s4sHHIIIIHHxBBBHHBBxx")


class Dgram(NamedTuple):
    payload: bytes
    exporter: str
    port: int
    received: float


class Stats:
    def __init__(self) -> None:
        self.packets: Counter = Counter()
        self.errors: Counter = Counter()

    def snapshot(self) -> dict:
        return {"packets": dict(self.packets), "errors": dict(self.errors)}


class V5Decoder:
    def __init__(self) -> None:
        self.stats = Stats()
        self.saved_to = None

    def decode(self, datagrams) -> pa.RecordBatch:
        rows: dict[str, list] = {f.name: [] for f in FLOW_SCHEMA}
        for d in datagrams:
            if len(d.payload) < 24 or _HDR.unpack_from(d.payload)[0] != 5:
                self.stats.errors[(d.exporter, "not_v5")] += 1
                continue
            self.stats.packets[(d.exporter, 5)] += 1
            count = _HDR.unpack_from(d.payload)[1]
            for i in range(count):
                r = _REC.unpack_from(d.payload, 24 + 48 * i)
                (
                    src,
                    dst,
                    nh,
                    inp,
                    out,
                    pk,
                    octs,
                    _first,
                    _last,
                    sp,
                    dp,
                    flags,
                    proto,
                    tos,
                    sas,
                    das,
                    sm,
                    dm,
                ) = r
                rows["time_received"].append(dt.datetime.fromtimestamp(d.received, dt.UTC))
                rows["exporter"].append(ip_to_bytes16(d.exporter))
                rows["exporter_port"].append(d.port)
                rows["observation_domain"].append(0)
                rows["flow_version"].append(5)
                rows["flow_start"].append(None)
                rows["flow_end"].append(None)
                for k, v in (("src_addr", src), ("dst_addr", dst), ("next_hop", nh)):
                    rows[k].append(ip_to_bytes16(".".join(map(str, v))))
                for k, v in (
                    ("src_port", sp),
                    ("dst_port", dp),
                    ("protocol", proto),
                    ("tcp_flags", flags),
                    ("tos", tos),
                    ("packets", pk),
                    ("octets", octs),
                    ("input_if", inp),
                    ("output_if", out),
                    ("src_as", sas),
                    ("dst_as", das),
                    ("src_mask", sm),
                    ("dst_mask", dm),
                    ("ip_version", 4),
                    ("sampling_rate", 1),
                ):
                    rows[k].append(v)
        return pa.RecordBatch.from_pydict(rows, schema=FLOW_SCHEMA)

    def expire(self, now: float) -> None:
        pass

    def save_state(self, path) -> None:
        self.saved_to = path
        Path(path).write_text("v5 has no templates\n")

    def load_state(self, path) -> None:
        pass
