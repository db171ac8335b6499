"""Alert outputs of the embedded runtime: a JSON-lines file and a one-line-per-alert console view."""

from __future__ import annotations

import json
import threading
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

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, alerts: list[dict[str, Any]]) -> None:
        for a in alerts:
            self._stream.write(format_alert(a) + "\n")
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
