"""``shoal decode``: a capture written by scapy (pcap and pcapng) -> Parquet, checked against tshark
reading the same file and against the capture's own timestamps and source addresses."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from decode_oracle import have_tshark, tshark_pcap_flows
from decode_packets import V4, data_set, ipfix_variable, template_set, v4_rows, v9
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Ether
from scapy.layers.netflow import NetflowHeader, NetflowHeaderV5, NetflowRecordV5
from scapy.utils import wrpcap, wrpcapng

from pipeline.cli import main
from pipeline.schemas import bytes16_to_ip

pytestmark = [pytest.mark.peers, pytest.mark.skipif(not have_tshark(), reason="tshark not installed")]

T0 = 1_800_000_000.25
ETH = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


def v5_packet() -> bytes:
    records = [
        NetflowRecordV5(
            src=f"198.51.100.{i}",
            dst="203.0.113.9",
            input=3,
            output=4,
            dpkts=10 + i,
            dOctets=1500 * i,
            first=1000,
            last=2000,
            srcport=40000 + i,
            dstport=22,
            tcpFlags=0x1B,
            prot=6,
        )
        for i in range(1, 4)
    ]
    hdr = NetflowHeader(version=5) / NetflowHeaderV5(count=3, sysUptime=5000, unixSecs=int(T0))
    return bytes(hdr / b"".join(bytes(r) for r in records))


def frames() -> list:
    tset = template_set(256, V4, ipfix=False)
    v9_ok = v9(tset / data_set(tset, 256, v4_rows(4)), count=2)
    packets = [
        (IP(src="192.0.2.10", dst="192.0.2.2") / UDP(sport=1111, dport=2055) / v5_packet(), 0.0),
        (ARP(), 0.5),
        (IP(src="192.0.2.11", dst="192.0.2.2") / UDP(sport=2222, dport=2055) / v9_ok, 1.0),
        (IP(src="192.0.2.11", dst="192.0.2.2") / UDP(sport=2222, dport=2055) / v9_ok[:30], 1.5),
        (
            IPv6(src="2001:db8::5", dst="2001:db8::2")
            / UDP(sport=3333, dport=4739)
            / ipfix_variable(300, [b"ge-0/0/1", b"x" * 300]),
            2.0,
        ),
        (IP(src="192.0.2.12", dst="192.0.2.2") / UDP(sport=53, dport=53) / b"\x00\x05junk", 2.5),
    ]
    out = []
    for layer, dt in packets:
        frame = ETH / layer
        frame.time = T0 + dt
        out.append(frame)
    return out


@pytest.mark.parametrize("writer", [wrpcap, wrpcapng], ids=["pcap", "pcapng"])
def test_decode_capture_to_parquet_matches_tshark(tmp_path: Path, writer, capsys) -> None:
    capture = tmp_path / "export.cap"
    writer(str(capture), frames())
    out = tmp_path / "flows.parquet"

    assert main(["decode", str(capture), "--parquet", str(out), "--port", "2055", "--port", "4739"]) == 0
    ours = pq.read_table(out).to_pylist()
    theirs = tshark_pcap_flows(capture, [2055, 4739])

    assert len(ours) == len(theirs) == 3 + 4 + 2
    # Same flows, field by field, for every field tshark reports (the IPFIX template has no protocol).
    ours.sort(key=lambda f: (bytes16_to_ip(f["src_addr"]), f["src_port"]))
    theirs.sort(key=lambda f: (f["src_addr"], f["src_port"]))
    for o, t in zip(ours, theirs, strict=True):
        assert bytes16_to_ip(o["src_addr"]) == t["src_addr"]
        assert bytes16_to_ip(o["dst_addr"]) == t["dst_addr"]
        for field in t.keys() - {"src_addr", "dst_addr"}:
            assert o[field] == t[field], field
        assert len(t) >= 5  # addresses, ports and octets at least

    # Receive time and exporter come from the capture itself, per packet.
    when = {"192.0.2.10": T0, "192.0.2.11": T0 + 1.0, "2001:db8::5": T0 + 2.0}
    for flow in ours:
        exporter = str(bytes16_to_ip(flow["exporter"]))
        assert flow["time_received"] == datetime.fromtimestamp(when[exporter], UTC)
    versions = sorted(f["flow_version"] for f in ours)
    assert versions == [5] * 3 + [9] * 4 + [10] * 2
    assert {f["exporter_port"] for f in ours} == {1111, 2222, 3333}

    err = capsys.readouterr().err
    assert "6 frames, 4 datagrams" in err
    assert "9 flows" in err
    assert "rejected set_overrun: 1" in err  # the cut v9 packet, counted by reason
    assert "frames skipped (not_ip): 1" in err
    assert "frames skipped (other_port): 1" in err
    assert ipaddress.ip_address("2001:db8::5") in {bytes16_to_ip(f["exporter"]) for f in ours}


def test_decode_keeps_templates_across_files_and_runs(tmp_path: Path, capsys) -> None:
    tset = template_set(256, V4, ipfix=False)
    first, second = tmp_path / "a.pcap", tmp_path / "b.pcap"
    udp = IP(src="192.0.2.11", dst="192.0.2.2") / UDP(sport=2222, dport=2055)
    wrpcap(str(first), [ETH / udp / v9(tset, seq=0)])
    wrpcap(str(second), [ETH / udp / v9(data_set(tset, 256, v4_rows(5)), seq=1)])
    state = tmp_path / "state.json"

    out = tmp_path / "one.parquet"
    assert main(["decode", str(first), str(second), "--parquet", str(out)]) == 0
    assert pq.read_table(out).num_rows == 5

    # Template only in the first run: the saved state decodes the second capture on its own.
    assert main(["decode", str(first), "--parquet", str(tmp_path / "t.parquet"), "--state", str(state)]) == 0
    out = tmp_path / "two.parquet"
    assert main(["decode", str(second), "--parquet", str(out), "--state", str(state)]) == 0
    assert pq.read_table(out).column("src_port").to_pylist() == [1000, 1001, 1002, 1003, 1004]

    out = tmp_path / "three.parquet"
    assert main(["decode", str(second), "--parquet", str(out)]) == 0  # no state: data waits, counted
    assert pq.read_table(out).num_rows == 0
    assert "data sets still waiting for their template: 1" in capsys.readouterr().err


def test_unreadable_capture_is_reported_not_raised(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "not-a.pcap"
    bad.write_bytes(b"this is not a capture file at all")
    assert main(["decode", str(bad), "--parquet", str(tmp_path / "x.parquet")]) == 1
    assert "not-a.pcap" in capsys.readouterr().err
