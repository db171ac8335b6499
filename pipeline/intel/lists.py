"""Plain indicator lists and CSV files.

A list has one entry per line: an address, a CIDR or ``address|port``, then optionally a reference
(``1.10.16.0/20 ; SBL256894`` in Spamhaus DROP, ``203.0.113.5 # botnet C2`` elsewhere) kept as the
indicator's name. ``#`` and ``;`` start comments, as in the common blocklist formats (Spamhaus,
FireHOL, abuse.ch)."""

from __future__ import annotations

import csv
import ipaddress
from pathlib import Path

from pipeline.intel.load import IntelError, IntelLoad
from pipeline.intel.model import Condition, Indicator


def parse_entry(text: str) -> Condition:
    """``192.0.2.1``, ``198.51.100.0/24``, ``2001:db8::/32`` or ``203.0.113.5|443`` (either side)."""
    address, sep, port = text.partition("|")
    network = ipaddress.ip_network(address.strip(), strict=False)
    if sep:
        number = int(port)
        if not 0 <= number <= 65535:
            raise ValueError(f"port {number} is not a port (0-65535)")
        return Condition(network=network, dst_ports=frozenset({number}))
    return Condition(network=network)


def split_line(line: str) -> tuple[str, str | None]:
    """(the entry, the reference after it or in its comment) of one list line; ("", None) if none."""
    for mark in ("#", ";"):
        head, sep, tail = line.partition(mark)
        if sep:
            entry, _ = split_line(head)
            return entry, (tail.strip() or None) if entry else None
    fields = line.split()
    if not fields:
        return "", None
    return fields[0], " ".join(fields[1:]) or None


def _add(load: IntelLoad, path: Path, text: str, where: str, name: str | None = None) -> None:
    """One entry into ``load``, or an error naming where it came from."""
    try:
        condition = parse_entry(text)
    except ValueError as exc:
        load.errors.append(f"{where}: {exc}")
        return
    load.indicators.append(
        Indicator(id=f"{path.name}:{text}", value=text, source=path.stem, conditions=(condition,), name=name)
    )


def load_list(path: Path) -> IntelLoad:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise IntelError(
            f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}): a binary file?"
        ) from exc
    except OSError as exc:
        raise IntelError(f"{path}: {exc}") from exc
    load = IntelLoad(str(path))
    for number, line in enumerate(lines, 1):
        text, name = split_line(line)
        if text:
            _add(load, path, text, f"{path}:{number}", name)
    return load


def load_csv(path: Path, value_column: str, port_column: str | None = None) -> IntelLoad:
    """CSV with a header row; ``value_column`` holds the address or CIDR, ``port_column`` a port."""
    load = IntelLoad(str(path))
    try:
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or value_column not in reader.fieldnames:
                raise IntelError(f"{path}: no column {value_column!r}")
            for number, row in enumerate(reader, 2):
                value = (row.get(value_column) or "").strip()
                port = (row.get(port_column) or "").strip() if port_column else ""
                _add(load, path, f"{value}|{port}" if port else value, f"{path}:{number}")
    except OSError as exc:
        raise IntelError(f"{path}: {exc}") from exc
    return load
