"""The demo replayer: pcap reading checked against tshark's count, header restamping against scapy."""

import shutil
import socket
import subprocess
import threading

import pytest
from scapy.layers.netflow import NetflowHeader

from pipeline.runtime.replay import read_capture, replay, restamp
from pipeline.samples import DEMO_TRAFFIC


def test_read_capture_matches_tshark_packet_count() -> None:
    datagrams = list(read_capture(DEMO_TRAFFIC))
    if shutil.which("tshark") is None:
        pytest.skip("tshark not installed")
    out = subprocess.run(
        ["tshark", "-r", str(DEMO_TRAFFIC), "-Y", "udp", "-T", "fields", "-e", "udp.length"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert len(datagrams) == len(out) == 60
    assert [len(d.payload) + 8 for d in datagrams] == [int(n) for n in out]


def test_restamp_moves_export_time_for_every_version() -> None:
    seen = set()
    for dgram in read_capture(DEMO_TRAFFIC):
        parsed = NetflowHeader(restamp(dgram.payload, 1_900_000_000))
        version = parsed.version
        seen.add(version)
        header = parsed.payload
        stamp = header.ExportTime if version == 10 else header.unixSecs
        assert stamp == 1_900_000_000
    assert seen == {5, 9, 10}


def test_replay_keeps_exporters_apart() -> None:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(5)
    port = receiver.getsockname()[1]
    got: list[tuple[bytes, tuple]] = []

    def collect() -> None:
        while len(got) < 60:
            got.append(receiver.recvfrom(65535))

    thread = threading.Thread(target=collect)
    thread.start()
    sent = replay(DEMO_TRAFFIC, "127.0.0.1", {2055: port, 4739: port})
    thread.join(10)
    receiver.close()
    assert sent == 60 and len(got) == 60
    assert len({addr[1] for _, addr in got}) == 3  # one source port per original exporter
