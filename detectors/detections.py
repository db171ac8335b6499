"""Detections: partial aggregates merged per (kind, key, window), confirmed by rules, rendered as
``schemas/detection/v1.json`` records. Pure logic, no I/O: the embedded runtime and the Kafka
confirmation app (Faust) run the very same functions.

A *group* is one key in one tumbling window: an indicator (with one detection per internal host that
hit it) or an outside address probing one port (one detection). Its state is a plain JSON-ready dict,
so it can live in a Faust table and travel through a changelog topic unchanged. Merging is exact and
order-free (sums, min/max, set unions, HyperLogLog register maxima), which is what lets partials from
any number of workers and batches meet in one place.
"""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from detectors.distinct import TargetSet
from pipeline.config import ConfigError

KINDS = ("indicator", "scan")
STATES = ("observed", "confirmed", "false_positive")
TLP_ORDER = {"clear": 0, "white": 0, "green": 1, "amber": 2, "amber+strict": 3, "red": 4}
MAX_EXPORTERS = 64
MAX_SOURCES = 16
OVERFLOW_HOST = "*"
"""Hosts beyond a group's cap are summed under this entry (rendered with internal_host null)."""


@dataclass(frozen=True)
class Rule:
    """One confirmation rule: every condition set here must hold (AND); rules are alternatives (OR)."""

    name: str = ""
    kind: str = "indicator"
    """``indicator``, ``scan`` or ``any``."""
    min_confidence: int = 0
    min_flows: int = 1
    min_hosts: int = 1
    """Distinct internal hosts behind the key in the window (for scans: distinct targets)."""
    beyond_syn: bool = False
    """Traffic beyond lone SYNs: a completed handshake (TCP ACK seen) or ``min_bytes_per_flow``."""
    min_bytes_per_flow: int = 0
    feeds: tuple[str, ...] = ()
    """Only indicators from these feeds (source names); empty: any. A rule of only ``feeds`` confirms
    those feeds' indicators on first sight."""
    max_established_share: float = 1.0
    """Scans: at most this share of the group's flows may have completed a handshake."""

    def validate(self, where: str) -> None:
        if not self.name:
            raise ConfigError(f"{where}: every rule needs a name")
        if self.kind not in (*KINDS, "any"):
            raise ConfigError(f"{where}.kind: expected indicator, scan or any, got {self.kind!r}")
        if not 0 <= self.min_confidence <= 100:
            raise ConfigError(f"{where}.min_confidence: expected 0..100")
        if self.min_flows < 1 or self.min_hosts < 1 or self.min_bytes_per_flow < 0:
            raise ConfigError(f"{where}: min_flows and min_hosts must be >= 1, min_bytes_per_flow >= 0")
        if not 0.0 <= self.max_established_share <= 1.0:
            raise ConfigError(f"{where}.max_established_share: expected 0..1")

    def holds(self, group: dict[str, Any], host: dict[str, Any], hosts: int) -> bool:
        if self.kind != "any" and self.kind != group["kind"]:
            return False
        if self.feeds and not set(self.feeds) & set(group["sources"]):
            return False
        confidence = group["confidence"]
        if self.min_confidence and (confidence is None or confidence < self.min_confidence):
            return False
        if host["flows"] < self.min_flows or hosts < self.min_hosts:
            return False
        if self.beyond_syn:
            heavy = self.min_bytes_per_flow and host["bytes"] >= self.min_bytes_per_flow * host["flows"]
            if not host["established_flows"] and not heavy:
                return False
        return host["established_flows"] <= self.max_established_share * host["flows"]


DEFAULT_RULES = (
    Rule(name="confident-indicator", kind="indicator", min_confidence=75, min_flows=3),
    Rule(name="widespread-indicator", kind="indicator", min_hosts=3),
    Rule(name="scanner", kind="scan", min_hosts=50, max_established_share=0.2),
)


