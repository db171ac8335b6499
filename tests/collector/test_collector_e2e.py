"""End to end on loopback: real ``shoal collect`` processes fed by scapy-built packets and by nfdump's
nfreplay, compared flow by flow with the encoder's own values and with what nfcapd/nfdump decode from
the same packets."""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import random
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from collector_packets import EPOCH, Flow, TemplatedExporter, make_flows, v5_packet
from collector_procs import Nfcapd, Shoal, free_port, nfdump_flow

from pipeline.schemas import bytes16_to_ip
from pipeline.sinks.parquet import read_flows

pytest.importorskip("pipeline.decode")

needs_nfdump = pytest.mark.skipif(not shutil.which("nfcapd"), reason="nfdump tools not installed")


def shoal_rows(out: Path) -> dict[tuple[int, int], dict]:
    """Parquet output keyed by the (src_port, dst_port) flow id the packet builders assign."""
    rows = {}
    for r in read_flows(out).to_pylist():
        for k in ("src_addr", "dst_addr", "exporter"):
            r[k] = bytes16_to_ip(r[k])
        key = (r["src_port"], r["dst_port"])
        assert key not in rows, f"duplicate flow {key}"
        rows[key] = r
    return rows


def expected(f: Flow) -> dict:
    return {
        "src_addr": ipaddress.ip_address(f.src),
        "dst_addr": ipaddress.ip_address(f.dst),
        "protocol": f.proto,
        "packets": f.packets,
        "octets": f.octets,
        "input_if": f.input_if,
        "output_if": f.output_if,
        "tcp_flags": f.tcp_flags,
        "tos": f.tos,
    }


START = dt.datetime.fromtimestamp(EPOCH - 5, dt.UTC)
END = dt.datetime.fromtimestamp(EPOCH - 1, dt.UTC)


@pytest.mark.peers
@needs_nfdump
def test_scapy_v5_v9_ipfix_match_encoder_and_nfdump_flow_by_flow(tmp_path: Path):
    rng = random.Random(42)
    shoal = Shoal(tmp_path / "shoal", ["127.0.0.1:0", "[::1]:0"])
    nfc = Nfcapd(tmp_path / "nfcapd", free_port())
    (h4, p4), (h6, p6) = shoal.addresses
    sent: list[tuple[Flow, int]] = []  # (flow, version)
    v6_only: list[Flow] = []
    fid = 0
    try:
        exporters = [
            (5, False, None),
            (9, False, TemplatedExporter(9, v6=False, template_id=256, domain=1)),
            (9, True, TemplatedExporter(9, v6=True, template_id=257, domain=2)),
            (10, False, TemplatedExporter(10, v6=False, template_id=258, domain=3)),
            (10, True, TemplatedExporter(10, v6=True, template_id=259, domain=4)),
        ]
        socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in exporters]
        for i in range(3):
            for (version, v6, exp), s in zip(exporters, socks, strict=True):
                flows = make_flows(rng, 10 if v6 else 20, v6, fid)
                fid += len(flows)
                pkt = v5_packet(flows, i * 20) if version == 5 else exp.packet(flows)
                for target in ((h4, p4), ("127.0.0.1", nfc.port)):
                    s.sendto(pkt, target)
                sent += [(f, version) for f in flows]
            time.sleep(0.05)
        # IPFIX over an IPv6 transport reaches the [::1] listener (nfcapd here listens on IPv4 only).
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s6:
            exp6 = TemplatedExporter(10, v6=True, template_id=300, domain=9)
            for _ in range(2):
                flows = make_flows(rng, 10, True, fid)
                fid += len(flows)
                s6.sendto(exp6.packet(flows), (h6, p6))
                v6_only += flows
        for s in socks:
            s.close()
        time.sleep(0.3)
        totals = shoal.stop()
        oracle = nfc.stop()
    finally:
        shoal.kill()
        if nfc.proc.poll() is None:
            nfc.proc.kill()

    rows = shoal_rows(tmp_path / "shoal")
    assert totals["flows_decoded"] == totals["parquet_written"] == len(rows) == len(sent) + len(v6_only)

    # 1. against the encoder's own values
    for f, version in sent + [(f, 10) for f in v6_only]:
        row = rows[(f.sport, f.dport)]
        assert {k: row[k] for k in expected(f)} == expected(f), (version, f)
        assert row["flow_version"] == version
        assert row["ip_version"] == (6 if ":" in f.src else 4)
        assert row["flow_start"] == START and row["flow_end"] == END, (version, row)
        if version == 5:
            assert (row["src_as"], row["dst_as"]) == (64500, 64501)
    assert {rows[(f.sport, f.dport)]["exporter"] for f in v6_only} == {
        __import__("ipaddress").ip_address("::1")
    }

    # 2. against nfdump's decoding of the very same packets
    assert len(oracle) == len(sent)
    for rec in oracle:
        theirs = nfdump_flow(rec)
        ours = rows[(theirs["src_port"], theirs["dst_port"])]
        assert {k: ours[k] for k in theirs} == theirs


