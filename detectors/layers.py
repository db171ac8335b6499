"""A large index and the changes since it was built, answered together: an update costs a small
build, not a rebuild of millions of indicators.

:class:`LayeredIndex` is the main :class:`~detectors.index.IndicatorIndex`, a *delta* index of the
indicators added since (rebuilt whole on every update: it stays small), and the positions withdrawn
from the main one. The matcher searches both layers and drops withdrawn positions from the (rare)
hits, so lookups stay as fast as the main index's (one more small table read per address). A
background rebuild of the main index folds the delta in (see
:class:`pipeline.runtime.intel_follower.IntelFollower`); the layered index is immutable, so a
swap is one reference assignment, as for a plain index.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from detectors.attributes import Attributes
from detectors.index import IndicatorIndex
from pipeline.intel.allowlists import Allowlist
from pipeline.intel.hashing import string_hashes
from pipeline.intel.model import Indicator
from pipeline.intel.table import IndicatorTable


class IdLookup:
    """Positions of indicator ids in an index: sorted 64-bit hashes, each match confirmed on the
    id itself (a 10M-entry dict of Python strings would cost more than the index)."""

    def __init__(self, attributes: Attributes) -> None:
        self.attributes = attributes
        hashes = attributes.id_hashes()
        self.order = np.argsort(hashes, kind="stable")
        self.hashes = hashes[self.order]

    def positions(self, wanted: list[str]) -> np.ndarray:
        """Positions (ascending) of every entry whose id is in ``wanted``."""
        if not wanted or not len(self.hashes):
            return np.empty(0, np.int64)
        keys = string_hashes(wanted)
        lo = np.searchsorted(self.hashes, keys, side="left")
        hi = np.searchsorted(self.hashes, keys, side="right")
        counts = hi - lo
        candidates = self.order[
            np.repeat(lo - (np.cumsum(counts) - counts), counts) + np.arange(int(counts.sum()))
        ]
        if not len(candidates):
            return np.empty(0, np.int64)
        names = np.repeat(np.arange(len(wanted)), counts)
        found = self.attributes.take(candidates).column("indicator_id").to_pylist()
        same = np.array([found[k] == wanted[names[k]] for k in range(len(found))], dtype=bool)
        return np.sort(candidates[same])


class LayeredIndex:
    """Main index, delta index, withdrawn positions; built by :meth:`of` and :meth:`updated`."""

    def __init__(
        self,
        main: IndicatorIndex,
        main_removed: np.ndarray,
        delta_objects: list[Indicator],
        delta_table: IndicatorTable,
        allowlist: Allowlist | None,
        ids: IdLookup | None = None,
    ) -> None:
        self.main = main
        self.allowlist = allowlist
        self.delta_objects, self.delta_table = delta_objects, delta_table
        self.delta = IndicatorIndex.build(delta_objects, allowlist, delta_table)
        self.removed = np.unique(main_removed).astype(np.int32)
        self.count = main.count - len(self.removed) + self.delta.count
        """Indicators in use (withdrawn ones not counted)."""
        self._ids = ids
        self.allow, self.allow_port, self.allow_name = main.allow, main.allow_port, main.allow_name
        self.attributes = Attributes.concat([main.attributes, self.delta.attributes])

    @classmethod
    def of(
        cls, main: IndicatorIndex, allowlist: Allowlist | None = None, ids: IdLookup | None = None
    ) -> LayeredIndex:
        return cls(main, np.empty(0, np.int32), [], IndicatorTable.empty(), allowlist, ids)

    def ids(self) -> IdLookup:
        """The main index's id lookup, made on first use (~1 s at 10M; the follower makes it in the
        background right after a main build, so that updates do not wait for it)."""
        if self._ids is None:
            self._ids = IdLookup(self.main.attributes)
        return self._ids

    def updated(
        self, withdrawn: Iterable[str], objects: list[Indicator] = (), table: IndicatorTable | None = None
    ) -> LayeredIndex:
        """A new layered index: the indicators with ``withdrawn`` ids gone (from either layer), then
        ``objects`` and ``table`` added (a changed indicator: its id withdrawn, its new form added).
        Costs a build of the delta, not of the main index."""
        gone = list(dict.fromkeys(withdrawn))
        removed = np.concatenate([self.removed, self.ids().positions(gone)])
        gone_set = set(gone)
        delta_objects = [i for i in self.delta_objects if i.id not in gone_set] + list(objects)
        delta_table = self.delta_table
        if len(delta_table) and gone:
            keep = ~np.isin(np.asarray(delta_table.column("id").to_pylist(), dtype=object), gone)
            delta_table = delta_table.take(np.flatnonzero(keep))
        if table is not None and len(table):
            delta_table = IndicatorTable.concat([delta_table, table])
        return LayeredIndex(self.main, removed, delta_objects, delta_table, self.allowlist, self._ids)

    @property
    def pending(self) -> int:
        """Changes not yet folded into the main index (delta entries and withdrawn positions)."""
        return self.delta.count + len(self.removed)

    def layers(self) -> list[tuple[IndicatorIndex, int]]:
        return [(self.main, 0), (self.delta, self.main.count)] if self.delta.count else [(self.main, 0)]

    def source_counts(self) -> dict[str, int]:
        counts = dict(self.main.source_counts())
        for source, n in self.delta.source_counts().items():
            counts[source] = counts.get(source, 0) + n
        if len(self.removed):
            gone = np.bincount(self.main.source_code[self.removed], minlength=len(self.main.source_names))
            for code in np.flatnonzero(gone):
                counts[self.main.source_names[code]] -= int(gone[code])
        return {k: v for k, v in counts.items() if v}

    def nbytes(self, fixed: bool = True) -> int:
        return self.main.nbytes(fixed) + self.delta.nbytes(fixed) + self.removed.nbytes
