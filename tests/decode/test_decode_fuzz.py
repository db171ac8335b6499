"""Random and mutated packets never crash the decoder, never trip its internal-error guard, and the
counts it reports agree with what it returns."""

from __future__ import annotations

import json
import struct
import tempfile
from pathlib import Path

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
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.decode import Datagram, DecoderConfig, FlowDecoder
from pipeline.runtime.replay import read_capture
from pipeline.samples import DEMO_TRAFFIC
from pipeline.schemas import FLOW_SCHEMA

EARLIEST_US = 631_152_000 * 1_000_000  # 1990-01-01
_T4 = template_set(256, V4, ipfix=False)
_I4 = template_set(300, V4[:5], ipfix=True)
_OPT, _OPT_DATA = v9_sampling_options(257, 100)
SEEDS = [
    v9(_T4 / data_set(_T4, 256, v4_rows(5))),
    v9(_OPT / _OPT_DATA),
    ipfix(_I4 / data_set(_I4, 300, [["198.51.100.1", "203.0.113.1", 1, 2, 6]] * 4)),
    ipfix_variable(400, [b"ge-0/0/0", b"x" * 260]),
    *[d.payload for d in list(read_capture(DEMO_TRAFFIC))[:6]],
]


def check(decoder: FlowDecoder, payloads: list[bytes]) -> None:
    before = sum(decoder.stats.flows.values())
    batch = decoder.decode([Datagram(p, "192.0.2.1", 2055, 1.8e9) for p in payloads])
    assert batch.schema == FLOW_SCHEMA
    assert sum(decoder.stats.flows.values()) - before == batch.num_rows
    assert not any(reason == "internal_error" for _, reason in decoder.stats.errors)
    batch.validate(full=True)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=600), min_size=1, max_size=8))
def test_random_bytes(payloads: list[bytes]) -> None:
    check(FlowDecoder(), payloads)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.sampled_from(SEEDS),
            st.lists(st.tuples(st.integers(0, 4000), st.integers(0, 255)), max_size=6),
            st.integers(0, 4000),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_mutated_packets(cases: list[tuple[bytes, list[tuple[int, int]], int]]) -> None:
    payloads = []
    for seed, flips, cut in cases:
        raw = bytearray(seed)
        for pos, value in flips:
            raw[pos % len(raw)] = value
        payloads.append(bytes(raw[: max(cut, 1)]) if cut < len(raw) else bytes(raw))
    # Small limits so floods and pending buffers hit their bounds too.
    check(FlowDecoder(DecoderConfig(max_templates_per_exporter=4, pending_max_sets_per_exporter=3)), payloads)


def test_template_flood_is_bounded() -> None:
    decoder = FlowDecoder(DecoderConfig(max_templates_per_exporter=16))
    floods = [v9(template_set(256 + i, V4, ipfix=False)) for i in range(200)]
    check(decoder, floods)
    assert decoder.stats.templates_active["192.0.2.1"] == 16
    assert decoder.stats.errors[("192.0.2.1", "template_limit")] == 184


# -- options records, record times and the global caps (issue 15) ------------------------------------
def _raw_ipfix(body: bytes, domain: int = 1, seq: int = 0) -> bytes:
    return struct.pack("!HHIII", 10, 16 + len(body), EXPORT, seq, domain) + body


