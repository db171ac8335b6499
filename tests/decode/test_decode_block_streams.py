"""``decode_block`` on blocks from hundreds of export streams (a collector hearing an NREN's routers)
against ``decode`` (the per-packet walk): the same flows in the same order, counters and state.

Streams of one template layout share a record group and a block run (one decode for all of them),
while each keeps its own sampling rate, system uptime, sequence space and budget, so the blocks here
mix, per stream: NetFlow v9 with and without its own sampling options (a rate per stream), v9 of
another layout, IPFIX in several observation domains, NetFlow v5 with header sampling, IPFIX with a
variable-length field; two source ports per exporter (with templates keyed by port or not), some
sharing a sequence space; sequence gaps and resets; template refreshes, and a template replaced by
another layout mid-run; and bounds (``max_streams``, ``max_stat_exporters``) the streams exceed, so
evictions and folded counters must fall exactly as packet by packet.
"""

from __future__ import annotations

import ipaddress
import struct
from collections import Counter

import numpy as np
import pytest
from decode_packets import (
    EXPORT,
    V4,
    data_set,
    ipfix,
    ipfix_variable,
    template_set,
    v4_rows,
    v9,
    v9_sampling_options,
)
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_decode_block import RECEIVED, TI, _count_walks, assert_same, v5

from pipeline.decode import Datagram, DecoderConfig, FlowDecoder

T9 = template_set(256, V4, ipfix=False)
T9_OTHER = template_set(256, V4[:7], ipfix=False)  # same id, another layout
OPT_TEMPLATE = v9_sampling_options(258, 1)[0]
V9_DATA = {n: v9(data_set(T9, 256, v4_rows(n, 1000 + n))) for n in (1, 2, 3, 4)}
V9_OTHER_DATA = {n: v9(data_set(T9_OTHER, 256, [r[:7] for r in v4_rows(n, 2000)])) for n in (1, 2, 3)}
V9_REFRESH = {n: v9(T9 / data_set(T9, 256, v4_rows(n, 3000))) for n in (1, 2)}
IROWS = [["198.51.100.7", "203.0.113.7", 5, 6, 6], ["198.51.100.8", "203.0.113.8", 7, 8, 17]]
IPFIX_DATA = {n: ipfix(data_set(TI, 300, IROWS[:n])) for n in (1, 2)}
V5_DATA = {n: v5(n, 0, sampling=0x4000 | 10) for n in (1, 2, 3)}
NAMES = [b"ge-0/0/0", b"", b"xe-1/2/3.100"]


def with_header(payload: bytes, version: int, seq: int, domain: int) -> bytes:
    """``payload`` with its sequence number and observation domain (v5: engine id) set."""
    raw = bytearray(payload)
    if version == 9:
        raw[12:20] = struct.pack("!II", seq, domain)
    elif version == 10:
        raw[8:16] = struct.pack("!II", seq, domain)
    else:
        raw[16:20] = struct.pack("!I", seq)
        raw[21] = domain & 0xFF
    return bytes(raw)