@dataclass(frozen=True)
class DetectionConfig:
    network: str = "shoal"
    """This network's identity: part of every detection id (and the sharing issue's STIX Identity)."""
    window_seconds: int = 300
    emit_seconds: float = 10.0
    """A detection whose counts moved is re-emitted at most this often; state changes go out at once."""
    close_after_seconds: float = 60.0
    """A window is closed (final message) this long after its end and after its last partial; a
    partial arriving later still is counted as late and dropped (the final version stands)."""
    suppress_seconds: int = 7 * 86400
    """A false positive silences its (kind, key, host) for this long, across windows."""
    max_hosts: int = 1024
    """Internal hosts tracked per group (an indicator hit by more is summed beyond it)."""
    observed_scans: bool = False
    """Also emit scan detections no rule has confirmed. Off by default: on a backbone every unanswered
    packet from outside starts one (Internet background radiation); they are still tracked."""
    rules: tuple[Rule, ...] = field(default=DEFAULT_RULES)

    def validate(self) -> DetectionConfig:
        if not self.network:
            raise ConfigError("detections.network: must be set (this network's identity)")
        if self.window_seconds < 1 or self.emit_seconds <= 0 or self.close_after_seconds < 0:
            raise ConfigError("detections: window_seconds >= 1, emit_seconds > 0, close_after_seconds >= 0")
        if self.max_hosts < 1 or self.suppress_seconds < 0:
            raise ConfigError("detections: max_hosts >= 1, suppress_seconds >= 0")
        names = [r.name for r in self.rules]
        if len(set(names)) != len(names):
            raise ConfigError("detections.rules: rule names must be unique")
        for i, rule in enumerate(self.rules):
            rule.validate(f"detections.rules[{i}]")
        return self


# --- ids and times ---------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _namespace(network: str) -> uuid.UUID:
    return uuid.uuid5(uuid.NAMESPACE_URL, f"shoal:{network}")


def detection_id(network: str, kind: str, key: str, host: str | None, window_start_ms: int) -> str:
    """Deterministic: the same input re-processed anywhere yields the same id, so updates replace."""
    return str(uuid.uuid5(_namespace(network), f"{kind}|{key}|{host or ''}|{window_start_ms}"))


def iso_ms(ms: int) -> str:
    """RFC 3339 UTC with milliseconds (``2026-11-26T14:25:00.000Z``)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


def stricter_tlp(a: str | None, b: str | None) -> str | None:
    if a is None or b is None:
        return a or b
    return a if TLP_ORDER.get(a, 4) >= TLP_ORDER.get(b, 4) else b


def group_key(partial: dict[str, Any]) -> str:
    """The table key of a partial's group: kind, key and window."""
    return f"{partial['kind']}|{partial['key']}|{partial['window_start']}"


# --- merging ---------------------------------------------------------------------------------------


def _merge_host(into: dict[str, Any] | None, part: dict[str, Any]) -> dict[str, Any]:
    if into is None:
        return {k: part[k] for k in ("flows", "packets", "bytes", "first_seen", "last_seen", "established_flows",
                                     "probe_flows")} | {"sides": sorted(set(part["sides"]))}  # fmt: skip
    return {
        "flows": into["flows"] + part["flows"],
        "packets": into["packets"] + part["packets"],
        "bytes": into["bytes"] + part["bytes"],
        "first_seen": min(into["first_seen"], part["first_seen"]),
        "last_seen": max(into["last_seen"], part["last_seen"]),
        "established_flows": into["established_flows"] + part["established_flows"],
        "probe_flows": into["probe_flows"] + part["probe_flows"],
        "sides": sorted(set(into["sides"]) | set(part["sides"])),
        **({"emitted": into["emitted"]} if "emitted" in into else {}),
    }


