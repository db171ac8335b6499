"""Plain indicator lists (one address, CIDR or address|port per line, ``#`` comments) and CSV files."""

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
        return Condition(network=network, dst_ports=frozenset({int(port)}))
    return Condition(network=network)


def _add(load: IntelLoad, path: Path, text: str, where: str) -> None:
    """One entry into ``load``, or an error naming where it came from."""
    try:
        condition = parse_entry(text)
    except ValueError as exc:
        load.errors.append(f"{where}: {exc}")
        return
    load.indicators.append(
        Indicator(id=f"{path.name}:{text}", value=text, source=path.stem, conditions=(condition,))
    )


def load_list(path: Path) -> IntelLoad:
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise IntelError(f"{path}: {exc}") from exc
    load = IntelLoad(str(path))
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if text:
            _add(load, path, text, f"{path}:{number}")
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