def many_streams(count: int, seed: int, blocks: int = 4) -> tuple[list[list[Datagram]], int]:
    """``blocks`` blocks of data from ``count`` streams, in a random interleaving, after one block of
    their templates (and options). Exporter ``i // 2`` sends from two ports. Also returns how many
    datagrams need the per-packet walk (templates keyed by port): the first block, and each template
    replaced by another layout (a refresh repeats the stream's last plain template set: fast)."""
    rng = np.random.default_rng(seed)
    kinds = rng.integers(0, 6, count)  # v9, v9 + own sampling rate, v9 other layout, IPFIX, v5, variable
    exporters = [
        (f"198.18.{i // 400}.{i // 2 % 200 + 1}" if i % 7 else f"2001:db8::{i // 2:x}", 40000 + i % 2)
        for i in range(count)
    ]
    domains = rng.integers(0, 3, count)
    seqs = [0] * count

    def packet(i: int, payload: bytes, version: int, units: int) -> Datagram:
        seq = seqs[i]
        roll = rng.random()
        if roll < 0.03:
            seq += int(rng.integers(1, 50))  # lost packets
        elif roll < 0.05:
            seq = max(0, seq - int(rng.integers(1, 20)))  # a restart or reordering
        seqs[i] = seq + units
        domain = int(domains[i]) if version != 10 else int(domains[i]) + 5
        return Datagram(with_header(payload, version, seq, domain), *exporters[i], RECEIVED)

    first, walks = [], 0
    for i, kind in enumerate(kinds.tolist()):
        if kind in (0, 1):
            body = T9 / data_set(T9, 256, v4_rows(1))
            if kind == 1:
                interval = int(rng.integers(2, 5000))
                body = (
                    T9 / OPT_TEMPLATE / v9_sampling_options(258, interval)[1] / data_set(T9, 256, v4_rows(1))
                )
            first.append(packet(i, v9(body), 9, 1))
        elif kind == 2:
            first.append(packet(i, v9(T9_OTHER / data_set(T9_OTHER, 256, [r[:7] for r in v4_rows(1)])), 9, 1))
        elif kind == 3:
            first.append(packet(i, ipfix(TI / data_set(TI, 300, IROWS)), 10, 2))
        elif kind == 5:
            first.append(packet(i, ipfix_variable(400, NAMES), 10, len(NAMES)))
    chunks = [first]
    for _ in range(blocks):
        chunk = []
        for i in rng.permutation(np.repeat(np.arange(count), rng.integers(1, 4, count))).tolist():
            kind, roll = int(kinds[i]), rng.random()
            if kind in (0, 1):
                if roll < 0.02:  # another layout under the same template id: the walk, then new state
                    kinds[i], walks = 2, walks + 1
                    body = v9(T9_OTHER / data_set(T9_OTHER, 256, [r[:7] for r in v4_rows(2)]))
                    chunk.append(packet(i, body, 9, 1))
                elif roll < 0.1:
                    chunk.append(packet(i, V9_REFRESH[int(rng.integers(1, 3))], 9, 1))
                else:
                    chunk.append(packet(i, V9_DATA[int(rng.integers(1, 5))], 9, 1))
            elif kind == 2:
                chunk.append(packet(i, V9_OTHER_DATA[int(rng.integers(1, 4))], 9, 1))
            elif kind == 3:
                n = int(rng.integers(1, 3))
                chunk.append(packet(i, IPFIX_DATA[n], 10, n))
            elif kind == 4:
                n = int(rng.integers(1, 4))
                chunk.append(packet(i, V5_DATA[n], 5, n))
            else:
                names = NAMES[: int(rng.integers(1, 4))]
                raw = ipfix_variable(400, names)
                body = raw[16 + int.from_bytes(raw[18:20], "big") :]
                raw = struct.pack("!HHIII", 10, 16 + len(body), EXPORT, 0, 0) + body
                chunk.append(packet(i, raw, 10, len(names)))
        chunks.append(chunk)
    return chunks, walks + len(first)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(2, 320),
    st.integers(0, 2**32 - 1),
    st.sampled_from([16, 200, 65_536]),
    st.sampled_from([40, 4_096]),
    st.booleans(),
    st.sampled_from([60, 500_000]),
)
@example(count=300, seed=1, max_streams=200, max_stat_exporters=40, key_port=False, budget=60)
@example(count=256, seed=2, max_streams=65_536, max_stat_exporters=4_096, key_port=True, budget=500_000)
def test_hundreds_of_streams_per_block_match_the_per_packet_walk(
    count: int, seed: int, max_streams: int, max_stat_exporters: int, key_port: bool, budget: int
) -> None:
    config = DecoderConfig(
        max_streams=max_streams,
        max_stat_exporters=max_stat_exporters,
        template_key_includes_port=key_port,
        variable_records_per_second=budget,
    )
    assert_same(many_streams(count, seed)[0], config)


