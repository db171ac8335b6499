"""Variable-length IPFIX (RFC 7011 §7) through both entry points, against independent readings.

Hypothesis draws templates with one to three variable-length fields anywhere among fixed ones
(addresses of either family, ports, counters of full or reduced size, enterprise and unmapped fields),
values from empty to 300 octets in the one- or three-octet length form (the latter also for short
values, as §7 allows), records split across sets and datagrams, set padding and cut records. The
packets are built by a naive encoder written from the RFC (``ipfix_reference``); what the decoder
returns must equal that module's naive reading of the same bytes, which must itself give back the
drawn values, and tshark's reading where tshark is installed.
"""

from __future__ import annotations

from dataclasses import dataclass

import ipfix_reference as ref
import pyarrow as pa
import pytest
from decode_oracle import have_tshark, tshark_flows
from decode_packets import as_block
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ipfix_reference import VARIABLE, Field

from pipeline.decode import Datagram, FlowDecoder
from pipeline.schemas import FLOW_SCHEMA, bytes16_to_ip

EXPORT = 1_800_000_000
EXPORTER = "192.0.2.1"
OTHER_FIXED = [
    [Field(7, 2)],
    [Field(11, 2)],
    [Field(4, 1)],
    [Field(6, 1), Field(6, 2)],  # tcpControlBits, reduced size or full
    [Field(10, 4)],
    [Field(14, 4)],
    [Field(1, 8), Field(1, 4)],  # octetDeltaCount, full or reduced size
    [Field(2, 8), Field(2, 4)],
    [Field(95, 4)],  # applicationId: not mapped, skipped by length
    [Field(100, 4, enterprise=9)],  # an enterprise field
]
VARIABLE_FIELDS = [Field(82, VARIABLE), Field(83, VARIABLE), Field(96, VARIABLE), Field(236, VARIABLE),
                   Field(101, VARIABLE, enterprise=9)]  # fmt: skip


@dataclass
class Case:
    fields: list[Field]
    records: list[tuple[list[bytes], list[bool]]]
    """Each record's values (field order) and, per value, whether its length takes three octets."""
    sets: list[int]
    """Records per data set, in order."""
    packets: list[int]
    """Data sets per datagram, in order."""
    padding: list[int]
    cut: int
    """Octets cut off the last record of the last set (0: none): that record is not whole."""
    template_alone: bool


@st.composite
def templates(draw: st.DrawFn) -> list[Field]:
    v6 = draw(st.booleans())
    fields = [Field(27, 16), Field(28, 16)] if v6 else [Field(8, 4), Field(12, 4)]
    for options in draw(st.lists(st.sampled_from(OTHER_FIXED), unique_by=lambda o: o[0].ie, max_size=8)):
        fields.append(draw(st.sampled_from(options)))
    fields = draw(st.permutations(fields))
    for var in draw(st.lists(st.sampled_from(VARIABLE_FIELDS), min_size=1, max_size=3, unique=True)):
        fields.insert(draw(st.integers(0, len(fields))), var)
    return fields


def value(f: Field) -> st.SearchStrategy[bytes]:
    if f.length == VARIABLE:
        return st.one_of(st.just(b""), st.binary(max_size=20), st.binary(min_size=250, max_size=300))
    if f.ie in (8, 12, 27, 28):  # a non-zero address (records without one are rejected, tested elsewhere)
        return st.binary(min_size=f.length - 1, max_size=f.length - 1).map(lambda b: b"\x01" + b)
    return st.binary(min_size=f.length, max_size=f.length)


@st.composite
def cases(draw: st.DrawFn, max_records: int = 12) -> Case:
    fields = draw(templates())
    n = draw(st.integers(1, max_records))
    records = [([draw(value(f)) for f in fields], [draw(st.booleans()) for _ in fields]) for _ in range(n)]
    sets, left = [], n
    while left:
        sets.append(draw(st.integers(1, left)))
        left -= sets[-1]
    packets, left = [], len(sets)
    while left:
        packets.append(draw(st.integers(1, left)))
        left -= packets[-1]
    padding = [draw(st.integers(0, 3)) for _ in sets]
    return Case(fields, records, sets, packets, padding, draw(st.integers(0, 2)), draw(st.booleans()))