def merge(group: dict[str, Any] | None, partial: dict[str, Any], max_hosts: int) -> dict[str, Any]:
    """A new group state with ``partial`` added (the inputs are not modified)."""
    if group is None:
        group = {
            "kind": partial["kind"], "key": partial["key"], "window_start": partial["window_start"],
            "window_seconds": partial["window_seconds"], "hosts": {}, "exporters": [], "sources": [],
            "confidence": None, "tlp": None, "indicator": None, "scan": None,
        }  # fmt: skip
    hosts = dict(group["hosts"])
    for part in partial["hosts"]:
        name = part["host"] if part["host"] is not None else ""
        if name not in hosts and len(hosts) >= max_hosts:
            name = OVERFLOW_HOST
        hosts[name] = _merge_host(hosts.get(name), part)
    out = dict(group, hosts=hosts)
    out["exporters"] = sorted(set(group["exporters"]) | set(partial["exporters"]))[:MAX_EXPORTERS]
    if (ind := partial.get("indicator")) is not None:
        out["indicator"] = {k: ind[k] for k in ("id", "value", "name", "valid_until")}
        out["sources"] = sorted(set(group["sources"]) | {ind["source"]})[:MAX_SOURCES]
        if ind["confidence"] is not None:
            out["confidence"] = max(ind["confidence"], group["confidence"] or 0)
        out["tlp"] = stricter_tlp(group["tlp"], ind["tlp"])
    if (scan := partial.get("scan")) is not None:
        targets = TargetSet.from_json(group["scan"]) if group["scan"] else TargetSet()
        targets.merge(TargetSet.from_json(scan))
        out["scan"] = {"scanner": scan["scanner"], "protocol": scan["protocol"], "port": scan["port"],
                       **targets.to_json()}  # fmt: skip
        out["tlp"] = stricter_tlp(group["tlp"], scan.get("tlp"))
    return out


# --- rendering and emission ------------------------------------------------------------------------


def host_count(group: dict[str, Any]) -> tuple[int, bool]:
    """Distinct internal hosts behind the group and whether the figure is exact."""
    if group["kind"] == "scan" and group["scan"]:
        targets = TargetSet.from_json(group["scan"])
        return targets.count(), targets.exact
    return len(group["hosts"]), OVERFLOW_HOST not in group["hosts"]


Verdicts = Callable[[str, str, str | None], dict[str, Any] | None]
"""(kind, key, host) -> the analyst's feedback in force for it (``verdict``, ``reason``, ``analyst``,
``at``), or None. A false positive silences its key across windows; a confirmation confirms it."""
FEEDBACK_FIELDS = ("verdict", "reason", "analyst", "at")


def _state(
    group: dict[str, Any], host: dict[str, Any], internal: str | None, hosts_total: int, config: DetectionConfig,
    verdicts: Verdicts | None,
) -> tuple[str, str | None, dict[str, Any] | None]:  # fmt: skip
    """(state, rule, feedback) of one detection: an analyst's verdict first, then the rules in order."""
    feedback = verdicts(group["kind"], group["key"], internal) if verdicts else None
    if feedback and feedback["verdict"] == "false_positive":
        return "false_positive", "analyst", feedback
    if feedback and feedback["verdict"] == "confirm":
        return "confirmed", "analyst", feedback
    for r in config.rules:
        if r.holds(group, host, hosts_total):
            return "confirmed", r.name, feedback
    return "observed", None, feedback


def _record(
    group: dict[str, Any], host: dict[str, Any], internal: str | None, state: tuple[str, str | None, Any],
    hosts_total: int, config: DetectionConfig, now_ms: int, final: bool,
) -> dict[str, Any]:  # fmt: skip
    scan = None
    if group["scan"]:
        targets = TargetSet.from_json(group["scan"])
        scan = {k: group["scan"][k] for k in ("scanner", "protocol", "port")}
        scan |= {"targets": targets.count(), "targets_exact": targets.exact}
    indicator = None
    if group["indicator"]:
        indicator = {k: group["indicator"][k] for k in ("id", "value", "name", "valid_until")}
        indicator["sides"] = host["sides"]
    start, (name, rule, feedback) = group["window_start"], state
    return {
        "id": detection_id(config.network, group["kind"], group["key"], internal, start),
        "network": config.network, "kind": group["kind"], "key": group["key"], "internal_host": internal,
        "window_start": iso_ms(start), "window_end": iso_ms(start + 1000 * group["window_seconds"]),
        "state": name, "rule": rule, "final": final, "updated": iso_ms(now_ms),
        "flows": host["flows"], "packets": host["packets"], "bytes": host["bytes"],
        "first_seen": iso_ms(host["first_seen"]), "last_seen": iso_ms(host["last_seen"]),
        "internal_hosts": hosts_total, "established_flows": host["established_flows"],
        "probe_flows": host["probe_flows"], "exporters": group["exporters"],
        "confidence": group["confidence"], "tlp": group["tlp"],
        "sources": group["sources"] if group["kind"] == "indicator" else [config.network],
        "indicator": indicator, "scan": scan,
        "feedback": {k: feedback.get(k) for k in FEEDBACK_FIELDS} if feedback else None,
    }  # fmt: skip


