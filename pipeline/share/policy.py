"""The sharing policy (``--policy FILE``, TOML): who this network is, which addresses are its users'
(never shared), and per destination what may go there. Validated once at start: a typo or an
impossible value fails before anything is read or sent.

Precedence: defaults < file < ``SHOAL_SHARING__SECTION__KEY`` environment variables < options.
docs/sharing.md explains every setting with an example.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detectors.constituency import Constituency, ConstituencyConfig
from detectors.detections import TLP_ORDER
from pipeline.config import ConfigError, load_tree

ENV_PREFIX = "SHOAL_SHARING__"
TLP_LEVELS = ("clear", "green", "amber", "amber+strict", "red")
KINDS = ("sightings", "indicators", "false_positives")
DESTINATION_TYPES = ("kafka", "taxii", "misp", "misp-feed", "file")
NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")


def tlp_level(value: str | None, default: str) -> str:
    """A TLP 2.0 level from any spelling (``TLP:AMBER``, ``white``); None or unknown -> ``default``."""
    text = str(value or "").strip().lower().removeprefix("tlp:")
    text = "clear" if text == "white" else text
    return text if text in TLP_ORDER else default


def strictest(levels: list[str]) -> str:
    return max(levels, key=TLP_ORDER.__getitem__)


@dataclass(frozen=True)
class IdentityConfig:
    name: str = ""
    """This network's name as partners know it (the STIX Identity's name)."""
    identity_class: str = "organization"
    contact: str = ""
    sectors: tuple[str, ...] = ("education",)
    id: str = ""
    """STIX id (``identity--<uuid>``) if the network already has one; default: uuid5 of the name."""

    def stix_id(self) -> str:
        return self.id or f"identity--{uuid.uuid5(uuid.NAMESPACE_URL, f'shoal-identity:{self.name}')}"


@dataclass(frozen=True)
class IndicatorConfig:
    """New indicators from confirmed scans."""

    validity_hours: float = 24.0
    """valid_until = the scan's last flow + this: scanners move on, a stale indicator harms."""
    indicator_types: tuple[str, ...] = ("anomalous-activity",)
    kill_chain_name: str = "mitre-attack"
    phase_name: str = "reconnaissance"


@dataclass(frozen=True)
class DestinationConfig:
    name: str = ""
    type: str = ""
    """kafka | taxii | misp | misp-feed | file."""
    kinds: tuple[str, ...] = KINDS
    """Which shares go here: sightings, indicators, false_positives."""
    tlp_ceiling: str = "green"
    """The most restrictive TLP this destination may receive (red never leaves, whatever is set)."""
    min_confidence: int = 0
    rate_per_minute: float = 0.0
    """Shares sent per minute at most (0: no limit); beyond it, shares wait (updates of one id
    coalesce while they wait), they are never dropped."""
    allow_constituents: bool = False
    """Let the network's own addresses appear in what goes here (e.g. its own SOC's Kafka topic)."""
    source_feeds: tuple[str, ...] = ()
    """Feeds (source names) that came from this destination's organisation or community (``*``: all).
    False positives go back only to a feed's source; AMBER+STRICT only to the organisation that shared
    it."""
    amber_to_source: bool = False
    """The source feed's own community may receive AMBER about its indicators above tlp_ceiling."""
    # Where: each type reads what it needs (and refuses at start what it lacks).
    topic: str = ""
    """kafka: the topic (default: the streams configuration's sightings topic)."""
    url: str = ""
    """TAXII: the collection URL (…/collections/ID/); MISP: the instance URL."""
    path: str = ""
    """misp-feed: the feed directory; file: a JSON-lines file."""
    user_env: str = ""
    """Name of the environment variable holding the user (TAXII basic auth)."""
    secret_env: str = ""
    """Name of the environment variable holding the password (TAXII) or API key (MISP)."""
    ca_file: str = ""
    verify_tls: bool = True
    distribution: int = 1
    """MISP events' distribution (0 organisation, 1 community, 2 connected, 3 all, 4 sharing group)."""
    sharing_group: str = ""
    """MISP sharing group id, as MISP's API takes it (with distribution = 4)."""
    batch: int = 100
    """Shares per request."""
    timeout_seconds: float = 30.0

    def validate(self, where: str) -> None:
        if not NAME.match(self.name):
            raise ConfigError(f"{where}.name: 1-40 of a-z 0-9 _ - (it names metrics and consumer groups)")
        if self.type not in DESTINATION_TYPES:
            raise ConfigError(f"{where}.type: one of {', '.join(DESTINATION_TYPES)}, not {self.type!r}")
        bad = [k for k in self.kinds if k not in KINDS]
        if bad or not self.kinds:
            raise ConfigError(f"{where}.kinds: a list of {', '.join(KINDS)} (got {list(self.kinds)})")
        if self.tlp_ceiling not in TLP_LEVELS:
            raise ConfigError(f"{where}.tlp_ceiling: one of {', '.join(TLP_LEVELS)}")
        if not 0 <= self.min_confidence <= 100:
            raise ConfigError(f"{where}.min_confidence: 0-100")
        if self.rate_per_minute < 0 or self.batch < 1 or self.timeout_seconds <= 0:
            raise ConfigError(f"{where}: rate_per_minute >= 0, batch >= 1, timeout_seconds > 0")
        if self.distribution not in range(5):
            raise ConfigError(f"{where}.distribution: 0-4 (MISP's distribution levels)")
        if self.distribution == 4 and not self.sharing_group.isdigit():
            raise ConfigError(f"{where}: distribution 4 needs sharing_group (the group's id, a number)")
        needs = {"taxii": "url", "misp": "url", "misp-feed": "path", "file": "path"}
        if self.type in needs and not getattr(self, needs[self.type]):
            raise ConfigError(f"{where}: a {self.type} destination needs {needs[self.type]}")
        if self.type == "misp-feed" and set(self.kinds) != {"indicators"}:
            raise ConfigError(f'{where}: a misp-feed holds events of new indicators: kinds = ["indicators"]')
        if self.type == "misp" and not self.secret_env:
            raise ConfigError(f"{where}: a misp destination needs secret_env (the variable with its API key)")

    def from_source(self, sources: tuple[str, ...]) -> bool:
        """Every feed the share derives from came from this destination's organisation or community."""
        return bool(sources) and ("*" in self.source_feeds or set(sources) <= set(self.source_feeds))


