"""Hostile input to the decoder (issue 15, items 1-4 and 7-9): forged options records, absurd times,
floods from spoofed sources, junk records and mixed address families. Each bad record is rejected and
counted; nothing a spoofed packet sends outlives it or grows without bound."""

from __future__ import annotations

import datetime as dt
import json
import struct
from pathlib import Path

import pyarrow as pa
from decode_packets import EXPORT, UPTIME, V4, as_block, data_set, ipfix, template_set, v4_rows, v9
from scapy.layers.netflow import NetflowHeader, NetflowHeaderV5, NetflowRecordV5

from pipeline.decode import Datagram, DecoderConfig, FlowDecoder
from pipeline.schemas import bytes16_to_ip

ROUTER = "192.0.2.1"
RECEIVED = float(EXPORT)


def dg(payload: bytes, exporter: str = ROUTER, port: int = 50000, received: float = RECEIVED) -> Datagram:
    return Datagram(payload, exporter, port, received)


def raw_ipfix(body: bytes, domain: int = 1, seq: int = 0) -> bytes:
    return struct.pack("!HHIII", 10, 16 + len(body), EXPORT, seq, domain) + body


def sysinit_options(init_ms: int) -> bytes:
    """Options template 400 (scope meteringProcessId, option systemInitTimeMilliseconds) and one
    record of it: what softflowd and routers send every few minutes."""
    otpl = struct.pack("!HHH", 400, 2, 1) + struct.pack("!HHHH", 143, 4, 160, 8)
    record = struct.pack("!IQ", 1, init_ms)
    return raw_ipfix(
        struct.pack("!HH", 3, 4 + len(otpl)) + otpl + struct.pack("!HH", 400, 4 + len(record)) + record
    )


UPTIME_TEMPLATE = template_set(256, V4, ipfix=True)  # times as flowStart/EndSysUpTime (IEs 22, 21)


def uptime_flows(n: int = 3, seq: int = 0) -> bytes:
    return ipfix(UPTIME_TEMPLATE / data_set(UPTIME_TEMPLATE, 256, v4_rows(n)), seq=seq)


def no_internal_errors(decoder: FlowDecoder) -> bool:
    return not any(reason == "internal_error" for _, reason in decoder.stats.errors)


# -- item 1: a forged options record never poisons an exporter's state -----------------------------
def test_forged_system_init_time_is_rejected_and_never_saved(tmp_path: Path) -> None:
    init_ms = EXPORT * 1000 - UPTIME
    decoder = FlowDecoder()
    decoder.decode([dg(sysinit_options(init_ms))])
    decoder.decode([dg(sysinit_options(2**64 - 1))])  # spoofed from the router's address and port
    batch = decoder.decode([dg(uptime_flows(3))])
    assert batch.num_rows == 3 and no_internal_errors(decoder)
    first = batch.to_pylist()[0]["flow_start"]
    assert first == dt.datetime.fromtimestamp((init_ms + UPTIME - 5000) / 1000, dt.UTC)
    assert decoder.stats.rows_rejected[(ROUTER, "options_sysinit_out_of_range")] == 1
    state = tmp_path / "state"
    decoder.save_state(state)
    assert 2**64 - 1 not in [v[-1] for v in json.loads(state.read_text())["sysinit"]]


def test_poisoned_state_file_does_not_break_a_restart(tmp_path: Path) -> None:
    """A state file written by the old decoder holds the forged value: loading skips it."""
    decoder = FlowDecoder()
    decoder.decode([dg(uptime_flows(1))])
    state = tmp_path / "state"
    decoder.save_state(state)
    saved = json.loads(state.read_text())
    saved["sysinit"] = [[ROUTER, 50000, 1, 2**64 - 1]]
    saved["sampling"] = [[ROUTER, 50000, 1, 0, 2**70]]
    state.write_text(json.dumps(saved))
    restarted = FlowDecoder()
    restarted.load_state(state)
    batch = restarted.decode([dg(uptime_flows(3, seq=1))])
    assert batch.num_rows == 3 and no_internal_errors(restarted)
    assert batch.column("sampling_rate").to_pylist() == [1, 1, 1]


# -- item 2: absurd flow times are null and counted, never a later stage's problem ------------------
MS_TEMPLATE = template_set(310, [(8, 4), (12, 4), (4, 1), (152, 8), (153, 8)], ipfix=True)


def test_absurd_flow_times_become_null_and_are_counted() -> None:
    now_ms = EXPORT * 1000
    rows = [
        ["198.51.100.1", "203.0.113.1", 6, now_ms - 2000, now_ms - 1000],
        ["198.51.100.2", "203.0.113.2", 6, 10**15, 10**15 + 1],  # year 33658
        ["198.51.100.3", "203.0.113.3", 17, 2**64 - 1, 0],  # wraps to negative in int64 µs
    ]
    decoder = FlowDecoder()
    batch = decoder.decode([dg(ipfix(MS_TEMPLATE / data_set(MS_TEMPLATE, 310, rows)))])
    got = batch.to_pylist()  # year 33658 would not even convert
    assert [r["src_addr"] for r in got] == [bytes16_to_ip_bytes(f"198.51.100.{i}") for i in (1, 2, 3)]
    assert got[0]["flow_start"] == dt.datetime.fromtimestamp(EXPORT - 2, dt.UTC)
    assert [r["flow_start"] for r in got[1:]] == [None, None]
    assert [r["flow_end"] for r in got[1:]] == [None, None]
    assert decoder.stats.rows_rejected[(ROUTER, "time_out_of_range")] == 2