_OPTION_IES = [(160, 8), (34, 4), (305, 4), (306, 4), (48, 1), (302, 4), (50, 4)]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.sampled_from(_OPTION_IES), min_size=1, max_size=5, unique=True),
    st.lists(st.integers(0, 2**64 - 1), min_size=5, max_size=5),
    st.lists(st.integers(0, 2**32 - 1), min_size=2, max_size=2),
)
def test_options_records_never_poison_state(
    options: list[tuple[int, int]], values: list[int], uptimes: list[int]
) -> None:
    """Any options record (sysinit, sampling interval, packet interval/space, sampler id) with any
    values: later flows still decode with sane times and rates, and the saved state restores."""
    otpl = struct.pack("!HHH", 400, 1 + len(options), 1) + struct.pack("!HH", 149, 4)
    otpl += b"".join(struct.pack("!HH", ie, n) for ie, n in options)
    record = struct.pack("!I", 1) + b"".join(
        (v % (1 << (8 * n))).to_bytes(n, "big") for (_, n), v in zip(options, values, strict=False)
    )
    opts = struct.pack("!HH", 3, 4 + len(otpl)) + otpl + struct.pack("!HH", 400, 4 + len(record)) + record
    rows = v4_rows(2)
    for row, uptime in zip(rows, uptimes, strict=True):
        row[-2:] = [uptime, uptime]
    decoder = FlowDecoder()
    check(decoder, [_raw_ipfix(opts), ipfix(_I4_UPTIME / data_set(_I4_UPTIME, 256, rows))])
    batch = decoder.decode(
        [Datagram(ipfix(data_set(_I4_UPTIME, 256, rows), seq=2), "192.0.2.1", 2055, 1.8e9)]
    )
    assert batch.num_rows == 2
    _sane_times(batch, 1.8e9)
    assert all(1 <= r <= 0xFFFFFFFF for r in batch.column("sampling_rate").to_pylist())
    with tempfile.TemporaryDirectory() as tmp:
        decoder.save_state(Path(tmp) / "state")
        restarted = FlowDecoder()
        restarted.load_state(Path(tmp) / "state")
        again = restarted.decode(
            [Datagram(ipfix(data_set(_I4_UPTIME, 256, rows), seq=3), "192.0.2.1", 2055, 1.8e9)]
        )
        assert again.num_rows == 2
        assert again.column("flow_start").equals(batch.column("flow_start"))


_I4_UPTIME = template_set(256, V4, ipfix=True)
_TIMES = template_set(310, [(8, 4), (12, 4), (152, 8), (153, 8), (161, 4), (158, 4)], ipfix=True)


def _sane_times(batch, received: float) -> None:
    """Every time is null or between 1990 and a week after reception, and converts to Python."""
    for name in ("flow_start", "flow_end"):
        for value in batch.column(name).cast("int64").to_pylist():
            assert value is None or EARLIEST_US <= value <= (received + 7 * 86_400) * 1e6
    batch.to_pylist()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1),
                  st.integers(0, 2**32 - 1)),
        min_size=1, max_size=6,
    ),
    st.sampled_from([0.0, 1.8e9, 4.1e9]),
)  # fmt: skip
def test_record_times_are_null_or_in_range(times: list[tuple[int, int, int, int]], received: float) -> None:
    """flowStart/EndMilliseconds, flowDurationMilliseconds and flowEndDeltaMicroseconds with any value
    (and any collector clock): a time is in range or null, never an overflow or year 33658."""
    rows = [["198.51.100.1", "203.0.113.1", *t] for t in times]
    decoder = FlowDecoder()
    batch = decoder.decode(
        [Datagram(ipfix(_TIMES / data_set(_TIMES, 310, rows)), "192.0.2.1", 2055, received)]
    )
    assert batch.num_rows == len(rows)
    assert not any(reason == "internal_error" for _, reason in decoder.stats.errors)
    _sane_times(batch, received)
    nulls = batch.column("flow_start").null_count + batch.column("flow_end").null_count
    rejected = decoder.stats.rows_rejected[("192.0.2.1", "time_out_of_range")]
    assert (nulls > 0) == (rejected > 0) and rejected <= nulls


