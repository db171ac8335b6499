"""The vectorised matcher's hits equal a naive reference written with Python's ``ipaddress``,
pair for pair, on random indicator sets (v4/v6, nested and overlapping CIDRs, ports, pairs) and flows."""

from __future__ import annotations

import ipaddress
from datetime import timedelta

from flowbatch import WHEN, flow_batch
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

# Addresses at /24 block edges, for prefixes that straddle, fill or crowd /24 blocks.
EDGE_POOL = ["10.0.0.0", "10.0.0.1", "10.0.0.255", "10.0.1.0", "10.0.1.77", "10.0.1.128", "10.0.1.255",
             "10.0.2.0", "10.0.255.255", "10.1.0.0", "0.0.0.0", "255.255.255.255"]  # fmt: skip
EDGE_PREFIXES = [32, 32, 31, 25, 24, 23, 16, 0]

addresses = st.sampled_from(V4_POOL + V6_POOL)
edge_addresses = st.sampled_from(EDGE_POOL + V6_POOL[:2])


@st.composite
def networks(draw, pool=addresses, v4_prefixes=None):
    addr = ipaddress.ip_address(draw(pool))
    width = 32 if addr.version == 4 else 128
    prefixes = [width, width, width - 4, width - 8, width - 24 if addr.version == 4 else 32]
    prefix = draw(st.sampled_from(v4_prefixes if v4_prefixes and addr.version == 4 else prefixes))
    return ipaddress.ip_network(f"{addr}/{prefix}", strict=False)


@st.composite
def conditions(draw, pool=addresses, v4_prefixes=None, plain_share=False):
    net = draw(networks(pool, v4_prefixes))
    side = draw(st.sampled_from(["any", "src", "dst"]))
    if plain_share and draw(st.booleans()):  # plain: only a network and maybe a side
        return Condition(network=net, side=side)
    dports = draw(st.none() | st.frozensets(st.sampled_from(PORTS), min_size=1, max_size=2))
    sports = draw(st.none() | st.frozensets(st.sampled_from(PORTS), min_size=1, max_size=1))
    protos = draw(st.none() | st.just(frozenset({6})))
    other = None
    if side in ("src", "dst") and draw(st.booleans()):
        other = draw(networks(pool, v4_prefixes))
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


def flow_lists(pool=addresses):
    return st.lists(
        st.fixed_dictionaries(
            {
                "src": pool,
                "dst": pool,
                "sport": st.sampled_from(PORTS),
                "dport": st.sampled_from(PORTS),
                "proto": st.sampled_from([6, 17]),
            }
        ),
        min_size=1,
        max_size=40,
    )


flows = flow_lists()


def reference(
    indicators: list[Indicator], flows: list[dict], allow: list[tuple]
) -> set[tuple[int, str, str]]:
    out = set()
    for row, f in enumerate(flows):
        addr = {"src": ipaddress.ip_address(f["src"]), "dst": ipaddress.ip_address(f["dst"])}
        for ind in indicators:
            if not ind.active_at(f.get("time", WHEN)):
                continue
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
    alerts = _rows(Matcher(index), flow_list)
    got = {(a["row"], a["indicator_id"], a["side"]) for a in alerts}
    assert got == reference(indicators, flow_list, allow)
    assert len(alerts) == len(got), "a (flow, indicator, side) hit reported twice"
    assert [a["row"] for a in alerts] == sorted(a["row"] for a in alerts), "alerts out of flow order"


def _rows(matcher: Matcher, flow_list: list[dict]) -> list[dict]:
    batch = flow_batch(flow_list)
    # tag each flow with its row number through src_as so hits can be traced back
    batch = batch.set_column(batch.schema.get_field_index("observation_domain"), "observation_domain",
                             __import__("pyarrow").array(range(len(flow_list)), type=__import__("pyarrow").uint32()))  # fmt: skip
    alerts = alerts_to_dicts(matcher.match(batch))
    for a in alerts:
        a["row"] = a["observation_domain"]
    return alerts


@st.composite
def edge_indicator_sets(draw):
    """Many indicators on few /24 blocks (plain ones too), some not valid at the flows' time."""
    windows = [None, None, (-1, None), (1, None), (None, -1), (None, 1), (-2, 2)]
    out = []
    for i in range(draw(st.integers(1, 40))):
        window = draw(st.sampled_from(windows))
        start, stop = window or (None, None)
        out.append(
            Indicator(
                id=f"ind-{i}",
                value=f"v{i}",
                source=draw(st.sampled_from(["a", "b"])),
                conditions=tuple(
                    draw(st.lists(conditions(edge_addresses, EDGE_PREFIXES, True), min_size=1, max_size=2))
                ),
                valid_from=None if start is None else WHEN + timedelta(days=start),
                valid_until=None if stop is None else WHEN + timedelta(days=stop),
            )
        )
    return out


@settings(max_examples=200, deadline=None)
@given(
    edge_indicator_sets(),
    flow_lists(edge_addresses),
    st.lists(
        st.tuples(networks(edge_addresses, EDGE_PREFIXES), st.none() | st.sampled_from(PORTS)), max_size=3
    ),
)
def test_matcher_equals_reference_at_block_edges(indicators, flow_list, allow_pairs) -> None:
    """Nested and straddling prefixes around /24 edges, plain and constrained conditions mixed on
    the same ranges, validity windows: still every (flow, indicator, side) pair and no other."""
    allow = [(net, port, "allow") for net, port in allow_pairs]
    index = IndicatorIndex.build(indicators, Allowlist(entries=allow))
    matcher = Matcher(index)
    got = [(a["row"], a["indicator_id"], a["side"]) for a in _rows(matcher, flow_list)]
    assert len(got) == len(set(got))
    assert set(got) == reference(indicators, flow_list, allow)
    by_source = {}
    for _, ind_id, _ in got:
        source = next(i.source for i in indicators if i.id == ind_id)
        by_source[source] = by_source.get(source, 0) + 1
    assert dict(matcher.stats.hits) == by_source
