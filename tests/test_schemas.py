"""The flow schema file, its Arrow form and the 16-byte address helpers, checked against ``ipaddress``."""

import ipaddress
import json

import pyarrow as pa
from hypothesis import given
from hypothesis import strategies as st

from pipeline.schemas import FLOW_SCHEMA, address_words, bytes16_to_ip, ip_to_bytes16, schemas_dir

REQUIRED = [
    "time_received",
    "exporter",
    "observation_domain",
    "flow_start",
    "flow_end",
    "src_addr",
    "dst_addr",
    "src_port",
    "dst_port",
    "protocol",
    "tcp_flags",
    "packets",
    "octets",
    "input_if",
    "output_if",
    "src_as",
    "dst_as",
    "ip_version",
    "sampling_rate",
]

addresses = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6).filter(lambda a: a.ipv4_mapped is None))


def test_flow_schema_has_required_fields_with_docs() -> None:
    names = FLOW_SCHEMA.names
    for name in REQUIRED:
        assert name in names
        assert FLOW_SCHEMA.field(name).metadata[b"doc"]
    assert FLOW_SCHEMA.field("src_addr").type == pa.binary(16)
    assert FLOW_SCHEMA.field("flow_start").type == pa.timestamp("us", tz="UTC")
    spec = json.loads((schemas_dir() / "flow" / "v1.json").read_text())
    assert [f["name"] for f in spec["fields"]] == names


@given(addresses)
def test_bytes16_round_trip(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    raw = ip_to_bytes16(addr)
    assert len(raw) == 16
    assert bytes16_to_ip(raw) == addr


@given(st.lists(addresses, min_size=1, max_size=50), st.integers(0, 10))
def test_address_words_match_integer_value(addrs: list, offset: int) -> None:
    column = pa.array([ip_to_bytes16(a) for a in addrs] * 2, type=pa.binary(16)).slice(offset % len(addrs))
    hi, lo = address_words(column)
    for i, raw in enumerate(column.to_pylist()):
        value = int.from_bytes(raw, "big")
        assert (int(hi[i]) << 64 | int(lo[i])) == value