@pytest.mark.parametrize("count", [16, 256])
def test_hundreds_of_streams_take_the_fast_path(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    """Only a stream's first packet (templates and options) and a template replaced by another layout
    need the per-packet walk: the rest of every block, whatever its number of streams, is fast."""
    walked = _count_walks(monkeypatch)
    chunks, walks = many_streams(count, seed=3)
    decoder = assert_same(chunks)
    assert sum(1 for d in walked if d is decoder) == walks
    assert sum(decoder.stats.flows.values()) > 0


ADDRESSES = ["192.0.2.1", "192.0.2.2", "198.18.1.7", "2001:db8::1", "2001:db8::1:0", "::"]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(ADDRESSES), st.integers(1, 5)), min_size=1, max_size=60))
def test_flows_are_counted_per_exporter_in_address_order(stretches: list[tuple[str, int]]) -> None:
    """Rows in stretches of one exporter (a packet's records), many exporters interleaved: each
    exporter's rows counted once, exporters added in address byte order (a bounded counter folds the
    same ones whatever the path), as a Counter over ``ipaddress`` gives."""
    decoder = FlowDecoder()
    rows = [ipaddress.ip_address(address) for address, n in stretches for _ in range(n)]
    packed = [_packed16(str(a)) for a in rows]
    counted: Counter[str] = Counter()
    decoder.streams.count_by_exporter(counted, np.frombuffer(b"".join(packed), np.uint8).reshape(-1, 16))
    want = Counter(str(a) for a in rows)
    assert counted == want
    assert list(counted) == [str(a) for a in sorted(want, key=_packed16)]


def _packed16(text: str) -> bytes:
    address = ipaddress.ip_address(text)
    return address.packed if address.version == 6 else ipaddress.IPv6Address(f"::ffff:{address}").packed


T_SAMPLED = template_set(256, [*V4, (48, 1)], ipfix=True)  # records name their sampler (IE 48)


def sampler_options(rates: dict[int, int], domain: int = 1) -> bytes:
    """IPFIX options template (scope observationDomainId; samplerId, samplingInterval) and records."""
    tpl = struct.pack("!HHH", 400, 3, 1) + struct.pack("!HHHHHH", 149, 4, 48, 1, 34, 4)
    records = b"".join(struct.pack("!IBI", domain, sid, rate) for sid, rate in rates.items())
    body = struct.pack("!HH", 3, 4 + len(tpl)) + tpl + struct.pack("!HH", 400, 4 + len(records)) + records
    return struct.pack("!HHIII", 10, 16 + len(body), EXPORT, 0, domain) + body


def test_records_naming_samplers_take_their_own_streams_rates() -> None:
    """Streams with equal templates share a group, except when records name a sampler: its rate comes
    from the stream's own options (two routers, both with samplers 1 and 2, at other rates)."""
    rates = {"192.0.2.1": {1: 100, 2: 1000}, "192.0.2.2": {1: 7, 2: 70}}
    first = [Datagram(sampler_options(r), ex, 4739, RECEIVED) for ex, r in rates.items()]
    first += [Datagram(ipfix(T_SAMPLED / data_set(T_SAMPLED, 256, [])), ex, 4739, RECEIVED) for ex in rates]
    data = []
    for seq in range(6):
        for ex in rates:
            rows = [[*row, 1 + (i + seq) % 2] for i, row in enumerate(v4_rows(2))]
            data.append(Datagram(ipfix(data_set(T_SAMPLED, 256, rows), seq=2 * seq), ex, 4739, RECEIVED))
    decoder = FlowDecoder()
    decoder.decode(first)
    batch = decoder.decode(data)
    got = list(
        zip(batch.column("exporter").to_pylist(), batch.column("sampling_rate").to_pylist(), strict=True)
    )
    want = [
        (ipaddress.IPv6Address(f"::ffff:{ex}").packed, rates[ex][1 + (i + seq) % 2])
        for seq in range(6) for ex in rates for i in range(2)
    ]  # fmt: skip
    assert sorted(got) == sorted(want)
    assert_same([first, data[:5], data[5:]])
