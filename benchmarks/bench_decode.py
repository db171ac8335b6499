"""Decode throughput: realistic export packets (30 records each) decoded in collector-sized batches.

    .venv/bin/python -m benchmarks.bench_decode [--seconds 3]

Cases: NetFlow v5; v9 and IPFIX fixed-length templates of 20 fields; IPFIX templates with one
variable-length field (interfaceName, last) and with two (interfaceName among the fixed fields,
applicationName last). Each through ``FlowDecoder.decode`` (Datagram objects, the per-packet walk)
and ``FlowDecoder.decode_block`` (the collector's path: rows of a receive buffer). Figures are flows
per CPU-second of this one process (``time.process_time``), i.e. per core. Packets are packed with numpy (the tests, not this file,
hold the independent-encoder checks).
"""

from __future__ import annotations

import argparse
import struct
import time

import numpy as np

from benchmarks.machine import machine_line
from pipeline.allocator import tune_allocator
from pipeline.decode import Datagram, DecoderConfig, FlowDecoder

EXPORT = 1_790_000_000
RECORDS = 30
BATCH = 512  # datagrams per decode call, as the collector's recvmmsg loop hands them over
MAX_DATAGRAM = 65535  # the collector's default receive slot per datagram
V9_FIELDS = [(8, 4), (12, 4), (15, 4), (7, 2), (11, 2), (4, 1), (5, 1), (6, 1), (10, 4), (14, 4), (16, 4),
             (17, 4), (9, 1), (13, 1), (2, 4), (1, 4), (22, 4), (21, 4), (61, 1), (48, 1)]  # fmt: skip
IPFIX_FIELDS = [(8, 4), (12, 4), (15, 4), (7, 2), (11, 2), (4, 1), (5, 1), (6, 2), (10, 4), (14, 4), (16, 4),
                (17, 4), (9, 1), (13, 1), (2, 8), (1, 8), (152, 8), (153, 8), (61, 1), (89, 4)]  # fmt: skip


def _records(rng: np.random.Generator, fields: list[tuple[int, int]]) -> bytes:
    dtype = np.dtype([(f"f{t}", {1: ">u1", 2: ">u2", 4: ">u4", 8: ">u8"}[n]) for t, n in fields])
    rec = np.zeros(RECORDS, dtype=dtype)
    for name in dtype.names:
        rec[name] = rng.integers(0, np.iinfo(dtype[name]).max, RECORDS, dtype=np.uint64, endpoint=True)
    if "f152" in dtype.names:
        rec["f152"], rec["f153"] = EXPORT * 1000 - 5000, EXPORT * 1000 - 1000
    else:
        rec["f22"], rec["f21"] = 3_595_000, 3_599_000
    return rec.tobytes()


def _template(set_id: int, tid: int, fields: list[tuple[int, int]]) -> bytes:
    body = struct.pack("!HH", tid, len(fields)) + b"".join(struct.pack("!HH", t, n) for t, n in fields)
    return struct.pack("!HH", set_id, 4 + len(body)) + body


def v5_packets(rng: np.random.Generator, n: int) -> list[bytes]:
    out = []
    for i in range(n):
        recs = rng.integers(0, 256, RECORDS * 48, dtype=np.uint8).tobytes()
        out.append(struct.pack("!HHIIIIBBH", 5, RECORDS, 3_600_000, EXPORT, 0, i * RECORDS, 0, 0, 0) + recs)
    return out


def v9_packets(rng: np.random.Generator, n: int) -> tuple[bytes, list[bytes]]:
    tmpl = struct.pack("!HHIIII", 9, 1, 3_600_000, EXPORT, 0, 1) + _template(0, 256, V9_FIELDS)
    out = []
    for i in range(n):
        data = _records(rng, V9_FIELDS)
        out.append(
            struct.pack("!HHIIII", 9, RECORDS, 3_600_000, EXPORT, i + 1, 1)
            + struct.pack("!HH", 256, 4 + len(data))
            + data
        )
    return tmpl, out


def ipfix_packets(rng: np.random.Generator, n: int) -> tuple[bytes, list[bytes]]:
    tset = _template(2, 256, IPFIX_FIELDS)
    tmpl = struct.pack("!HHIII", 10, 16 + len(tset), EXPORT, 0, 1) + tset
    out = []
    for i in range(n):
        data = _records(rng, IPFIX_FIELDS)
        sets = struct.pack("!HH", 256, 4 + len(data)) + data
        out.append(struct.pack("!HHIII", 10, 16 + len(sets), EXPORT, i * RECORDS, 1) + sets)
    return tmpl, out


VARIABLE = 65535
NAMES = {
    82: [b"xe-0/0/%d" % j for j in range(48)],  # interfaceName
    96: [b"https", b"dns", b"quic", b"ssh", b"ntp", b"bgp", b"imaps"],  # applicationName
}


