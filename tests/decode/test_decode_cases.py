"""Decoder behaviour on the cases routers produce, built with scapy (and tshark where scapy can't)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from decode_oracle import have_tshark, tshark_flows
from decode_packets import (
    EXPORT,
    UPTIME,
    V4,
    data_set,
    ipfix,
    ipfix_variable,
    template_set,
    v4_rows,
    v9,
    v9_sampling_options,
)

from pipeline.decode import Datagram, DecoderConfig, FlowDecoder
from pipeline.schemas import bytes16_to_ip


def dg(payload: bytes, exporter: str = "192.0.2.1", port: int = 50000) -> Datagram:
    return Datagram(payload, exporter, port, 1_800_000_010.0)


def test_v9_uptime_times_become_absolute_utc() -> None:
    tset = template_set(256, V4, ipfix=False)
    rows = v4_rows(3)
    batch = FlowDecoder().decode([dg(v9(tset / data_set(tset, 256, rows), count=4))])
    got = batch.to_pylist()
    assert [r["src_port"] for r in got] == [1000, 1001, 1002]
    # unix_secs - (sysUptime - t)/1000
    assert got[0]["flow_start"] == dt.datetime.fromtimestamp(EXPORT - 5, dt.UTC)
    assert got[0]["flow_end"] == dt.datetime.fromtimestamp(EXPORT - 1, dt.UTC)
    assert got[0]["packets"] == 10 and got[0]["octets"] == 1000


def test_v9_options_sampling_applies_to_later_flows() -> None:
    tset = template_set(256, V4, ipfix=False)
    opt_tpl, opt_data = v9_sampling_options(257, 512)
    decoder = FlowDecoder()
    unsampled = decoder.decode([dg(v9(tset / data_set(tset, 256, v4_rows(2)), seq=0))])
    assert unsampled.column("sampling_rate").to_pylist() == [1, 1]
    # Options template and options data in the same packet as flows (akvorado #89).
    decoder.decode([dg(v9(opt_tpl / opt_data, seq=1))])
    sampled = decoder.decode([dg(v9(data_set(tset, 256, v4_rows(2)), seq=2))])
    assert sampled.column("sampling_rate").to_pylist() == [512, 512]
    # counters are not rescaled
    assert sampled.column("packets").to_pylist() == [10, 11]


def test_huawei_sampling_interval_inside_data_records() -> None:
    fields = [*V4[:5], (34, 4)]
    tset = template_set(300, fields, ipfix=True)
    rows = [["198.51.100.1", "203.0.113.1", 1, 2, 17, 1000], ["198.51.100.2", "203.0.113.2", 3, 4, 17, 0]]
    batch = FlowDecoder().decode([dg(ipfix(tset / data_set(tset, 300, rows)))])
    assert batch.column("sampling_rate").to_pylist() == [1000, 1]


@pytest.mark.peers
@pytest.mark.skipif(not have_tshark(), reason="tshark not installed")
def test_ipfix_variable_length_and_enterprise_fields_match_tshark(tmp_path: Path) -> None:
    names = [b"ge-0/0/0", b"", b"x" * 300, b"xe-1/2/3.100"]
    packet = ipfix_variable(400, names)
    decoder = FlowDecoder()
    ours = decoder.decode([dg(packet)]).to_pylist()
    theirs = tshark_flows([packet], tmp_path, port=4739)
    assert len(ours) == len(theirs) == 4
    assert not decoder.stats.errors
    for o, t in zip(ours, theirs, strict=True):
        assert bytes16_to_ip(o["src_addr"]) == t["src_addr"]
        assert bytes16_to_ip(o["dst_addr"]) == t["dst_addr"]
        assert (o["src_port"], o["dst_port"], o["octets"]) == (t["src_port"], t["dst_port"], t["octets"])


def test_ipfix_template_withdrawal() -> None:
    tset = template_set(300, V4[:5], ipfix=True)
    rows = [["198.51.100.1", "203.0.113.1", 1, 2, 6]]
    decoder = FlowDecoder()
    assert decoder.decode([dg(ipfix(tset / data_set(tset, 300, rows)))]).num_rows == 1
    withdraw = bytes.fromhex("0002 0008 012c 0000".replace(" ", ""))  # template set: id 300, 0 fields
    decoder.decode([dg(ipfix(withdraw, seq=1))])
    assert decoder.stats.templates_active["192.0.2.1"] == 0
    assert decoder.decode([dg(ipfix(data_set(tset, 300, rows), seq=1))]).num_rows == 0
    assert decoder.stats.template_misses["192.0.2.1"] == 1


def test_data_before_template_is_buffered_then_decoded() -> None:
    tset = template_set(256, V4, ipfix=False)
    decoder = FlowDecoder()
    early = decoder.decode([dg(v9(data_set(tset, 256, v4_rows(3)), seq=0))])
    assert early.num_rows == 0
    assert decoder.stats.pending_buffered["192.0.2.1"] == 1
    later = decoder.decode([dg(v9(tset / data_set(tset, 256, v4_rows(2, 5000)), seq=1))])
    assert sorted(later.column("src_port").to_pylist()) == [1000, 1001, 1002, 5000, 5001]
    assert decoder.stats.pending_decoded["192.0.2.1"] == 1


def test_pending_sets_expire_and_are_counted() -> None:
    tset = template_set(256, V4, ipfix=False)
    decoder = FlowDecoder(DecoderConfig(pending_ttl_seconds=5))
    decoder.decode([dg(v9(data_set(tset, 256, v4_rows(3))))])
    decoder.expire(1_800_000_010.0 + 6)
    assert decoder.stats.pending_expired["192.0.2.1"] == 1
    assert decoder.decode([dg(v9(tset, seq=1))]).num_rows == 0


def test_two_exporters_same_template_id_different_layouts() -> None:
    a = template_set(256, V4, ipfix=False)
    b = template_set(256, [(12, 4), (8, 4), (11, 2), (7, 2), (4, 1)], ipfix=False)
    rows_b = [["203.0.113.9", "198.51.100.9", 80, 40000, 17]]
    decoder = FlowDecoder()
    batch = decoder.decode(
        [
            dg(v9(a / data_set(a, 256, v4_rows(1))), "192.0.2.1"),
            dg(v9(b / data_set(b, 256, rows_b)), "192.0.2.2"),
        ]
    )
    by_exporter = {str(bytes16_to_ip(r["exporter"])): r for r in batch.to_pylist()}
    assert by_exporter["192.0.2.1"]["src_port"] == 1000
    assert str(bytes16_to_ip(by_exporter["192.0.2.2"]["dst_addr"])) == "203.0.113.9"
    assert by_exporter["192.0.2.2"]["src_port"] == 40000


def test_template_key_port_is_optional() -> None:
    tset = template_set(256, V4, ipfix=False)
    for with_port, expected in ((True, 0), (False, 2)):
        decoder = FlowDecoder(DecoderConfig(template_key_includes_port=with_port))
        decoder.decode([dg(v9(tset), port=50000)])
        got = decoder.decode([dg(v9(data_set(tset, 256, v4_rows(2)), seq=1), port=50001)])
        assert got.num_rows == expected


def test_templates_survive_a_restart(tmp_path: Path) -> None:
    tset = template_set(256, V4, ipfix=False)
    first = FlowDecoder()
    first.decode([dg(v9(tset))])
    first.save_state(tmp_path / "state.json")
    second = FlowDecoder()
    second.load_state(tmp_path / "state.json")
    assert second.decode([dg(v9(data_set(tset, 256, v4_rows(4)), seq=1))]).num_rows == 4


def test_sequence_gaps_v9_counts_packets_ipfix_counts_records() -> None:
    tset = template_set(256, V4, ipfix=False)
    decoder = FlowDecoder()
    for seq in (0, 1, 4):  # packets 2 and 3 lost
        decoder.decode([dg(v9(tset / data_set(tset, 256, v4_rows(2)), seq=seq))])
    assert decoder.stats.sequence_gaps[("192.0.2.1", 1)] == 2
    itpl = template_set(300, V4[:5], ipfix=True)
    rows = [["198.51.100.1", "203.0.113.1", 1, 2, 6]] * 3
    for seq in (0, 3, 9):  # records 6..8 lost
        decoder.decode([dg(ipfix(itpl / data_set(itpl, 300, rows), seq=seq, domain=5))])
    assert decoder.stats.sequence_gaps[("192.0.2.1", 5)] == 3
    decoder.decode([dg(ipfix(itpl / data_set(itpl, 300, rows), seq=0, domain=5))])
    assert decoder.stats.sequence_resets[("192.0.2.1", 5)] == 1


def test_ipv6_next_hop_and_times_in_ms() -> None:
    fields = [(27, 16), (28, 16), (62, 16), (7, 2), (11, 2), (4, 1), (152, 8), (153, 8), (252, 4), (253, 4)]
    tset = template_set(310, fields, ipfix=True)
    rows = [
        ["2001:db8::1", "2001:db8::2", "2001:db8::fe", 5, 6, 58, EXPORT * 1000 - 2500, EXPORT * 1000, 7, 8]
    ]
    r = FlowDecoder().decode([dg(ipfix(tset / data_set(tset, 310, rows)))]).to_pylist()[0]
    assert str(bytes16_to_ip(r["next_hop"])) == "2001:db8::fe"
    assert r["ip_version"] == 6
    assert (r["input_if"], r["output_if"]) == (7, 8)  # IEs 252/253 when 10/14 are absent
    assert r["flow_start"] == dt.datetime.fromtimestamp(EXPORT - 2.5, dt.UTC)


def test_nsel_and_total_counters() -> None:
    fields = [*V4[:5], (231, 8), (232, 8), (298, 8), (299, 8)]
    tset = template_set(320, fields, ipfix=True)
    rows = [["198.51.100.1", "203.0.113.1", 1, 2, 6, 100, 50, 3, 2]]
    r = FlowDecoder().decode([dg(ipfix(tset / data_set(tset, 320, rows)))]).to_pylist()[0]
    assert (r["octets"], r["packets"]) == (150, 5)
    fields = [*V4[:5], (85, 8), (86, 8)]
    tset = template_set(321, fields, ipfix=True)
    r = FlowDecoder().decode([dg(ipfix(tset / data_set(tset, 321, [[*rows[0][:5], 900, 9]])))]).to_pylist()[0]
    assert (r["octets"], r["packets"]) == (900, 9)
    assert UPTIME  # builders share the header constants


def test_ipfix_sysuptime_times_use_system_init_time_from_options() -> None:
    """IPFIX flowStart/EndSysUpTime (IEs 22/21, what softflowd sends by default) count milliseconds
    from systemInitTimeMilliseconds (IE 160), which arrives in options data: absolute time is their
    sum, to the millisecond."""
    import struct

    init_ms = EXPORT * 1000 - UPTIME + 123  # the exporter booted UPTIME - 123 ms before EXPORT
    # options template 400: scope meteringProcessId (IE 143), option systemInitTimeMilliseconds (IE 160)
    otpl = struct.pack("!HHH", 400, 2, 1) + struct.pack("!HHHH", 143, 4, 160, 8)
    opts = struct.pack("!HH", 3, 4 + len(otpl)) + otpl
    record = struct.pack("!IQ", 1, init_ms)
    odata = struct.pack("!HH", 400, 4 + len(record)) + record
    tset = template_set(256, V4, ipfix=True)
    decoder = FlowDecoder()
    decoder.decode([dg(_raw_ipfix(opts + odata))])
    batch = decoder.decode([dg(ipfix(tset / data_set(tset, 256, v4_rows(2)), seq=0))])
    got = batch.to_pylist()
    assert got[0]["flow_start"] == dt.datetime.fromtimestamp((init_ms + UPTIME - 5000) / 1000, dt.UTC)
    assert got[0]["flow_end"] == dt.datetime.fromtimestamp((init_ms + UPTIME - 1000) / 1000, dt.UTC)


def _raw_ipfix(body: bytes) -> bytes:
    import struct

    return struct.pack("!HHIII", 10, 16 + len(body), EXPORT, 0, 1) + body
