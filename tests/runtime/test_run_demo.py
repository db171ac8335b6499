"""``shoal run --demo`` end to end: the embedded collector + matcher receive the bundled sample traffic
over UDP and raise exactly the alerts a naive reference finds in tshark's decoding of the same pcap."""

from __future__ import annotations

import ipaddress
import json
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from pipeline.samples import DEMO_TRAFFIC

ROOT = Path(__file__).resolve().parents[2]
# The sample intel's active indicators (valid, not revoked), written out independently of the loader.
ACTIVE = [
    (ipaddress.ip_network("203.0.113.66/32"), "any", None),
    (ipaddress.ip_network("198.51.100.0/25"), "any", None),
    (ipaddress.ip_network("203.0.113.80/32"), "dst", 4444),
    (ipaddress.ip_network("2001:db8:bad::1/128"), "any", None),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tshark_flows() -> list[tuple[str, str, int, int]]:
    fields = [
        "cflow.srcaddr",
        "cflow.dstaddr",
        "cflow.srcaddrv6",
        "cflow.dstaddrv6",
        "cflow.srcport",
        "cflow.dstport",
    ]
    cmd = [
        "tshark",
        "-r",
        str(DEMO_TRAFFIC),
        "-d",
        "udp.port==2055,cflow",
        "-d",
        "udp.port==4739,cflow",
        "-T",
        "fields",
    ]
    for f in fields:
        cmd += ["-e", f]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    flows = []
    for line in out.splitlines():
        s4, d4, s6, d6, sp, dp = (c.split(",") if c else [] for c in line.split("\t"))
        src, dst = s4 or s6, d4 or d6
        flows += list(zip(src, dst, map(int, sp), map(int, dp), strict=True))
    return flows


def expected_alerts() -> set[tuple]:
    out = set()
    for src, dst, sport, dport in tshark_flows():
        for side, addr in (("src", src), ("dst", dst)):
            for net, want_side, port in ACTIVE:
                if ipaddress.ip_address(addr) in net and want_side in ("any", side) and port in (None, dport):
                    out.add((src, dst, sport, dport, side))
    return out


@pytest.mark.peers
def test_run_demo_raises_exactly_the_expected_alerts(tmp_path: Path) -> None:
    alerts_file, metrics = tmp_path / "alerts.jsonl", f"127.0.0.1:{free_port()}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "run", "--demo", "--listen", "127.0.0.1:0", "--listen", "127.0.0.1:0",
         "--alerts", str(alerts_file), "--metrics", metrics, "--duration", "8", "--quiet"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        banner = proc.stdout.readline()
        assert banner.startswith("shoal run: listening on"), banner + proc.stderr.read()
        assert "4 indicators" in banner
        played = proc.stdout.readline()
        assert "played 60 sample export packets" in played
        import time

        time.sleep(2)
        scrape = urllib.request.urlopen(f"http://{metrics}/metrics", timeout=5).read().decode()
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "1800 flows matched" in out
    alerts = [json.loads(line) for line in alerts_file.read_text().splitlines()]
    got = {(a["src_addr"], a["dst_addr"], a["src_port"], a["dst_port"], a["side"]) for a in alerts}
    assert len(got) == len(alerts)
    assert got == expected_alerts()
    assert "shoal_matcher_flows_total 1800.0" in scrape
    assert f'shoal_matcher_alerts_total{{source="Demo NREN CERT hub"}} {float(len(alerts))}' in scrape
