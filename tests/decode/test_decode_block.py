"""``FlowDecoder.decode_block`` (the collector's path: datagrams as rows of one buffer, headers read
with numpy, fast rows gathered in stretches) against ``decode`` (the per-packet walk): the same flows
in the same order, the same counters and the same template/sequence/sampling state, on hand-picked
mixes of odd packets and on hypothesis-drawn streams; and against tshark on the demo capture."""

from __future__ import annotations

import struct

import pyarrow as pa
import pytest
from decode_packets import (
    V4,
    as_block,
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
from scapy.layers.netflow import NetflowHeader, NetflowHeaderV5, NetflowRecordV5

from pipeline.collector.batcher import Batcher
from pipeline.decode import Datagram, DecoderConfig, FlowDecoder
from pipeline.schemas import FLOW_SCHEMA

RECEIVED = 1.8e9 + 0.123456
ROUTER = "192.0.2.1"


def state(decoder: FlowDecoder) -> dict:
    """Everything a later packet's decoding depends on."""
    return {
        "templates": {
            k: {tid: (t.fields, t.scope_count, t.options, t.last_seen) for tid, t in table.items()}
            for k, table in decoder._templates.items()
        },
        "sequence": dict(decoder._sequence),
        "sampling": {k: dict(v) for k, v in decoder._sampling.items()},
        "sysinit": dict(decoder._sysinit),
        "pending": {k: [(p.data, p.ctx, p.received) for p in q] for k, q in decoder._pending.items()},
        "variable_budget": {k: list(v) for k, v in decoder.budget.buckets.items()},
    }


def assert_same(chunks: list[list[Datagram]], config: DecoderConfig | None = None) -> FlowDecoder:
    """Feed the same chunks to both entry points of fresh decoders; compare after each chunk. A third
    decoder writes its flows into a batcher's columns (the collector's way), with batches so small
    that template groups split across them: the same flows in the same order once drained."""
    ref, block, filled = FlowDecoder(config), FlowDecoder(config), FlowDecoder(config)
    batcher = Batcher(FLOW_SCHEMA, max_rows=7, max_seconds=1e9)
    wanted, batches = [], []
    for n, given_chunk in enumerate(chunks):
        chunk = [d._replace(received=d.received + n) for d in given_chunk]  # so template refreshes show
        want = pa.Table.from_batches([ref.decode(chunk)])
        got = block.decode_block(*as_block(chunk, seed=n)) if chunk else []
        assert all(b.schema == FLOW_SCHEMA for b in got)
        assert pa.Table.from_batches(got, schema=FLOW_SCHEMA).equals(want)
        assert block.stats.snapshot() == ref.stats.snapshot()
        assert state(block) == state(ref)
        if chunk:
            assert filled.decode_block(*as_block(chunk, seed=n), into=batcher) == []
        batches += [r.batch for r in batcher.collect(now=0.0)]
        assert all(b.num_rows == 7 for b in batches)
        assert filled.stats.snapshot() == ref.stats.snapshot()
        wanted.append(want)
    batches += [r.batch for r in batcher.drain()]
    everything = pa.concat_tables(wanted) if wanted else pa.table([], schema=FLOW_SCHEMA)
    assert pa.Table.from_batches(batches, schema=FLOW_SCHEMA).equals(everything.cast(FLOW_SCHEMA))
    return block


def v5(n: int, seq: int, engine_id: int = 0, sampling: int = 0) -> bytes:
    records = [
        NetflowRecordV5(src=f"198.51.100.{i + 1}", dst="203.0.113.9", srcport=1000 + i, dstport=53, prot=17,
                        dpkts=i + 1, dOctets=100 * (i + 1), first=3_595_000, last=3_599_000)
        for i in range(n)
    ]  # fmt: skip
    hdr = NetflowHeader() / NetflowHeaderV5(
        count=n, sysUptime=3_600_000, unixSecs=1_800_000_000, unixNanoSeconds=5_000_000,
        flowSequence=seq, engineID=engine_id, samplingInterval=sampling,
    )  # fmt: skip
    return bytes(hdr / b"".join(bytes(r) for r in records))


T9 = template_set(256, V4, ipfix=False)
T9_OTHER = template_set(256, V4[:7], ipfix=False)  # same id, another layout
T9_LATE = template_set(257, V4[:5], ipfix=False)
TI = template_set(300, V4[:5], ipfix=True)
OPT, OPT_DATA = v9_sampling_options(258, 100)
IROWS = [["198.51.100.1", "203.0.113.1", 1, 2, 6], ["198.51.100.2", "203.0.113.2", 3, 4, 17]]


def v9_data(seq: int, n: int = 3, port: int = 1000) -> bytes:
    return v9(data_set(T9, 256, v4_rows(n, port)), seq=seq)


def v9_refresh(seq: int, n: int = 3, port: int = 2000) -> bytes:
    return v9(T9 / data_set(T9, 256, v4_rows(n, port)), seq=seq)


def ipfix_data(seq: int, domain: int = 1) -> bytes:
    return ipfix(data_set(TI, 300, IROWS), seq=seq, domain=domain)


def ipfix_refresh(seq: int, domain: int = 1) -> bytes:
    return ipfix(TI / data_set(TI, 300, IROWS), seq=seq, domain=domain)


def ipfix_unpadded(seq: int) -> bytes:
    """Message length leaves the set padding out (scapy's own encoding): counted, then decoded."""
    raw = bytearray(ipfix_data(seq))
    raw[2:4] = (len(raw) - 2).to_bytes(2, "big")
    return bytes(raw)


def withdraw_ipfix(domain: int = 1) -> bytes:
    body = struct.pack("!HHHH", 2, 8, 300, 0)
    return struct.pack("!HHIII", 10, 16 + len(body), 1_800_000_000, 0, domain) + body


def _count_walks(monkeypatch: pytest.MonkeyPatch) -> list[FlowDecoder]:
    """Records which decoder sent a datagram through the per-packet walk, once per datagram."""
    walked: list[FlowDecoder] = []
    original = FlowDecoder._safe_packet

    def counting(self: FlowDecoder, *args: object) -> None:
        walked.append(self)
        original(self, *args)

    monkeypatch.setattr(FlowDecoder, "_safe_packet", counting)
    return walked


def dg(payload: bytes, exporter: str = "192.0.2.1", port: int = 50000) -> Datagram:
    return Datagram(payload, exporter, port, RECEIVED)


def test_mixed_odd_packets_match_the_per_packet_walk(monkeypatch: pytest.MonkeyPatch) -> None:
    walked = _count_walks(monkeypatch)
    stream = [
        dg(v9_data(0)),  # data before its template: pending, then drained by the next packet
        dg(v9(T9 / data_set(T9, 256, v4_rows(2)), seq=1)),
        dg(v9_data(2)),
        dg(v9_data(3), port=50001),  # another port: another template key, same sequence space
        dg(v9_refresh(9)),  # a gap of 5 packets, template repeated byte for byte
        dg(v9(OPT / OPT_DATA, seq=10)),  # sampling 1:100 from here on
        dg(v9_data(11)),
        dg(v9(T9_OTHER, seq=12)),  # template 256 changes layout mid-block
        dg(v9(data_set(T9_OTHER, 256, [r[:7] for r in v4_rows(2)]), seq=13)),
        dg(v9_refresh(14)),  # back to the first layout: not a pure refresh
        dg(v9_data(3)),  # sequence reset
        dg(v9(data_set(T9_LATE, 257, [r[:5] for r in v4_rows(2)]), seq=4)),  # unknown template: pending
        dg(v9(data_set(T9, 256, v4_rows(2)) / data_set(T9, 256, v4_rows(1)), seq=5)),  # two data sets
        dg(v5(4, 100)),
        dg(v5(2, 104, engine_id=3, sampling=0x4000 | 10)),
        dg(v5(5, 200)[:-30]),  # records truncated
        dg(v5(3, 106, engine_id=3)),
        dg(ipfix_refresh(0), "192.0.2.2"),
        dg(ipfix_data(2), "192.0.2.2"),
        dg(ipfix_data(10), "192.0.2.2"),  # 6 records lost
        dg(ipfix_unpadded(12), "192.0.2.2"),
        dg(ipfix_data(14, domain=2), "192.0.2.2"),  # unknown domain: pending
        dg(ipfix_variable(400, [b"ge-0/0/0", b"xe-1/0/1"]), "192.0.2.2"),
        dg(withdraw_ipfix(), "192.0.2.2"),
        dg(ipfix_data(16), "192.0.2.2"),  # withdrawn template: pending
        dg(b"\x00\x09garbage", "192.0.2.3"),
        dg(b"", "192.0.2.3"),
        dg(v9_data(6)[:30]),
    ]
    decoder = assert_same([stream[:9], stream[9:20], stream[20:], [], stream])
    slow = sum(1 for d in walked if d is decoder)
    assert 0 < slow < 2 * len(stream) - 20, "the fast path was not taken"
    errors = decoder.stats.snapshot()["errors"]
    assert errors[("192.0.2.2", "length_mismatch")] == 2
    assert errors[("192.0.2.1", "records_truncated")] == 2
    assert decoder.stats.sequence_gaps[("192.0.2.2", 1)] > 0
    assert decoder.stats.sequence_resets[("192.0.2.1", 1)] > 0


@pytest.mark.parametrize("key_port", [True, False])
def test_collector_shaped_stream_takes_the_fast_path(monkeypatch: pytest.MonkeyPatch, key_port: bool) -> None:
    """Two exporters (one sending from two ports), a template refresh every 5th packet, 64-packet
    blocks: only a stream's first template packet, and with templates keyed by port the two data
    packets from port 50001 that come before its first template (pending), need the per-packet walk."""
    walked = _count_walks(monkeypatch)
    stream = []
    for i in range(256):
        stream.append(dg(v9_refresh(i) if i % 5 == 0 else v9_data(i), port=50000 + i % 2))
        stream.append(dg(ipfix_refresh(2 * i) if i % 5 == 0 else ipfix_data(2 * i), "192.0.2.2"))
    decoder = assert_same(
        [stream[i : i + 64] for i in range(0, len(stream), 64)],
        DecoderConfig(template_key_includes_port=key_port),
    )
    assert sum(1 for d in walked if d is decoder) == (5 if key_port else 2)
    assert sum(decoder.stats.flows.values()) == 256 * 3 + 256 * 2


def test_orphan_flood_then_normal_rows_in_one_block() -> None:
    """Rows shaped like fast ones whose templates are unknown, many in a row (the walk gives up
    trying them in stretches for a while), then known ones again: still exact."""
    orphans = [dg(ipfix(data_set(TI, 300, IROWS), seq=i, domain=9)) for i in range(150)]
    normal = [dg(v9_refresh(0))] + [dg(v9_data(i)) for i in range(1, 100)]
    assert_same([normal[:1], orphans[:70] + normal[1:50] + orphans[70:] + normal[50:]])


POOL = [
    v9_data,
    lambda s: v9_data(s, n=1),
    v9_refresh,
    lambda s: v9(T9, seq=s),
    lambda s: v9(T9_OTHER / data_set(T9_OTHER, 256, [r[:7] for r in v4_rows(2)]), seq=s),
    lambda s: v9(OPT / OPT_DATA, seq=s),
    lambda s: v9(data_set(T9_LATE, 257, [r[:5] for r in v4_rows(2)]), seq=s),
    lambda s: v9(T9_LATE, seq=s),
    lambda s: v5(3, s),
    lambda s: v5(2, s, engine_id=1, sampling=0x4000 | 7),
    ipfix_data,
    ipfix_refresh,
    ipfix_unpadded,
    lambda s: withdraw_ipfix(),
    lambda s: ipfix_variable(400, [b"ge-0/0/0"]),
    lambda s: b"\x00\x0a\x00\x10" + bytes(12),
]
BUILT = [[f(s) for s in range(8)] for f in POOL]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.integers(0, len(POOL) - 1), st.integers(0, 7), st.integers(0, 2), st.integers(0, 40)),
        min_size=1,
        max_size=40,
    ),
    st.lists(st.integers(1, 12), min_size=1, max_size=6),
    st.booleans(),
)
def test_drawn_streams_match_the_per_packet_walk(
    packets: list[tuple[int, int, int, int]], cuts: list[int], key_port: bool
) -> None:
    stream = []
    for kind, seq, sender, cut in packets:
        raw = BUILT[kind][seq]
        if cut == 40:
            raw = raw[: len(raw) // 2]
        stream.append(dg(raw, ("192.0.2.1", "192.0.2.1", "2001:db8::1")[sender], 50000 + (sender == 1)))
    chunks, pos = [], 0
    for size in cuts * 10:
        chunks.append(stream[pos : pos + size])
        pos += size
        if pos >= len(stream):
            break
    assert_same(chunks, DecoderConfig(template_key_includes_port=key_port, pending_max_sets_per_exporter=3))


def test_short_rows_and_a_narrow_buffer() -> None:
    """Rows narrower than a header (and a buffer narrower than the refresh check needs) stay exact."""
    ref, block = FlowDecoder(), FlowDecoder()
    chunk = [dg(b"\x00\x05"), dg(b"\x00\x09" + bytes(10)), dg(b"\x00\x0a" + bytes(14))]
    want = ref.decode(chunk)
    data, lengths, source, sources, received = as_block(chunk, width=20)
    got = block.decode_block(data, lengths, source, sources, received)
    assert want.num_rows == 0 and got == []
    assert block.stats.snapshot() == ref.stats.snapshot()


def ipfix_variable_data(tid: int, names: list[bytes], seq: int) -> bytes:
    """``ipfix_variable``'s data set without its template set."""
    raw = ipfix_variable(tid, names)
    body = raw[16 + int.from_bytes(raw[18:20], "big") :]
    return struct.pack("!HHIII", 10, 16 + len(body), 1_800_000_000, seq, 7) + body


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.integers(0, 3), st.lists(st.binary(max_size=300), max_size=6), st.booleans()),
        min_size=1,
        max_size=40,
    ),
    st.lists(st.integers(1, 12), min_size=1, max_size=6),
    st.integers(0, 12),
    st.integers(1, 3),
)
@example(  # new streams past max_streams within one fast stretch: evictions fall packet by packet
    packets=[(0, [], False)] * 3
    + [(0, [], True), (2, [], False), (1, [], False)]
    + [(2, [], True), (0, [], False), (2, [], False)],
    cuts=[3],
    budget=1,
    max_streams=2,
)
def test_variable_length_rows_and_their_budget_match_the_per_packet_walk(
    packets: list[tuple[int, list[bytes], bool]], cuts: list[int], budget: int, max_streams: int
) -> None:
    """Variable-length rows take the fast path until an exporter's budget would cut one (or its new
    budget would evict another exporter's): the same flows, counters and budget cuts as the walk,
    with budgets that run out within a block and refill between blocks (a second apart)."""
    stream = []
    for i, (sender, names, with_template) in enumerate(packets):
        raw = ipfix_variable(400, names) if with_template else ipfix_variable_data(400, names, i)
        stream.append(dg(raw, ("192.0.2.1", "192.0.2.2", "192.0.2.3", "2001:db8::1")[sender]))
    chunks, pos = [], 0
    for size in cuts * 10:
        chunks.append(stream[pos : pos + size])
        pos += size
        if pos >= len(stream):
            break
    assert_same(chunks, DecoderConfig(variable_records_per_second=budget, max_streams=max_streams))


@pytest.mark.parametrize("budget", [500_000, 50])
def test_variable_length_stream_takes_the_fast_path(monkeypatch: pytest.MonkeyPatch, budget: int) -> None:
    """Only the template's first packet needs the per-packet walk; with a budget of 50 records a
    second (blocks a second apart), also the rows from the first one it cuts: in the first block,
    2 records then 15 fast rows of 3 (45), the 16th would reach 50; in the second, 16 fast rows (48)."""
    walked = _count_walks(monkeypatch)
    stream = [dg(ipfix_variable(400, [b"ge-0/0/0", b"x" * 300]))] + [
        dg(ipfix_variable_data(400, [b"a", b"", b"y" * 260], i)) for i in range(1, 64)
    ]
    decoder = assert_same([stream[:32], stream[32:]], DecoderConfig(variable_records_per_second=budget))
    assert sum(1 for d in walked if d is decoder) == (1 if budget > 1000 else 1 + (31 - 15) + (32 - 16))
    assert decoder.stats.flows[ROUTER] == (2 + 63 * 3 if budget > 1000 else 50 + 50)
