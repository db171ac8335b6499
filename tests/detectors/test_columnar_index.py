"""The index built from Arrow rows (lists, CSV, topic) and the layered index (main + delta +
withdrawn) give every (flow, indicator, side) hit the naive ``ipaddress`` reference gives, and no
other — mixed with object indicators, across updates that withdraw and add indicators."""

from __future__ import annotations

from datetime import timedelta
from unittest.mock import patch

from flowbatch import WHEN
from hypothesis import given, settings
from hypothesis import strategies as st
from test_matcher_reference import EDGE_POOL, EDGE_PREFIXES, V6_POOL, _rows, conditions, networks, reference

from detectors import index as index_module
from detectors.index import IndicatorIndex
from detectors.layers import LayeredIndex
from detectors.matcher import Matcher
from pipeline.intel.allowlists import Allowlist
from pipeline.intel.model import Condition, Indicator
from pipeline.intel.table import IndicatorTable

POOL = st.sampled_from(EDGE_POOL + V6_POOL + ["198.51.100.17", "203.0.113.5"])
WINDOWS = [None, None, None, (-1, None), (1, None), (None, -1), (-2, 2)]


@st.composite
def row_indicators(draw, prefix: str):
    """Indicators of the shape a table row holds (one network, a side, maybe one port), and richer
    ones that stay objects."""
    out = []
    for i in range(draw(st.integers(0, 30))):
        window = draw(st.sampled_from(WINDOWS))
        start, stop = window or (None, None)
        if draw(st.integers(0, 4)):
            port = draw(st.none() | st.sampled_from([22, 443]))
            condition = Condition(network=draw(networks(POOL, EDGE_PREFIXES)),
                                  side=draw(st.sampled_from(["any", "src", "dst"])),
                                  dst_ports=frozenset({port}) if port is not None else None)  # fmt: skip
            conds: tuple[Condition, ...] = (condition,)
        else:
            conds = tuple(draw(st.lists(conditions(POOL, EDGE_PREFIXES, True), min_size=1, max_size=2)))
        out.append(Indicator(id=f"{prefix}-{i}", value=f"v{i}", source=draw(st.sampled_from(["a", "b"])),
                             conditions=conds, name=draw(st.none() | st.just("n")),
                             valid_from=None if start is None else WHEN + timedelta(days=start),
                             valid_until=None if stop is None else WHEN + timedelta(days=stop)))  # fmt: skip
    return out


def flows():
    return st.lists(
        st.fixed_dictionaries({"src": POOL, "dst": POOL, "sport": st.sampled_from([0, 22, 443]),
                               "dport": st.sampled_from([0, 22, 443]), "proto": st.sampled_from([6, 17])}),
        min_size=1, max_size=40,
    )  # fmt: skip


def hits(matcher: Matcher, flow_list: list[dict]) -> set[tuple[int, str, str]]:
    got = [(a["row"], a["indicator_id"], a["side"]) for a in _rows(matcher, flow_list)]
    assert len(got) == len(set(got)), "a (flow, indicator, side) hit reported twice"
    return set(got)


def split(indicators: list[Indicator]) -> tuple[list[Indicator], IndicatorTable]:
    table, rest = IndicatorTable.from_indicators(indicators)
    return rest, table


ALLOW = st.lists(st.tuples(networks(POOL, EDGE_PREFIXES), st.none() | st.sampled_from([22, 443])), max_size=2)


@settings(max_examples=120, deadline=None)
@given(row_indicators("m"), flows(), ALLOW)
def test_index_of_rows_and_objects_equals_reference(indicators, flow_list, allow_pairs) -> None:
    allow = [(net, port, "allow") for net, port in allow_pairs]
    objects, table = split(indicators)
    expected = reference(indicators, flow_list, allow)
    with patch.object(index_module, "COARSE_MAX_RANGES", 0):  # the large-set path: no /16 filter
        assert (
            hits(Matcher(IndicatorIndex.build(objects, Allowlist(entries=allow), table)), flow_list)
            == expected
        )
    matcher = Matcher(IndicatorIndex.build(objects, Allowlist(entries=allow), table))
    assert matcher.index.table.covered16 is not None
    assert hits(matcher, flow_list) == expected
    by_source: dict[str, int] = {}
    for _, ind_id, _ in hits(
        Matcher(IndicatorIndex.build(objects, Allowlist(entries=allow), table)), flow_list
    ):
        source = next(i.source for i in indicators if i.id == ind_id)
        by_source[source] = by_source.get(source, 0) + 1
    assert {k: v for k, v in matcher.stats.hits.items() if v} == by_source


@settings(max_examples=80, deadline=None)
@given(row_indicators("m"), row_indicators("d1"), row_indicators("d2"), flows(), ALLOW, st.data())
def test_layered_index_after_updates_equals_reference(
    main, first, second, flow_list, allow_pairs, data
) -> None:
    """Main built once; update 1 withdraws some of it and adds ``first``; update 2 withdraws some of
    everything so far (delta entries too) and adds ``second``, re-adding one withdrawn id changed."""
    allow = Allowlist(entries=[(net, port, "allow") for net, port in allow_pairs])
    objects, table = split(main)
    layered = LayeredIndex.of(IndicatorIndex.build(objects, allow, table), allow)
    gone1 = data.draw(st.sets(st.sampled_from([i.id for i in main]))) if main else set()
    objects, table = split(first)
    layered = layered.updated(gone1, objects, table)
    live = [i for i in main if i.id not in gone1] + first
    assert hits(Matcher(layered), flow_list) == reference(live, flow_list, allow.entries)
    gone2 = data.draw(st.sets(st.sampled_from([i.id for i in live]))) if live else set()
    changed = [Indicator(id=i.id, value="changed", source="c", conditions=i.conditions) for i in live
               if i.id in gone2][:1]  # fmt: skip
    objects, table = split(second + changed)
    layered = layered.updated(gone2, objects, table)
    live = [i for i in live if i.id not in gone2] + second + changed
    matcher = Matcher(layered)
    assert hits(matcher, flow_list) == reference(live, flow_list, allow.entries)
    assert layered.count == len(live)
    assert layered.source_counts() == {
        s: n for s in ("a", "b", "c") if (n := sum(i.source == s for i in live))
    }
