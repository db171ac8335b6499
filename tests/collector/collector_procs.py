"""Run ``shoal collect`` and nfcapd as real processes on loopback for end-to-end tests."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port(family: int = socket.AF_INET) -> int:
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1" if family == socket.AF_INET else "::1", 0))
        return s.getsockname()[1]


class Shoal:
    """``python -m pipeline.cli collect`` as a subprocess; the real ports are read from its banner."""

    def __init__(
        self, out: Path, listens: list[str], *extra: str, env: dict | None = None, netns: str = ""
    ) -> None:
        cmd = ["ip", "netns", "exec", netns] if netns else []
        cmd += [sys.executable, "-m", "pipeline.cli", "collect", "--parquet", str(out)]
        for listen in listens:
            cmd += ["--listen", listen]
        cmd += list(extra)
        self.out = out
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        line = self.proc.stdout.readline()
        if not line.startswith("shoal collect: listening on"):
            self.proc.kill()
            raise RuntimeError(f"shoal collect did not start: {line}{self.proc.stderr.read()}")
        self.addresses = []
        for item in line.split("listening on", 1)[1].strip().split(", "):
            host, port = item.rsplit(":", 1)
            self.addresses.append((host.strip("[]"), int(port)))

    def stop(self, timeout: float = 60) -> dict[str, int]:
        """SIGTERM, wait, require exit 0; return the final counters the process printed."""
        self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=timeout)
        assert self.proc.returncode == 0, err[-3000:]
        self.stderr = err
        m = re.search(r"stopped: (.*)", out)
        assert m, out + err[-3000:]
        return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(1))}

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Nfcapd:
    def __init__(self, out: Path, port: int, netns: str = "", repeat_to: str = "") -> None:
        """``repeat_to`` ("IP/port"): nfcapd also forwards every datagram it receives there, so a
        second collector sees exactly the same bytes (softflowd exports to one destination only)."""
        out.mkdir(parents=True, exist_ok=True)
        self.out = out
        prefix = ["ip", "netns", "exec", netns] if netns else []
        repeat = ["-R", repeat_to] if repeat_to else []
        self.proc = subprocess.Popen(
            [*prefix, "nfcapd", "-w", str(out), "-p", str(port), "-b", "127.0.0.1", "-t", "3600", *repeat],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.port = port
        deadline = time.monotonic() + 10
        while not _udp_bound(port, netns):
            assert time.monotonic() < deadline, "nfcapd did not bind"
            assert self.proc.poll() is None, "nfcapd exited"
            time.sleep(0.02)

    def stop(self) -> list[dict]:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)
        return nfdump_json(self.out)


def _udp_bound(port: int, netns: str = "") -> bool:
    for path in ("/proc/net/udp", "/proc/net/udp6"):
        if netns:
            text = subprocess.run(
                ["ip", "netns", "exec", netns, "cat", path], capture_output=True, text=True, check=False
            ).stdout
        else:
            text = Path(path).read_text()
        for line in text.splitlines()[1:]:
            if int(line.split()[1].rsplit(":", 1)[1], 16) == port:
                return True
    return False


def nfdump_json(path: Path) -> list[dict]:
    flag = "-R" if path.is_dir() else "-r"
    res = subprocess.run(
        ["nfdump", flag, str(path), "-o", "json"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "TZ": "UTC"},
    )
    return json.loads(res.stdout) if res.stdout.strip() else []


_FLAGS = "CEUAPRSF"


def nfdump_flow(rec: dict) -> dict:
    """One nfdump JSON record in flow-schema terms (addresses as ipaddress objects)."""

    def ts(text: str) -> dt.datetime:
        return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)

    flags = sum(1 << (7 - i) for i, ch in enumerate(rec.get("tcp_flags", "........")) if ch != ".")
    return {
        "src_addr": ipaddress.ip_address(rec.get("src4_addr") or rec.get("src6_addr")),
        "dst_addr": ipaddress.ip_address(rec.get("dst4_addr") or rec.get("dst6_addr")),
        # ICMP records carry type/code instead of ports; exporters put type*256+code in dst_port.
        "src_port": rec.get("src_port", 0),
        "dst_port": rec.get("dst_port", rec.get("icmp_type", 0) * 256 + rec.get("icmp_code", 0)),
        "protocol": rec["proto"],
        "packets": rec["in_packets"],
        "octets": rec["in_bytes"],
        "input_if": rec.get("input_snmp", 0),
        "output_if": rec.get("output_snmp", 0),
        "tos": rec.get("src_tos", 0),
        "tcp_flags": flags,
        "flow_start": ts(rec["first"]),
        "flow_end": ts(rec["last"]),
    }
