"""Which destination may receive which share: the sharing policy applied, with a reason for every
refusal (each reason a fixed word, so the refusal counters' labels stay bounded).

The order of the checks is the order an operator reads them in docs/sharing.md: kind, TLP (red never
leaves; AMBER+STRICT only back to the organisation that shared it; the destination's ceiling, which the
feed's own community may pass for AMBER), feedback only to the feed's source, confidence, and last the
constituency guard over the exact payload.
"""

from __future__ import annotations

from detectors.detections import TLP_ORDER
from pipeline.share.destinations.base import Share
from pipeline.share.guard import ConstituencyGuard
from pipeline.share.policy import DestinationConfig

REASONS = ("kind", "tlp_red", "amber_strict", "tlp_ceiling", "not_source", "confidence", "constituent")
"""Every refusal reason (``no_stix_id``, a detection that cannot be referred to, is counted before)."""


def refusal(share: Share, dest: DestinationConfig) -> str | None:
    """Why ``share`` may not go to ``dest`` by the policy's rules (None: it may), before the payload check."""
    if share.setting not in dest.kinds:
        return "kind"
    if share.tlp == "red":
        return "tlp_red"
    from_source = dest.from_source(share.sources)
    if share.tlp == "amber+strict" and not from_source:
        return "amber_strict"
    source_amber = dest.amber_to_source and from_source and share.tlp in ("amber", "amber+strict")
    if TLP_ORDER[share.tlp] > TLP_ORDER[dest.tlp_ceiling] and not source_amber:
        return "tlp_ceiling"
    if share.kind == "false_positive" and not from_source:
        return "not_source"
    if (share.confidence or 0) < dest.min_confidence:
        return "confidence"
    return None


def check(
    share: Share, dest: DestinationConfig, payload: str, guard: ConstituencyGuard
) -> tuple[str | None, list[str]]:
    """(reason or None, the constituent addresses found): the policy's rules, then the payload guard."""
    reason = refusal(share, dest)
    if reason is not None or dest.allow_constituents:
        return reason, []
    found = guard.constituents_in(payload)
    return ("constituent" if found else None), found
