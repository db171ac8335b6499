"""The sharing policy file: what an operator writes is validated at start, with the key named."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipeline.config import ConfigError
from pipeline.samples import DEMO_SHARING
from pipeline.share.policy import load_policy

BASE = '[identity]\nname = "Test NREN"\n[constituency]\ncidrs = ["192.0.2.0/24"]\n'


def policy(tmp_path: Path, text: str):
    path = tmp_path / "sharing.toml"
    path.write_text(BASE + text)
    return load_policy(path, environ={})


def test_the_demo_policy_loads() -> None:
    p = load_policy(DEMO_SHARING, environ={})
    assert [d.name for d in p.destinations] == [
        "soc-topic",
        "trust-group-taxii",
        "cert-hub-misp",
        "public-feed",
    ]
    assert p.constituency_set().contains_ip("192.0.2.7") and not p.constituency_set().contains_ip(
        "203.0.113.1"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[destinations]]\nname = "x"\ntype = "ftp"\n', "destinations[0].type"),
        ('[[destinations]]\nname = "x"\ntype = "kafka"\ntlp_ceiling = "purple"\n', "tlp_ceiling"),
        ('[[destinations]]\nname = "x"\ntype = "kafka"\nkinds = ["rumours"]\n', "destinations[0].kinds"),
        ('[[destinations]]\nname = "x"\ntype = "kafka"\nmin_confidence = 101\n', "min_confidence"),
        ('[[destinations]]\nname = "x"\ntype = "taxii"\n', "needs url"),
        ('[[destinations]]\nname = "x"\ntype = "misp"\nurl = "https://m"\n', "secret_env"),
        ('[[destinations]]\nname = "x"\ntype = "misp"\nurl = "https://m"\nsecret_env = "K"\ndistribution = 4\n',
         "sharing_group"),
        ('[[destinations]]\nname = "x"\ntype = "kafka"\n[[destinations]]\nname = "x"\ntype = "file"\npath = "f"\n',
         "unique"),
        ('[[destinations]]\nname = "Bad Name"\ntype = "kafka"\n', "destinations[0].name"),
        ('[[destinations]]\nname = "x"\ntype = "kafka"\ntlp_cieling = "green"\n', "tlp_cieling"),
        ('[[destinations]]\nname = "x"\ntype = "misp"\nurl = "https://m"\nsecret_env = "K"\ndistribution = 4\n'
         'sharing_group = "a3c4e6f0-0000-4000-8000-000000000000"\n', "sharing_group"),
        ('[[destinations]]\nname = "x"\ntype = "misp-feed"\npath = "feed"\n', "kinds = [\"indicators\"]"),
        ('default_tlp = "white-ish"\n', "default_tlp"),
        ('[indicators]\nvalidity_hours = 0\n', "validity_hours"),
    ],
)  # fmt: skip
def test_mistakes_fail_at_start_naming_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        policy(tmp_path, text)


def test_identity_and_constituency_are_required_to_be_sane(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text('[identity]\nname = ""\n')
    with pytest.raises(ConfigError, match=r"identity\.name"):
        load_policy(path, environ={})
    path.write_text('[identity]\nname = "n"\n[constituency]\ncidrs = ["not-a-net"]\n')
    with pytest.raises(ConfigError, match="not a CIDR"):
        load_policy(path, environ={})


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text(BASE)
    p = load_policy(path, environ={"SHOAL_SHARING__DEFAULT_TLP": "red"})
    assert p.default_tlp == "red"
