"""What loading a source yields: indicators plus an account of everything that was not loaded."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from pipeline.intel.model import Indicator
from pipeline.intel.table import IndicatorTable


class IntelError(Exception):
    """A source that cannot be read at all (missing file, not JSON, server unreachable)."""


@dataclass
class IntelLoad:
    source: str
    objects: list[Indicator] = field(default_factory=list)
    """Indicators as objects: what STIX, MISP and TAXII sources yield (rich, and rarely millions)."""
    table: IndicatorTable = field(default_factory=IndicatorTable.empty)
    """Indicators as columns: what lists and CSV files yield (plain, and often millions)."""
    unsupported: Counter[str] = field(default_factory=Counter)
    """Items that cannot be evaluated on flows, by reason (FOLLOWEDBY, domain-name, ...)."""
    skipped: Counter[str] = field(default_factory=Counter)
    """Items deliberately not used: revoked, expired, below confidence, not to_ids."""
    errors: list[str] = field(default_factory=list)
    """Malformed items, each naming the item; the rest of the source still loads."""
    examples: dict[str, str] = field(default_factory=dict)
    """One item (a pattern) per unsupported reason, to show what was meant."""
    duplicates: int = 0
    """Indicators dropped because the same source already gave the same conditions."""

    @property
    def count(self) -> int:
        """Indicators loaded, objects and rows."""
        return len(self.objects) + len(self.table)

    @property
    def indicators(self) -> list[Indicator]:
        """Every indicator as an object, the table's rows made into objects (~1 KB each: paths that
        may see millions read ``objects`` and ``table`` instead)."""
        return self.objects + self.table.to_indicators() if len(self.table) else self.objects

    def unsupported_item(self, reason: str, example: str) -> None:
        self.unsupported[reason] += 1
        self.examples.setdefault(reason, example[:200])

    def merge(self, other: IntelLoad) -> None:
        self.objects += other.objects
        self.table = IndicatorTable.concat([self.table, other.table])
        self.unsupported.update(other.unsupported)
        for reason, example in other.examples.items():
            self.examples.setdefault(reason, example)
        self.skipped.update(other.skipped)
        self.errors += other.errors
        self.duplicates += other.duplicates

    def refuse_catch_alls(self, min_prefix_v4: int, min_prefix_v6: int) -> IntelLoad:
        """Drop (and name, loudly) indicators broader than the minimum prefix: ``0.0.0.0/0`` or a /4 in
        a feed would make most flows alert and bury every real detection."""
        kept = []
        for indicator in self.objects:
            broad = [c.network for c in indicator.conditions if c.network is not None
                     and c.network.prefixlen < (min_prefix_v4 if c.network.version == 4 else min_prefix_v6)]  # fmt: skip
            if broad:
                self._refuse(indicator.id, str(broad[0]), broad[0].version, min_prefix_v4, min_prefix_v6)
                continue
            kept.append(indicator)
        self.objects = kept
        broad_rows = self.table.too_broad(min_prefix_v4, min_prefix_v6)
        if broad_rows.any():
            rows = np.flatnonzero(broad_rows)
            refused = self.table.take(rows)
            for ident, network, version in zip(refused.column("id").to_pylist(), refused.network_texts(),
                                               refused.column("version").to_pylist(), strict=True):  # fmt: skip
                self._refuse(ident, network, version, min_prefix_v4, min_prefix_v6)
            self.table = self.table.without_copy_of(np.flatnonzero(~broad_rows))
        return self

    def _refuse(self, ident: str, network: str, version: int, min_prefix_v4: int, min_prefix_v6: int) -> None:
        self.skipped["too_broad"] += 1
        self.errors.append(f"{ident}: {network} is broader than /{min_prefix_v4 if version == 4 else min_prefix_v6}"
                           " (SHOAL_INTEL_MIN_PREFIX_V4/_V6); refused")  # fmt: skip

    def collapse_duplicates(self) -> IntelLoad:
        """One indicator per (source, conditions, validity): a list naming an address twice, or a
        feed repeating an attribute, would otherwise give one flow two alert rows of the same thing."""
        seen: set[tuple] = set()
        kept: list[Indicator] = []
        for indicator in self.objects:
            key = (indicator.source, indicator.conditions, indicator.valid_from, indicator.valid_until)
            if key in seen:
                self.duplicates += 1
                continue
            seen.add(key)
            kept.append(indicator)
        self.objects = kept
        first = self.table.first_of_duplicates()
        if len(first) < len(self.table):
            self.duplicates += len(self.table) - len(first)
            self.table = self.table.without_copy_of(first)
        return self
