"""The vectorised matcher's hits equal a naive reference written with Python's ``ipaddress``,
pair for pair, on random indicator sets (v4/v6, nested and overlapping CIDRs, ports, pairs) and flows."""

from __future__ import annotations

import ipaddress

from flowbatch import flow_batch
from hypothesis import given, settings
from hypothesis import strategies as st

from detectors.index import IndicatorIndex
from detectors.matcher import Matcher, alerts_to_dicts
from pipeline.intel.allowlists import Allowlist
from pipeline.intel.model import Condition, Indicator

# Small address pools so that random flows actually hit random indicators.
V4_POOL = [f"198.51.100.{i}" for i in range(0, 256, 17)] + ["203.0.113.5", "10.0.0.1"]
V6_POOL = ["2001:db8::1", "2001:db8::ff", "2001:db8:1::1", "2001:db8:0:0:8000::1"]
PORTS = [0, 22, 443, 4444]

addresses = st.sampled_from(V4_POOL + V6_POOL)


@st.composite
def networks(draw):
    addr = ipaddress.ip_address(draw(addresses))
    width = 32 if addr.version == 4 else 128
    prefix = draw(
        st.sampled_from([width, width, width - 4, width - 8, width - 24 if addr.version == 4 else 32])
    )
    return ipaddress.ip_network(f"{addr}/{prefix}", strict=False)


@st.composite
def conditions(draw):
    net = draw(networks())
    side = draw(st.sampled_from(["any", "src", "dst"]))
    dports = draw(st.none() | st.frozensets(st.sampled_from(PORTS), min_size=1, max_size=2))
    sports = draw(st.none() | st.frozensets(st.sampled_from(PORTS), min_size=1, max_size=1))
    protos = draw(st.none() | st.just(frozenset({6})))
    other = None
    if side in ("src", "dst") and draw(st.booleans()):
        other = draw(networks())
    return Condition(
        network=net, side=side, src_ports=sports, dst_ports=dports, protocols=protos, other_network=other
    )


@st.composite
def indicator_sets(draw):
    count = draw(st.integers(1, 25))
    return [
        Indicator(
            id=f"ind-{i}",
            value=f"v{i}",
            source="s",
            conditions=tuple(draw(st.lists(conditions(), min_size=1, max_size=2))),
        )
        for i in range(count)
    ]


flows = st.lists(
    st.fixed_dictionaries(
        {
            "src": addresses,
            "dst": addresses,
            "sport": st.sampled_from(PORTS),
            "dport": st.sampled_from(PORTS),
            "proto": st.sampled_from([6, 17]),
        }
    ),
    min_size=1,
    max_size=40,
)


def reference(
    indicators: list[Indicator], flows: list[dict], allow: list[tuple]
) -> set[tuple[int, str, str]]:
    out = set()
    for row, f in enumerate(flows):
        addr = {"src": ipaddress.ip_address(f["src"]), "dst": ipaddress.ip_address(f["dst"])}
        for ind in indicators:
            for c in ind.conditions:
                for side in ("src", "dst"):
                    other = "dst" if side == "src" else "src"
                    if c.side not in ("any", side) or addr[side] not in c.network:
                        continue
                    if c.src_ports is not None and f["sport"] not in c.src_ports:
                        continue
                    if c.dst_ports is not None and f["dport"] not in c.dst_ports:
                        continue
                    if c.protocols is not None and f["proto"] not in c.protocols:
                        continue
                    if c.other_network is not None and addr[other] not in c.other_network:
                        continue
                    port = f["sport"] if side == "src" else f["dport"]
                    if any(addr[side] in net and (p is None or p == port) for net, p, _ in allow):
                        continue
                    out.add((row, ind.id, side))
    return out


@settings(max_examples=200, deadline=None)
@given(
    indicator_sets(), flows, st.lists(st.tuples(networks(), st.none() | st.sampled_from(PORTS)), max_size=3)
)
def test_matcher_equals_ipaddress_reference(indicators, flow_list, allow_pairs) -> None:
    allow = [(net, port, "allow") for net, port in allow_pairs]
    index = IndicatorIndex.build(indicators, Allowlist(entries=allow))
    got = {(a["row"], a["indicator_id"], a["side"]) for a in _rows(Matcher(index), flow_list)}
    assert got == reference(indicators, flow_list, allow)


def _rows(matcher: Matcher, flow_list: list[dict]) -> list[dict]:
    batch = flow_batch(flow_list)
    # tag each flow with its row number through src_as so hits can be traced back
    batch = batch.set_column(batch.schema.get_field_index("observation_domain"), "observation_domain",
                             __import__("pyarrow").array(range(len(flow_list)), type=__import__("pyarrow").uint32()))  # fmt: skip
    alerts = alerts_to_dicts(matcher.match(batch))
    for a in alerts:
        a["row"] = a["observation_domain"]
    return alerts
