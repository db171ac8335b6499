"""Outputs of the embedded runtime for alerts and detections: a JSON-lines file and a one-line-per-record
console view."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TextIO


class AlertOutput(Protocol):
    def write(self, alerts: list[dict[str, Any]]) -> None: ...

    def close(self) -> None: ...


class JsonLinesOutput:
    """One JSON object per line, flushed per batch so ``tail -f`` and log shippers see alerts at once."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = path.open("a", encoding="utf-8")
        self._lock = threading.Lock()

    def write(self, alerts: list[dict[str, Any]]) -> None:
        if not alerts:
            return
        text = "".join(json.dumps(a, separators=(",", ":"), default=str) + "\n" for a in alerts)
        with self._lock:
            self._fh.write(text)
            self._fh.flush()

    def close(self) -> None:
        with self._lock:
            self._fh.close()


class ConsoleOutput:
    """Short human-readable lines for an operator watching a terminal."""

    def __init__(self, stream: TextIO, formatter: Callable[[dict[str, Any]], str] | None = None) -> None:
        self._stream = stream
        self._format = formatter or format_alert

    def write(self, records: list[dict[str, Any]]) -> None:
        for record in records:
            self._stream.write(self._format(record) + "\n")
        self._stream.flush()

    def close(self) -> None:
        self._stream.flush()


def format_alert(a: dict[str, Any]) -> str:
    def endpoint(addr: Any, port: Any) -> str:
        text = str(addr)
        return f"[{text}]:{port}" if ":" in text else f"{text}:{port}"

    src = endpoint(a.get("src_addr"), a.get("src_port"))
    dst = endpoint(a.get("dst_addr"), a.get("dst_port"))
    tlp = a.get("tlp") or "-"
    return (
        f"ALERT {a.get('flow_start') or a.get('time_received')} {src} -> {dst} proto {a.get('protocol')} "
        f"| {a.get('side')} hit {a.get('indicator_name') or a.get('indicator')} ({a.get('source')}, confidence {a.get('confidence')}, "
        f"TLP {tlp}) {a.get('indicator_id')}"
    )


class DetectionConsole:
    """Detections on a terminal, one line per group (an indicator or a scan in one window) for every
    batch of versions emitted: what, how many hosts and flows, which states, and the ids' prefix to
    look up in the detections file. Per-host detail stays in the JSON-lines file."""

    def __init__(self, stream: TextIO, hosts_shown: int = 3) -> None:
        self._stream = stream
        self._hosts_shown = hosts_shown

    def write(self, detections: list[dict[str, Any]]) -> None:
        groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
        for d in detections:
            groups.setdefault((d["kind"], d["key"], d["window_start"]), []).append(d)
        for records in groups.values():
            self._stream.write(format_detection_group(records, self._hosts_shown) + "\n")
        self._stream.flush()

    def close(self) -> None:
        self._stream.flush()


def format_detection_group(records: list[dict[str, Any]], hosts_shown: int = 3) -> str:
    first = records[0]
    states = sorted({(d["state"], d["rule"]) for d in records}, key=lambda sr: sr[0])
    state = ", ".join(s.upper().replace("_", " ") + (f" by {r}" if r else "") for s, r in states)
    final = " (final)" if all(d["final"] for d in records) else ""
    flows = sum(d["flows"] for d in records)
    if first["kind"] == "scan":
        s = first["scan"]
        proto = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmp6"}.get(s["protocol"], f"proto {s['protocol']}")
        what = (f"scan from {s['scanner']} to {proto}/{s['port']}: {s['targets']} inside targets"
                f"{'' if s['targets_exact'] else ' (estimate)'}, {first['probe_flows']} of {flows} flows "
                "unanswered probes")  # fmt: skip
    else:
        ind = first["indicator"]
        name = f" {ind['name']!r}" if ind.get("name") else ""
        hosts = [d["internal_host"] or "others" for d in records]
        shown = ", ".join(hosts[:hosts_shown]) + (
            f" +{len(hosts) - hosts_shown}" if len(hosts) > hosts_shown else ""
        )
        what = (f"{ind['value']}{name} | {first['internal_hosts']} internal hosts in the window; "
                f"{len(records)} updated ({shown}) with {flows} flows")  # fmt: skip
    sources = ", ".join(first["sources"]) or "-"
    confidence = "" if first["confidence"] is None else f", confidence {first['confidence']}"
    return (f"DETECTION {state}{final} | {what} | {sources}{confidence}, "
            f"TLP {first['tlp'] or '-'} | window {first['window_start']} | id {first['id']}"
            f"{f' and {len(records) - 1} more' if len(records) > 1 else ''}")  # fmt: skip