@pytest.mark.peers
@needs_nfdump
def test_nfreplay_exporter_matches_nfdump(tmp_path: Path):
    """nfreplay (nfdump's own v5/v9 encoder) replays an nfcapd file into Shoal."""
    rng = random.Random(7)
    nfc = Nfcapd(tmp_path / "capture", free_port())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        exp = TemplatedExporter(10, v6=False, template_id=256, domain=1)
        for i in range(5):
            s.sendto(v5_packet(make_flows(rng, 30, False, i * 30), i * 30), ("127.0.0.1", nfc.port))
            s.sendto(exp.packet(make_flows(rng, 20, False, 1000 + i * 20)), ("127.0.0.1", nfc.port))
    time.sleep(0.2)
    original = nfc.stop()
    assert len(original) == 250
    capture = next(p for p in (tmp_path / "capture").iterdir() if p.name.startswith("nfcapd."))

    for version in ("5", "9"):
        out = tmp_path / f"shoal-v{version}"
        shoal = Shoal(out, ["127.0.0.1:0"])
        try:
            host, port = shoal.addresses[0]
            subprocess.run(
                ["nfreplay", "-r", str(capture), "-H", host, "-p", str(port), "-v", version, "-d", "100"],
                check=True,
                capture_output=True,
            )
            time.sleep(0.3)
            shoal.stop()
        finally:
            shoal.kill()
        rows = shoal_rows(out)
        assert len(rows) == 250
        assert {r["flow_version"] for r in rows.values()} == {int(version)}
        for rec in original:
            theirs = nfdump_flow(rec)
            ours = rows[(theirs["src_port"], theirs["dst_port"])]
            for key in ("src_addr", "dst_addr", "protocol", "packets", "octets", "tos", "tcp_flags"):
                assert ours[key] == theirs[key], (version, key)
            for key in ("input_if", "output_if"):
                assert ours[key] == theirs[key], (version, key)
            # nfreplay re-derives start/end from sysUptime at millisecond resolution.
            for key in ("flow_start", "flow_end"):
                assert abs((ours[key] - theirs[key]).total_seconds()) < 0.002, (version, key)


def test_sigterm_mid_stream_loses_nothing_decoded(tmp_path: Path):
    rng = random.Random(1)
    shoal = Shoal(tmp_path / "out", ["127.0.0.1:0"], env={"SHOAL_COLLECT__BATCH__MAX_SECONDS": "30"})
    target = shoal.addresses[0]
    exp = TemplatedExporter(10, v6=False, template_id=256, domain=1, every=5)
    packets = []
    for i in range(3000):
        if i % 2:
            packets.append(exp.packet(make_flows(rng, 10, False, i * 10)))
        else:
            packets.append(v5_packet(make_flows(rng, 10, False, i * 10), i * 10))
    sent_before_signal = 0
    done = threading.Event()

    def sender():
        nonlocal sent_before_signal
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for i, p in enumerate(packets):
                if i == 1500:
                    sent_before_signal = i
                    done.set()
                with contextlib.suppress(ConnectionRefusedError):  # after shoal exited
                    s.sendto(p, target)
                time.sleep(0.0003)

    t = threading.Thread(target=sender)
    t.start()
    try:
        done.wait(30)
        totals = shoal.stop()  # SIGTERM while the sender is still going
    finally:
        t.join()
        shoal.kill()
    rows = shoal_rows(tmp_path / "out")
    packet_ids = {}
    for sport, dport in rows:
        fid = (sport - 1024) * 50_000 + dport - 1
        packet_ids.setdefault(fid // 10, 0)
        packet_ids[fid // 10] += 1
    # Every packet the kernel handed over was decoded completely and written: no partial packets,
    # every datagram received accounted for, everything sent before the signal present.
    assert set(packet_ids.values()) == {10}
    assert len(packet_ids) == totals["datagrams"]
    assert totals["flows_decoded"] == totals["parquet_written"] == len(rows) == 10 * totals["datagrams"]
    assert totals["parquet_dropped"] == 0
    assert set(range(sent_before_signal)) <= set(packet_ids)
    assert len(packet_ids) < len(packets)  # the stop really happened mid-stream