def build(case: Case, domain: int = 1) -> tuple[list[bytes], list[list[bytes]]]:
    """The datagrams of a case, and the values of its records that are whole (the truth)."""
    encoded = [ref.encode_record(case.fields, values, long) for values, long in case.records]
    whole = [values for values, _ in case.records]
    if case.cut:
        encoded[-1] = encoded[-1][: -case.cut]
        whole = whole[:-1]
    sets, at = [], 0
    for count, padding in zip(case.sets, case.padding, strict=True):
        sets.append(ref.data_set(300, b"".join(encoded[at : at + count]), padding if not case.cut else 0))
        at += count
    template = ref.template_set(300, case.fields)
    messages, at, seq = [], 0, 0
    if case.template_alone:
        messages.append(ref.message([template], 0, domain, EXPORT))
    for i, count in enumerate(case.packets):
        body = ([] if case.template_alone or i else [template]) + sets[at : at + count]
        messages.append(ref.message(body, seq, domain, EXPORT))
        seq += sum(case.sets[at : at + count])
        at += count
    return messages, whole


def expected_flows(case: Case, messages: list[bytes], whole: list[list[bytes]]) -> list[dict]:
    """The naive reading of the packets, checked first against the drawn values."""
    records = ref.decode(messages)
    truth = [
        {f.ie: v for f, v in reversed(list(zip(case.fields, values, strict=True))) if not f.enterprise}
        for values in whole
    ]
    assert records == truth
    return [ref.flow_of(r) for r in records]


def ours(batch_rows: list[dict]) -> list[dict]:
    flows = []
    for row in batch_rows:
        flow = {name: row[name] for name in ref.UINT_IES.values()}
        flow["src_addr"] = bytes16_to_ip(row["src_addr"])
        flow["dst_addr"] = bytes16_to_ip(row["dst_addr"])
        flows.append(flow)
    return flows


def assert_flows(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        for name in (*ref.UINT_IES.values(), "src_addr", "dst_addr"):
            assert g[name] == w.get(name, 0), name


def decoded(decoder: FlowDecoder, messages: list[bytes], entry: str, chunk: int) -> list[dict]:
    datagrams = [Datagram(m, EXPORTER, 4739, EXPORT + 0.5) for m in messages]
    rows: list[dict] = []
    for i in range(0, len(datagrams), chunk):
        part = datagrams[i : i + chunk]
        if entry == "decode":
            rows += decoder.decode(part).to_pylist()
        else:
            width = max(len(m) for m in messages)
            batches = decoder.decode_block(*as_block(part, width=width, seed=i))
            rows += pa.Table.from_batches(batches, FLOW_SCHEMA).to_pylist()
    return rows


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases(), st.integers(1, 4))
def test_drawn_variable_length_records_match_the_rfc_reading(case: Case, chunk: int) -> None:
    messages, whole = build(case)
    want = expected_flows(case, messages, whole)
    results = {}
    for entry, size in (("decode", len(messages)), ("decode", chunk), ("decode_block", chunk)):
        decoder = FlowDecoder()
        rows = decoded(decoder, messages, entry, size)
        assert_flows(ours(rows), want)
        assert not decoder.stats.errors, decoder.stats.errors
        assert decoder.stats.flows[EXPORTER] == len(want)
        assert not decoder.stats.sequence_gaps and not decoder.stats.sequence_resets
        results[(entry, size)] = rows
    first, *rest = results.values()
    assert all(r == first for r in rest)  # every column, not only the compared ones


@pytest.mark.peers
@pytest.mark.skipif(not have_tshark(), reason="tshark not installed")
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases(max_records=6))
def test_drawn_variable_length_records_match_tshark(
    tmp_path_factory: pytest.TempPathFactory, case: Case
) -> None:
    case.cut = 0  # tshark reports a cut record as malformed, not as nothing
    messages, whole = build(case)
    theirs = tshark_flows(messages, tmp_path_factory.mktemp("tshark"), port=4739)
    assert len(theirs) == len(whole)
    for entry in ("decode", "decode_block"):
        decoder = FlowDecoder()
        got = ours(decoded(decoder, messages, entry, 2))
        for g, t in zip(got, theirs, strict=True):
            assert {k: g[k] for k in t} == t