def bytes16_to_ip_bytes(text: str) -> bytes:
    from pipeline.schemas import ip_to_bytes16

    return ip_to_bytes16(text)


# -- items 3 and 8: caps are global, and one sender never refuses or evicts another's state ---------
def test_template_flood_on_other_ports_does_not_refuse_a_router() -> None:
    decoder = FlowDecoder(DecoderConfig(max_templates_per_exporter=16))
    flood = [dg(v9(template_set(256 + i, V4, ipfix=False)), port=40000 + i % 7) for i in range(300)]
    decoder.decode(flood)
    tset = template_set(256, V4, ipfix=False)
    batch = decoder.decode([dg(v9(tset / data_set(tset, 256, v4_rows(4))), port=2055)])
    assert batch.num_rows == 4
    assert decoder.stats.errors[(ROUTER, "template_limit")] == 300 - 7 * 16


def test_templates_from_spoofed_sources_are_capped_and_the_busy_router_keeps_its_own(tmp_path: Path) -> None:
    decoder = FlowDecoder(DecoderConfig(max_templates=256, max_stat_exporters=64))
    tset = template_set(256, V4, ipfix=False)
    assert decoder.decode([dg(v9(tset / data_set(tset, 256, v4_rows(2))), received=RECEIVED)]).num_rows == 2
    for second in range(10):
        spoofed = [
            dg(v9(template_set(300, V4, ipfix=False)), exporter=f"10.{second}.{i // 250}.{i % 250}",
               received=RECEIVED + second + 1)
            for i in range(200)
        ]  # fmt: skip
        decoder.decode(spoofed)
        # the router keeps sending data with its template (it refreshes it only every few minutes)
        data = v9(data_set(tset, 256, v4_rows(2)), seq=second + 1)
        assert decoder.decode([dg(data, received=RECEIVED + second + 1)]).num_rows == 2
    templates = sum(len(t) for t in decoder._templates.values())
    assert templates <= 256
    assert decoder.stats.evictions["templates"] == 2001 - templates
    assert len(decoder.stats.packets) <= 65 and len(decoder.stats.templates_active) <= 2001
    state = tmp_path / "state"
    decoder.save_state(state)
    saved = json.loads(state.read_text())["templates"]
    assert len(saved) == templates  # within the cap
    assert [t["template"]["id"] for t in saved if t["template"]["last_used"]] == [256]  # the router's


def test_pending_data_from_spoofed_sources_is_capped_globally() -> None:
    decoder = FlowDecoder(DecoderConfig(pending_max_bytes=64 * 1024))
    body = struct.pack("!HH", 999, 4 + 1000) + bytes(1000)
    decoder.decode([dg(raw_ipfix(body), exporter=f"10.0.{i // 250}.{i % 250}") for i in range(500)])
    assert decoder._pending_bytes <= 64 * 1024
    kept = 64 * 1024 // 1000
    assert sum(decoder.stats.pending_buffered.values()) == kept
    assert (
        sum(n for (_, reason), n in decoder.stats.errors.items() if reason == "pending_limit") == 500 - kept
    )
    decoder.expire(RECEIVED + 10_000)
    assert decoder._pending_bytes == 0 and not decoder._pending_load


def test_per_stream_state_and_counters_are_bounded() -> None:
    decoder = FlowDecoder(DecoderConfig(max_streams=100, max_stat_exporters=50))
    for i in range(1000):
        decoder.decode([dg(uptime_flows(1), exporter=f"10.1.{i // 250}.{i % 250}")])
    assert len(decoder._sequence) <= 100 and decoder.stats.evictions["streams"] >= 900
    for counter in (decoder.stats.packets, decoder.stats.flows, decoder.stats.sequence_gaps):
        assert len(counter) <= 51
    assert sum(decoder.stats.flows.values()) == 1000  # folded into "other", never lost


# -- item 4: junk records are cheap to reject and never become flows --------------------------------
def test_variable_length_records_without_addresses_are_rejected_unread() -> None:
    tset = struct.pack("!HHHH", 2, 12, 500, 1) + struct.pack("!HH", 82, 65535)  # interfaceName only
    records = b"\x00" * 60_000  # 60,000 one-byte records
    junk = raw_ipfix(tset + struct.pack("!HH", 500, 4 + len(records)) + records)
    decoder = FlowDecoder()
    assert decoder.decode([dg(junk)] * 4).num_rows == 0
    assert decoder.stats.errors[(ROUTER, "no_address_set")] == 4


