"""What loading a source yields: indicators plus an account of everything that was not loaded."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from pipeline.intel.model import Indicator


class IntelError(Exception):
    """A source that cannot be read at all (missing file, not JSON, server unreachable)."""


@dataclass
class IntelLoad:
    source: str
    indicators: list[Indicator] = field(default_factory=list)
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

    def unsupported_item(self, reason: str, example: str) -> None:
        self.unsupported[reason] += 1
        self.examples.setdefault(reason, example[:200])

    def merge(self, other: IntelLoad) -> None:
        self.indicators += other.indicators
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
        for indicator in self.indicators:
            broad = [c.network for c in indicator.conditions if c.network is not None
                     and c.network.prefixlen < (min_prefix_v4 if c.network.version == 4 else min_prefix_v6)]  # fmt: skip
            if broad:
                self.skipped["too_broad"] += 1
                self.errors.append(f"{indicator.id}: {broad[0]} is broader than /{min_prefix_v4 if broad[0].version == 4 else min_prefix_v6}"
                                   " (SHOAL_INTEL_MIN_PREFIX_V4/_V6); refused")  # fmt: skip
                continue
            kept.append(indicator)
        self.indicators = kept
        return self

    def collapse_duplicates(self) -> IntelLoad:
        """One indicator per (source, conditions, validity): a list naming an address twice, or a
        feed repeating an attribute, would otherwise give one flow two alert rows of the same thing."""
        seen: set[tuple] = set()
        kept: list[Indicator] = []
        for indicator in self.indicators:
            key = (indicator.source, indicator.conditions, indicator.valid_from, indicator.valid_until)
            if key in seen:
                self.duplicates += 1
                continue
            seen.add(key)
            kept.append(indicator)
        self.indicators = kept
        return self