_SOURCES = [f"10.0.0.{i}" for i in range(1, 40)]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.sampled_from(_SOURCES), st.integers(1, 6), st.integers(0, 3),
            st.sampled_from(["template", "data", "orphan", "options"]), st.integers(256, 270),
        ),
        min_size=1, max_size=120,
    )
)  # fmt: skip
def test_global_caps_hold_for_any_mix_of_senders(packets: list[tuple[str, int, int, str, int]]) -> None:
    """Templates, pending data, per-stream state and counters stay within their caps whatever a mix
    of senders, ports and domains sends; nothing raises; the state file stays within the caps."""
    config = DecoderConfig(max_templates=20, max_templates_per_exporter=3, pending_max_bytes=2000,
                           max_streams=10, max_stat_exporters=8)  # fmt: skip
    decoder = FlowDecoder(config)
    for i, (source, port, domain, kind, tid) in enumerate(packets):
        tset = template_set(tid, V4[:5], ipfix=True)
        if kind == "template":
            body = tset
        elif kind == "data":
            body = tset / data_set(tset, tid, [["198.51.100.1", "203.0.113.1", 1, 2, 6]] * 3)
        elif kind == "orphan":
            body = struct.pack("!HH", tid + 1000, 404) + bytes(400)
        else:
            body = _OPT / _OPT_DATA
        payload = _raw_ipfix(bytes(body), domain, i) if kind in ("orphan", "template", "data") else v9(body)
        decoder.decode([Datagram(payload, source, port, 1.8e9 + i)])
        assert sum(len(t) for t in decoder._templates.values()) <= 20
        assert all(len(t) <= 3 for t in decoder._templates.values())
        assert decoder._pending_bytes <= 2000
        assert max(len(decoder._sequence), len(decoder._sysinit), len(decoder._sampling)) <= 10
        assert max(len(decoder.stats.packets), len(decoder.stats.flows), len(decoder.stats.errors)) <= 8 + 40
    assert not any(reason == "internal_error" for _, reason in decoder.stats.errors)
    assert sum(decoder.stats.templates_active.values()) == sum(len(t) for t in decoder._templates.values())
    with tempfile.TemporaryDirectory() as tmp:
        decoder.save_state(Path(tmp) / "state")
        assert len(json.loads((Path(tmp) / "state").read_text())["templates"]) <= 20


def _reference_offsets(lengths: list[int], data: bytes, limit: int = -1) -> tuple[list[list[int]], int]:
    """RFC 7011 §7 read literally, one record at a time (the walk before it was compiled): where each
    field of each whole record starts, and where the last one ends (at most ``limit`` records)."""
    rows, pos = [], 0
    while len(rows) != limit:
        p, starts = pos, []
        for declared in lengths:
            n = declared
            if n == 65535:
                if p >= len(data):
                    return rows, pos
                n, p = data[p], p + 1
                if n == 255:
                    if p + 2 > len(data):
                        return rows, pos
                    n, p = int.from_bytes(data[p : p + 2], "big"), p + 2
            starts.append(p)
            p += n
            if p > len(data):
                return rows, pos
        if p == pos:
            return rows, pos
        rows.append(starts)
        pos = p
    return rows, pos


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.sampled_from([1, 2, 4, 16, 65535]), min_size=1, max_size=6),
    st.integers(0, 5),
    st.lists(  # random octets, and variable-length values in the three-octet form (§7) among them
        st.one_of(
            st.binary(max_size=40),
            st.binary(max_size=300).map(lambda v: b"\xff" + len(v).to_bytes(2, "big") + v),
        ),
        max_size=8,
    ).map(b"".join),
    st.integers(-1, 40),
)
def test_compiled_variable_length_passes_match_the_rfc(
    lengths: list[int], at: int, data: bytes, limit: int
) -> None:
    """The compiled count (with and without an exporter's budget) finds the records the RFC's
    literal reading finds, and the pack copies exactly their fixed-length fields."""
    import numpy as np

    from pipeline.decode import variable_length
    from pipeline.decode.templates import Field, Template

    lengths = [*lengths[:at], 65535, *lengths[at:]]
    template = Template(300, tuple(Field(200 + i, n) for i, n in enumerate(lengths)))
    raw = np.frombuffer(data, dtype=np.uint8)
    n, used = variable_length.count_records(raw, 0, len(raw), template.runs, limit)
    want, want_used = _reference_offsets(lengths, data, limit)
    assert (n, used) == (len(want), want_used)
    packed = variable_length.pack(
        template, raw, np.array([0]), np.array([used]), np.array([n], dtype=np.int64)
    ).reshape(n, template.dtype.itemsize)
    fixed = [(j, size) for j, size in enumerate(lengths) if size != 65535]
    assert [bytes(row) for row in packed] == [
        b"".join(data[starts[j] : starts[j] + size] for j, size in fixed) for starts in want
    ]
