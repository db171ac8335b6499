"""Random and mutated packets never crash the decoder, never trip its internal-error guard, and the
counts it reports agree with what it returns."""

from __future__ import annotations

from decode_packets import V4, data_set, ipfix, ipfix_variable, template_set, v4_rows, v9, v9_sampling_options
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.decode import Datagram, DecoderConfig, FlowDecoder
from pipeline.runtime.replay import read_capture
from pipeline.samples import DEMO_TRAFFIC
from pipeline.schemas import FLOW_SCHEMA

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
