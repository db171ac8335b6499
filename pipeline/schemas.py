"""Versioned Arrow schemas, loaded from the declarative files in the repository's ``schemas/``.

The JSON files are the single source of truth so that documentation, Kafka headers and code can never
disagree about a field. Installed wheels carry them as ``pipeline/_schemas`` (see pyproject.toml).
"""

from __future__ import annotations

import ipaddress
import json
import re
from functools import cache
from pathlib import Path

import numpy as np
import pyarrow as pa

FLOW_SCHEMA_VERSION = 1

_TIMESTAMP = re.compile(r"timestamp\[(\w+), tz=(\w+)\]")
_FIXED = re.compile(r"fixed_size_binary\[(\d+)\]")


def schemas_dir() -> Path:
    """Where the schema files are: inside an installed wheel, else the source tree."""
    packaged = Path(__file__).parent / "_schemas"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parent.parent / "schemas"


def arrow_type(spec: str) -> pa.DataType:
    """Parse the small type vocabulary used by ``schemas/*.json``."""
    if m := _TIMESTAMP.fullmatch(spec):
        return pa.timestamp(m.group(1), tz=m.group(2))
    if m := _FIXED.fullmatch(spec):
        return pa.binary(int(m.group(1)))
    simple = {
        "uint8": pa.uint8(),
        "uint16": pa.uint16(),
        "uint32": pa.uint32(),
        "uint64": pa.uint64(),
        "int32": pa.int32(),
        "int64": pa.int64(),
        "float64": pa.float64(),
        "string": pa.string(),
        "bool": pa.bool_(),
    }
    try:
        return simple[spec]
    except KeyError:
        raise ValueError(f"unknown schema type {spec!r}") from None


@cache
def load_schema(name: str, version: int) -> pa.Schema:
    """Build the Arrow schema ``schemas/<name>/v<version>.json``, with docs kept as field metadata."""
    spec = json.loads((schemas_dir() / name / f"v{version}.json").read_text())
    fields = [
        pa.field(f["name"], arrow_type(f["type"]), nullable=f["nullable"], metadata={"doc": f["doc"]})
        for f in spec["fields"]
    ]
    return pa.schema(fields, metadata={"shoal.schema": spec["name"], "shoal.version": str(spec["version"])})


FLOW_SCHEMA: pa.Schema = load_schema("flow", FLOW_SCHEMA_VERSION)

# IPv4 addresses live in the IPv4-mapped IPv6 space (::ffff:0:0/96) so one 16-byte column serves both.
V4_MAPPED_PREFIX = bytes(10) + b"\xff\xff"


def ip_to_bytes16(address: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    """One address in the flow schema's 16-byte representation."""
    ip = ipaddress.ip_address(address)
    return V4_MAPPED_PREFIX + ip.packed if ip.version == 4 else ip.packed


def bytes16_to_ip(raw: bytes) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """Inverse of :func:`ip_to_bytes16`: IPv4-mapped values come back as IPv4."""
    if raw[:12] == V4_MAPPED_PREFIX:
        return ipaddress.IPv4Address(raw[12:])
    return ipaddress.IPv6Address(raw)


def address_words(column: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """A ``fixed_size_binary[16]`` column as two big-endian-ordered uint64 arrays (high, low), zero-copy
    where Arrow allows: the form the matchers compare and gather on."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if column.null_count:
        column = column.fill_null(bytes(16))
    data = np.frombuffer(column.buffers()[1], dtype=">u8", count=2 * (len(column) + column.offset))
    words = data[2 * column.offset :].reshape(-1, 2)
    return words[:, 0].astype(np.uint64), words[:, 1].astype(np.uint64)
