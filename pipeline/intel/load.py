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

    def merge(self, other: IntelLoad) -> None:
        self.indicators += other.indicators
        self.unsupported.update(other.unsupported)
        self.skipped.update(other.skipped)
        self.errors += other.errors