def ipfix_variable_packets(
    rng: np.random.Generator, n: int, fields: list[tuple[int, int]], tid: int
) -> tuple[bytes, list[bytes]]:
    """IPFIX packets of a template with variable-length fields (``VARIABLE`` length), whose values
    come from ``NAMES`` in turn (one-byte length prefixes, as routers send names)."""
    tset = _template(2, tid, fields)
    tmpl = struct.pack("!HHIII", 10, 16 + len(tset), EXPORT, 0, 1) + tset
    fixed = [f for f in fields if f[1] != VARIABLE]
    dtype = np.dtype([(f"f{t}", {1: ">u1", 2: ">u2", 4: ">u4", 8: ">u8"}[k]) for t, k in fixed])
    out = []
    for i in range(n):
        rec = np.frombuffer(_records(rng, fixed), dtype=dtype)
        body = b""
        for j, r in enumerate(rec):
            for t, k in fields:
                if k == VARIABLE:
                    name = NAMES[t][(i + j) % len(NAMES[t])]
                    body += bytes([len(name)]) + name
                else:
                    body += r[f"f{t}"].tobytes()
        sets = struct.pack("!HH", tid, 4 + len(body)) + body
        out.append(struct.pack("!HHIII", 10, 16 + len(sets), EXPORT, i * RECORDS, 1) + sets)
    return tmpl, out


ONE_VARIABLE = [*IPFIX_FIELDS[:19], (82, VARIABLE)]
TWO_VARIABLE = [*IPFIX_FIELDS[:10], (82, VARIABLE), *IPFIX_FIELDS[10:18], (96, VARIABLE)]


def as_block(packets: list[bytes]) -> tuple:
    """``decode_block`` arguments laid out as the collector's receive buffer holds them: one row of
    ``MAX_DATAGRAM`` bytes per datagram."""
    data = np.zeros((len(packets), MAX_DATAGRAM), dtype=np.uint8)
    for i, p in enumerate(packets):
        data[i, : len(p)] = np.frombuffer(p, dtype=np.uint8)
    lengths = np.array([len(p) for p in packets], dtype=np.int64)
    return data, lengths, np.zeros(len(packets), dtype=np.intp), [("192.0.2.1", 2055)], float(EXPORT)


def measure(name: str, template: bytes | None, packets: list[bytes], seconds: float, block: bool) -> float:
    """``decode`` on Datagram lists, or (``block``) ``decode_block`` on receive-buffer-shaped arrays."""
    # Every packet of a case is "received" at the same instant: no per-exporter budget for
    # variable-length records would refill, and the budget is not what is measured here.
    decoder = FlowDecoder(DecoderConfig(variable_records_per_second=1 << 40))
    if template is not None:
        decoder.decode([Datagram(template, "192.0.2.1", 2055, EXPORT)])
    chunks = [packets[i : i + BATCH] for i in range(0, len(packets), BATCH)]
    if block:
        blocks = [as_block(c) for c in chunks]

        def run(i: int) -> int:
            return sum(b.num_rows for b in decoder.decode_block(*blocks[i]))
    else:
        batches = [[Datagram(p, "192.0.2.1", 2055, EXPORT) for p in c] for c in chunks]

        def run(i: int) -> int:
            return decoder.decode(batches[i]).num_rows

    run(0)  # warm up
    flows, start = 0, time.process_time()
    while time.process_time() - start < seconds:
        for i in range(len(chunks)):
            flows += run(i)
    cpu = time.process_time() - start
    rate = flows / cpu
    assert not decoder.stats.errors, decoder.stats.errors
    print(f"{name:46s} {rate / 1e6:7.2f} M flows/s per core  ({flows:,} flows, {cpu:.2f} CPU-s)")
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="CPU-seconds per case")
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    tuned = tune_allocator()  # as the shoal CLI does for every command
    print(machine_line())
    print(f"allocator tuned: {tuned}")
    print(f"{RECORDS} records per packet, {BATCH} packets per decode call")
    cases = [
        ("NetFlow v5", None, v5_packets(rng, 2048)),
        ("NetFlow v9, 20 fixed fields", *v9_packets(rng, 2048)),
        ("IPFIX, 20 fixed fields", *ipfix_packets(rng, 2048)),
        ("IPFIX, 19 fixed + 1 variable field", *ipfix_variable_packets(rng, 1024, ONE_VARIABLE, 257)),
        ("IPFIX, 18 fixed + 2 variable fields", *ipfix_variable_packets(rng, 1024, TWO_VARIABLE, 258)),
    ]
    for block in (False, True):
        print(
            "decode_block (collector path: rows of a receive buffer)" if block else "decode (Datagram list)"
        )
        for name, template, packets in cases:
            measure(name, template, packets, args.seconds, block)


if __name__ == "__main__":
    main()