def render(
    group: dict[str, Any],
    config: DetectionConfig,
    now_ms: int,
    final: bool = False,
    verdicts: Verdicts | None = None,
    names: Iterable[str] | None = None,
) -> list[tuple[str, dict[str, Any]]]:
    """The group's detections as (host entry name, detection record): all, or those of ``names``."""
    hosts_total, _ = host_count(group)
    out = []
    for name, host, internal in _entries(group, names):
        state = _state(group, host, internal, hosts_total, config, verdicts)
        out.append((name, _record(group, host, internal, state, hosts_total, config, now_ms, final)))
    return out


def _entries(
    group: dict[str, Any], names: Iterable[str] | None
) -> list[tuple[str, dict[str, Any], str | None]]:
    """(entry name, host entry, internal host address or None) of all entries, or of ``names``."""
    chosen = sorted(group["hosts"]) if names is None else sorted(set(names) & group["hosts"].keys())
    return [(n, group["hosts"][n], None if n in ("", OVERFLOW_HOST) else n) for n in chosen]


def due(
    group: dict[str, Any],
    config: DetectionConfig,
    now_ms: int,
    final: bool = False,
    verdicts: Verdicts | None = None,
    names: Iterable[str] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The detections to emit now, and the group with their emission marks updated.

    A detection goes out when it is new or its state changed (at once), when its counts moved and
    the last emission is ``emit_seconds`` old, and once more, marked final, when its window closes.
    ``names`` limits the check to those host entries (the ones a partial touched, or still pending);
    the group's ``pending`` lists those whose moved counts wait for the emit step. Only the records
    that go out are built.
    """
    emit, hosts = [], dict(group["hosts"])
    pending = set(group.get("pending", ())) - set(hosts if names is None else names)
    hosts_total, _ = host_count(group)
    for name, host, internal in _entries(group, names):
        state = _state(group, host, internal, hosts_total, config, verdicts)
        if group["kind"] == "scan" and state[0] == "observed" and not config.observed_scans:
            continue
        mark = host.get("emitted")
        changed = mark is None or mark["state"] != state[0]
        moved = mark is not None and mark["flows"] != host["flows"]
        if final or changed or (moved and now_ms - mark["at"] >= 1000 * config.emit_seconds):
            emit.append(_record(group, host, internal, state, hosts_total, config, now_ms, final))
            hosts[name] = dict(host, emitted={"state": state[0], "flows": host["flows"], "at": now_ms})
        elif moved:
            pending.add(name)
    if not emit and sorted(pending) == group.get("pending", []):
        return emit, group
    return emit, dict(group, hosts=hosts, pending=sorted(pending))


def needs_full_check(before: dict[str, Any] | None, after: dict[str, Any], config: DetectionConfig) -> bool:
    """Whether a merge can have changed detections beyond the hosts it touched: a group-level input of
    the rules moved (confidence, feeds) or the host count crossed a rule's ``min_hosts``."""
    if before is None:
        return True
    if after["kind"] == "scan":  # one detection per group: the partial touched it
        return False
    if before["confidence"] != after["confidence"] or before["sources"] != after["sources"]:
        return True
    old, new = host_count(before)[0], host_count(after)[0]
    return old != new and any(old < r.min_hosts <= new for r in config.rules)


def closes_at(group: dict[str, Any], config: DetectionConfig) -> int:
    """Wall-clock ms after which the group's window is closed: ``close_after_seconds`` after the later
    of its end and the group's last update, so late flows still count and replayed old traffic is
    not closed the moment it arrives."""
    end = group["window_start"] + 1000 * group["window_seconds"]
    return max(end, group.get("touched", 0)) + int(1000 * config.close_after_seconds)


def window_start_ms(when_ms: Iterable[int] | int, window_seconds: int) -> Any:
    """Tumbling window start (epoch-aligned) of flow times in ms; works on ints and numpy arrays."""
    size = 1000 * window_seconds
    if isinstance(when_ms, int):
        return when_ms - when_ms % size
    return when_ms - when_ms % size  # type: ignore[operator]
