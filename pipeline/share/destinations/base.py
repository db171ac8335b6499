"""The one interface every receiver of shared intelligence implements, and what it is handed.

A :class:`Share` is one unit of sharing in its latest version: a sighting of an indicator in one window,
a new indicator (with its sighting) from a confirmed scan, or a false positive reported back to the
feed it came from. It carries its STIX 2.1 objects (JSON-ready dicts, made by the stix2 library) and
the plain facts a non-STIX receiver (MISP) needs, so no destination has to parse STIX again.

Delivery is idempotent by id: sending the same version twice must leave the receiver as if it had been
sent once, and a newer version (a later ``modified``) replaces the older one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

ShareKind = Literal["sighting", "indicator", "false_positive"]
KIND_SETTING: dict[str, str] = {
    "sighting": "sightings",
    "indicator": "indicators",
    "false_positive": "false_positives",
}
"""A share's kind -> the name a destination's ``kinds`` setting uses for it."""


@dataclass(frozen=True)
class Share:
    kind: ShareKind
    id: str
    """STIX id of the primary object: the sighting, the new indicator, or the opinion (false positive)."""
    modified: str
    """Version (STIX ``modified``): grows with every update of one id."""
    objects: tuple[dict[str, Any], ...]
    """The STIX objects, primary first (a new indicator is followed by its sighting). Shared context
    (this network's Identity, TLP marking definitions) is not repeated here: see ``ShareContext``."""
    tlp: str
    """TLP 2.0 level of the share: the strictest of every input it derives from."""
    confidence: int | None
    sources: tuple[str, ...]
    """The feeds its inputs came from (a scan: this network)."""
    window_start: str
    window_end: str
    flows: int
    first_seen: str
    last_seen: str
    internal_hosts: int
    """How many of the network's own hosts were involved: victims are counted, never listed."""
    source_indicator: str | None = None
    """The feed's own indicator id (STIX id, or MISP attribute uuid) a sighting or false positive is of."""
    indicator_value: str | None = None
    """The feed's indicator as it wrote it (for receivers that match sightings by value)."""
    scanner: str | None = None
    protocol: int | None = None
    port: int | None = None
    reason: str | None = None
    """A false positive: the analyst's reason."""
    detections: tuple[str, ...] = field(default=())
    """Ids of the detections it was built from (for operators; never serialised to a receiver)."""

    @property
    def setting(self) -> str:
        return KIND_SETTING[self.kind]


@dataclass(frozen=True)
class ShareContext:
    """What every destination sends beside the shares: the Identity everything is ``created_by_ref``
    and ``where_sighted_refs``, and the TLP marking definitions the shares refer to."""

    identity: dict[str, Any]
    markings: dict[str, dict[str, Any]]
    """TLP level -> its STIX marking-definition object."""

    def markings_of(self, shares: Sequence[Share]) -> list[dict[str, Any]]:
        return [self.markings[t] for t in sorted({s.tlp for s in shares}) if t in self.markings]


class DeliveryError(Exception):
    """The destination did not take (all of) a batch; it is retried with backoff. ``failed`` names the
    shares that did not go (None: all of them), so a partial failure retries only those."""

    def __init__(self, message: str, failed: set[str] | None = None) -> None:
        super().__init__(message)
        self.failed = failed


class Destination(Protocol):
    """A receiver of shares. ``send`` returns when every share is durably accepted, or raises
    :class:`DeliveryError`; ``payload`` gives the text ``send`` would transmit for one share (what
    the sharing policy's constituency guard checks before anything is sent)."""

    name: str

    def payload(self, share: Share) -> str: ...

    def send(self, shares: Sequence[Share]) -> None: ...

    def close(self) -> None: ...
