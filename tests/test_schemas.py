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


def test_alerts_validate_against_the_alert_json_schema() -> None:
    """Alerts as the matcher writes them (JSON lines, Kafka values) conform to schemas/alert/v1.json,
    and a wrong value is refused — the schema is a contract, not decoration."""
    import jsonschema

    from detectors.index import IndicatorIndex
    from detectors.matcher import Matcher, alerts_to_dicts
    from pipeline.decode import Datagram, FlowDecoder
    from pipeline.intel import load_source
    from pipeline.runtime.replay import read_capture
    from pipeline.samples import DEMO_INTEL, DEMO_TRAFFIC

    batch = FlowDecoder().decode(
        [Datagram(d.payload, d.exporter, 2055, 1.8e9) for d in read_capture(DEMO_TRAFFIC)]
    )
    index = IndicatorIndex.build(load_source(str(DEMO_INTEL)).indicators)
    alerts = [json.loads(json.dumps(a, default=str)) for a in alerts_to_dicts(Matcher(index).match(batch))]
    assert alerts
    schema = json.loads((schemas_dir() / "alert" / "v1.json").read_text())
    checker = jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )
    for alert in alerts:
        checker.validate(alert)
    bad = dict(alerts[0], src_addr="not-an-address")
    assert not checker.is_valid(bad)
    assert not checker.is_valid(dict(alerts[0], side="both"))
