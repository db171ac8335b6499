"""``multiset_difference``, which tells a republish what changed, against a naive reference: for each
value held k times on one side and j on the other, the side holding more keeps its last k - j
positions."""

from __future__ import annotations

import collections

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.intel.hashing import multiset_difference


def _reference(a: list[int], b: list[int]) -> tuple[list[int], list[int]]:
    where_a, where_b = collections.defaultdict(list), collections.defaultdict(list)
    for i, v in enumerate(a):
        where_a[v].append(i)
    for i, v in enumerate(b):
        where_b[v].append(i)
    out_a, out_b = [], []
    for v in set(a) | set(b):
        paired = min(len(where_a[v]), len(where_b[v]))
        out_a += where_a[v][paired:]
        out_b += where_b[v][paired:]
    return sorted(out_a), sorted(out_b)


# Few distinct values (many repeats) and full 64-bit ones (top bits spread, as fingerprints are).
values = st.one_of(st.integers(0, 6), st.integers(0, 2**64 - 1))


@settings(max_examples=400, deadline=None)
@given(st.lists(values, max_size=60), st.lists(values, max_size=60))
def test_matches_a_naive_multiset_difference(a: list[int], b: list[int]) -> None:
    got = multiset_difference(np.array(a, np.uint64), np.array(b, np.uint64))
    assert [g.tolist() for g in got] == list(_reference(a, b))
    assert all(g.dtype == np.int64 for g in got)


def test_a_thousand_changes_among_a_million_fingerprints() -> None:
    rng = np.random.default_rng(5)
    old = rng.integers(0, 2**64 - 1, 1_000_000, dtype=np.uint64)
    new = rng.permutation(old)
    new[rng.choice(len(new), 1000, replace=False)] = rng.integers(0, 2**64 - 1, 1000, dtype=np.uint64)
    new[:3] = new[3]  # a value repeated: two copies more than the topic holds
    gone, added = multiset_difference(old, new)
    ref_gone, ref_added = _reference(old.tolist(), new.tolist())
    assert gone.tolist() == ref_gone and added.tolist() == ref_added
    assert 1000 <= len(added) <= 1003
