"""Hostile traffic on the socket: random bytes, a template flood and a flood of data sets whose template
never comes, all from one exporter. The collector must stay up with bounded memory, count what it
rejected, and keep decoding the honest exporter that shares its listener."""

from __future__ import annotations

import random
import re
import socket
import struct
import time
import urllib.request
from pathlib import Path

import pytest
from collector_packets import TemplatedExporter, make_flows, v5_packet
from collector_procs import Shoal

from pipeline.sinks.parquet import read_flows

pytest.importorskip("pipeline.decode")


def _ipfix(domain: int, seq: int, sets: bytes) -> bytes:
    return struct.pack("!HHIII", 10, 16 + len(sets), 1_790_000_000, seq, domain) + sets


def template_flood(domain: int, first_id: int, count: int) -> bytes:
    """One IPFIX packet defining ``count`` templates of 60 fields each."""
    body = b""
    for tid in range(first_id, first_id + count):
        fields = b"".join(struct.pack("!HH", 1 + (i % 100), 4) for i in range(60))
        body += struct.pack("!HH", tid, 60) + fields
    return _ipfix(domain, 0, struct.pack("!HH", 2, 4 + len(body)) + body)


def orphan_data(domain: int, tid: int, size: int = 1200) -> bytes:
    """A data set for a template that never arrives (the decoder may buffer it, within limits)."""
    return _ipfix(domain, 0, struct.pack("!HH", tid, 4 + size) + random.randbytes(size))


def _rss_kb(pid: int, key: str = "VmHWM") -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"{key}:\s+(\d+)", text).group(1))


def _metrics(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


def _sum(text: str, name: str) -> float:
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def test_hostile_traffic_is_counted_and_bounded(tmp_path: Path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        mport = s.getsockname()[1]
    shoal = Shoal(tmp_path / "out", ["127.0.0.1:0"], "--metrics", f"127.0.0.1:{mport}")
    target = shoal.addresses[0]
    url = f"http://127.0.0.1:{mport}/metrics"
    rng = random.Random(5)
    try:
        time.sleep(0.3)
        base_rss = _rss_kb(shoal.proc.pid, "VmRSS")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as bad:
            for i in range(3000):  # random bytes, some with plausible version numbers
                junk = bytearray(random.Random(i).randbytes(rng.randrange(0, 1500)))
                if len(junk) >= 2 and i % 3:
                    junk[0:2] = struct.pack("!H", rng.choice([5, 9, 10]))
                bad.sendto(bytes(junk), target)
            for i in range(400):  # 400 x 20 templates x 60 fields, all from one exporter
                bad.sendto(template_flood(1 + i % 50, 256 + (i // 50) * 20, 20), target)
                if i % 50 == 0:
                    time.sleep(0.01)
            for i in range(3000):
                bad.sendto(orphan_data(7, 40000 + i % 20000), target)
                if i % 200 == 0:
                    time.sleep(0.005)
        # an honest exporter on the same listener, from another address
        honest = []
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as good:
            good.bind(("127.0.0.2", 0))
            exp = TemplatedExporter(10, v6=False, template_id=256, domain=1)
            for i in range(10):
                flows = make_flows(rng, 20, False, i * 20)
                honest += flows
                good.sendto(v5_packet(flows, i) if i % 2 else exp.packet(flows), target)
        # The metrics are published on an interval: poll until the errors show (bounded wait).
        deadline = time.monotonic() + 20
        text = _metrics(url)
        while _sum(text, "shoal_decoder_errors_total") <= 1000 and time.monotonic() < deadline:
            time.sleep(0.25)
            text = _metrics(url)
        peak = _rss_kb(shoal.proc.pid)
        assert shoal.proc.poll() is None, "collector died"
        totals = shoal.stop()
    finally:
        shoal.kill()

    assert (peak - base_rss) < 300_000, f"memory grew by {peak - base_rss} kB"
    assert _sum(text, "shoal_decoder_errors_total") > 1000
    rows = read_flows(tmp_path / "out").to_pylist()
    from pipeline.schemas import bytes16_to_ip

    honest_rows = [r for r in rows if str(bytes16_to_ip(r["exporter"])) == "127.0.0.2"]
    assert sorted(r["dst_port"] for r in honest_rows) == sorted(f.dport for f in honest)
    assert totals["datagrams"] == 3000 + 400 + 3000 + 10
