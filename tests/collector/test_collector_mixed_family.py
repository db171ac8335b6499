"""Issue 15, item 7: a record carrying both IPv4 and IPv6 address elements (Huawei VRF/SRv6 exports:
the inner IPv4 5-tuple, the outer IPv6 tunnel endpoints). pmacct's nfacctd, fed the same packet, is
the truth: Shoal reports the flow it reports, the inner IPv4 one. (Debian's nfdump 1.7.1 is no
oracle here: it keeps both families and prints the IPv4 pair as 0.0.0.1.)"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from collector_procs import free_port

from pipeline.decode import Datagram, FlowDecoder
from pipeline.schemas import bytes16_to_ip

sys.path.insert(0, str(Path(__file__).parent.parent / "decode"))
from decode_packets import EXPORT, data_set, ipfix, template_set

# sourceIPv4Address, destinationIPv4Address, sourceIPv6Address, destinationIPv6Address, ports,
# protocolIdentifier, octetDeltaCount, packetDeltaCount, flowStart/EndMilliseconds: the shape of a
# Huawei NE export of an SRv6 L3VPN flow.
FIELDS = [(8, 4), (12, 4), (27, 16), (28, 16), (7, 2), (11, 2), (4, 1), (1, 8), (2, 8), (152, 8), (153, 8)]
ROWS = [
    ["198.51.100.7", "203.0.113.9", "2001:db8:100::1", "2001:db8:200::1", 40000, 443, 6, 1500, 3,
     EXPORT * 1000 - 4000, EXPORT * 1000 - 1000],
    ["192.0.2.33", "198.51.100.80", "2001:db8:100::1", "2001:db8:200::1", 53000, 53, 17, 80, 1,
     EXPORT * 1000 - 3000, EXPORT * 1000 - 2000],
]  # fmt: skip


def nfacctd_flows(tmp_path: Path, packet: bytes) -> list[tuple]:
    """What nfacctd (print plugin, JSON) makes of ``packet``: one tuple per flow."""
    out = tmp_path / "nfacctd.json"
    port = free_port()
    conf = tmp_path / "nfacctd.conf"
    conf.write_text(f"nfacctd_port: {port}\nnfacctd_ip: 127.0.0.1\nplugins: print\nprint_output: json\n"
                    f"print_output_file: {out}\nprint_refresh_time: 1\n"
                    "aggregate: src_host, dst_host, src_port, dst_port, proto\n")  # fmt: skip
    proc = subprocess.Popen(["nfacctd", "-f", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        lines: list[str] = []
        while len(lines) < len(ROWS) and time.monotonic() < deadline:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.sendto(packet, ("127.0.0.1", port))  # again until nfacctd is up and has printed
            time.sleep(1.5)
            lines = out.read_text().splitlines() if out.exists() else []
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    flows = {}
    for line in lines:
        r = json.loads(line)
        proto = {"tcp": 6, "udp": 17}[r["ip_proto"]]
        flows[(r["ip_src"], r["ip_dst"], r["port_src"], r["port_dst"], proto)] = True
    return sorted(flows)


@pytest.mark.peers
@pytest.mark.skipif(not shutil.which("nfacctd"), reason="pmacct not installed")
def test_record_with_both_families_decodes_as_pmacct_does(tmp_path: Path) -> None:
    tset = template_set(400, FIELDS, ipfix=True)
    packet = ipfix(tset / data_set(tset, 400, ROWS))
    theirs = nfacctd_flows(tmp_path, packet)
    decoder = FlowDecoder()
    ours = sorted(
        (str(bytes16_to_ip(r["src_addr"])), str(bytes16_to_ip(r["dst_addr"])), r["src_port"], r["dst_port"],
         r["protocol"])
        for r in decoder.decode([Datagram(packet, "127.0.0.1", 4739, float(EXPORT))]).to_pylist()
    )  # fmt: skip
    assert len(theirs) == len(ROWS)
    assert ours == theirs
    assert all(ipaddress.ip_address(src).version == 4 for src, *_ in ours)