def test_records_with_no_address_are_dropped_and_counted() -> None:
    tset = template_set(320, [(8, 4), (12, 4), (4, 1)], ipfix=True)
    rows = [["0.0.0.0", "0.0.0.0", 6]] * 5 + [["198.51.100.1", "203.0.113.1", 6]]
    decoder = FlowDecoder()
    batch = decoder.decode([dg(ipfix(tset / data_set(tset, 320, rows)))])
    assert batch.num_rows == 1
    assert decoder.stats.rows_rejected[(ROUTER, "no_address")] == 5
    assert decoder.stats.flows[ROUTER] == 1


def test_variable_length_budget_keeps_one_exporter_from_starving_the_others() -> None:
    fields = struct.pack("!HH", 8, 4) + struct.pack("!HH", 12, 4) + struct.pack("!HH", 82, 65535)
    tset = struct.pack("!HHHH", 2, 8 + len(fields), 501, 3) + fields
    record = bytes([198, 51, 100, 1, 203, 0, 113, 1, 0])  # 9 bytes: addresses, empty name
    flood = raw_ipfix(tset + struct.pack("!HH", 501, 4 + 7000 * len(record)) + record * 7000)
    honest_tpl = template_set(256, V4, ipfix=False)
    honest = v9(honest_tpl / data_set(honest_tpl, 256, v4_rows(5)))
    decoder = FlowDecoder(DecoderConfig(variable_records_per_second=10_000))
    batch = decoder.decode([dg(flood, exporter="10.9.9.9"), dg(honest), dg(flood, exporter="10.9.9.9")])
    assert decoder.stats.flows[ROUTER] == 5
    assert decoder.stats.flows["10.9.9.9"] == 10_000 and batch.num_rows == 10_005
    assert decoder.stats.errors[("10.9.9.9", "variable_budget")] == 1
    # the budget refills with time: one second later the exporter gets another second's worth
    later = decoder.decode([dg(flood, exporter="10.9.9.9", received=RECEIVED + 1)])
    assert later.num_rows == 7000


# -- item 7: a record with both families is its IPv4 flow, as nfdump and pmacct report it ------------
def test_record_with_ipv4_and_ipv6_addresses_is_the_inner_ipv4_flow() -> None:
    fields = [(8, 4), (12, 4), (27, 16), (28, 16), (7, 2), (11, 2), (4, 1), (60, 1)]
    tset = template_set(330, fields, ipfix=True)
    rows = [["198.51.100.7", "203.0.113.9", "2001:db8::1", "2001:db8::2", 40000, 443, 6, 6]]
    got = FlowDecoder().decode([dg(ipfix(tset / data_set(tset, 330, rows)))]).to_pylist()[0]
    assert str(bytes16_to_ip(got["src_addr"])) == "198.51.100.7"
    assert str(bytes16_to_ip(got["dst_addr"])) == "203.0.113.9"
    assert (got["src_port"], got["dst_port"], got["protocol"], got["ip_version"]) == (40000, 443, 6, 4)


# -- item 9: flows are counted for the exporter that sent them --------------------------------------
def v5(n: int) -> bytes:
    records = [NetflowRecordV5(src=f"198.51.100.{i % 250 + 1}", dst="203.0.113.9", prot=17) for i in range(n)]
    hdr = NetflowHeader() / NetflowHeaderV5(count=n, sysUptime=3_600_000, unixSecs=EXPORT)
    return bytes(hdr / b"".join(bytes(r) for r in records))


def test_v5_flows_are_counted_per_exporter() -> None:
    datagrams = [dg(v5(10), exporter="192.0.2.10")] + [dg(v5(30), exporter="192.0.2.20")] * 10
    for decode in ("decode", "decode_block"):
        decoder = FlowDecoder()
        if decode == "decode":
            rows = decoder.decode(datagrams).num_rows
        else:
            rows = sum(b.num_rows for b in decoder.decode_block(*as_block(datagrams)))
        assert rows == 310
        assert dict(decoder.stats.flows) == {"192.0.2.10": 10, "192.0.2.20": 300}, decode


def test_flows_of_a_shared_template_are_counted_per_exporter_in_the_block_path() -> None:
    """With templates not keyed by port, one template serves one exporter's several ports; with v5,
    one template serves every exporter: the counts follow each record's exporter either way."""
    decoder = FlowDecoder(DecoderConfig(template_key_includes_port=False))
    tset = template_set(256, V4, ipfix=False)
    datagrams = [dg(v9(tset / data_set(tset, 256, v4_rows(2))), port=1)] + [
        dg(v9(data_set(tset, 256, v4_rows(3)), seq=i + 1), port=2 + i % 2) for i in range(6)
    ]
    batches = decoder.decode_block(*as_block(datagrams))
    assert sum(b.num_rows for b in batches) == 20 == decoder.stats.flows[ROUTER]
    assert pa.concat_tables([pa.Table.from_batches([b]) for b in batches]).num_rows == 20