@dataclass(frozen=True)
class SharingPolicy:
    identity: IdentityConfig = field(default_factory=IdentityConfig)
    constituency: ConstituencyConfig = field(default_factory=ConstituencyConfig)
    indicators: IndicatorConfig = field(default_factory=IndicatorConfig)
    destinations: tuple[DestinationConfig, ...] = ()
    default_tlp: str = "amber"
    """The TLP of inputs that carry none: conservative, since an unmarked feed may not be shareable."""
    close_grace_seconds: float = 30.0
    """A window's shares are settled (offsets committed past them) this long after every detection of
    the window was final."""
    max_groups: int = 100_000
    """Windows x indicators held at once; beyond it the oldest settled ones are forgotten (counted)."""

    def validate(self) -> SharingPolicy:
        if not self.identity.name:
            raise ConfigError("identity.name: must be set (who partners see sharing)")
        if self.identity.id and not re.fullmatch(r"identity--[0-9a-f-]{36}", self.identity.id):
            raise ConfigError("identity.id: identity--<uuid>")
        if self.default_tlp not in TLP_LEVELS:
            raise ConfigError(f"default_tlp: one of {', '.join(TLP_LEVELS)}")
        if self.indicators.validity_hours <= 0:
            raise ConfigError("indicators.validity_hours: > 0")
        if self.close_grace_seconds < 0 or self.max_groups < 1:
            raise ConfigError("close_grace_seconds >= 0, max_groups >= 1")
        names = [d.name for d in self.destinations]
        if len(set(names)) != len(names):
            raise ConfigError("destinations: names must be unique")
        for i, dest in enumerate(self.destinations):
            dest.validate(f"destinations[{i}]")
        self.constituency_set()  # unreadable files and bad entries fail at start
        return self

    def constituency_set(self) -> Constituency:
        return Constituency.from_config(self.constituency)

    def destination(self, name: str) -> DestinationConfig:
        for dest in self.destinations:
            if dest.name == name:
                return dest
        raise ConfigError(
            f"no destination {name!r} in the policy ({', '.join(d.name for d in self.destinations)})"
        )


def load_policy(
    path: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> SharingPolicy:
    return load_tree(SharingPolicy, path, ENV_PREFIX, environ, overrides).validate()
