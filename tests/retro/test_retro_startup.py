"""A retro-hunt's start-up: ``shoal match`` imports its own command alone, not the collector's compiled
decoders nor Kafka, Faust, STIX or MISP libraries a plain list does not need; every other command
line still parses as before."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "detectors"))
from flowbatch import flow_batch

from pipeline.cli import build_parser, command_names, named_command
from pipeline.sinks.parquet import ParquetSink

ROOT = Path(__file__).resolve().parents[2]
NOT_FOR_A_LIST_HUNT = ("pipeline.decode", "pipeline.collector", "confluent_kafka", "faust", "aiokafka", "stix2",
                       "pymisp", "taxii2client", "pipeline.transport.access")  # fmt: skip
PROBE = """
import json, sys
from pipeline.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


def test_a_list_hunt_imports_no_collector_kafka_or_stix(tmp_path: Path) -> None:
    sink = ParquetSink(tmp_path / "flows")
    sink.write(
        flow_batch([{"src": "203.0.113.66", "dst": "192.0.2.1"}, {"src": "192.0.2.2", "dst": "192.0.2.1"}])
    )
    sink.close()
    (tmp_path / "list.txt").write_text("203.0.113.66\n")
    out = tmp_path / "alerts.jsonl"
    args = [
        "match",
        "--intel",
        str(tmp_path / "list.txt"),
        "--flows",
        str(tmp_path / "flows"),
        "--alerts",
        str(out),
    ]
    res = subprocess.run(
        [sys.executable, "-c", PROBE, *args], cwd=ROOT, capture_output=True, text=True, check=True
    )
    report = json.loads(res.stdout.splitlines()[-1])
    assert report["code"] == 0
    assert [json.loads(line)["indicator"] for line in out.read_text().splitlines()] == ["203.0.113.66"]
    loaded = [m for m in report["modules"] if m.startswith(NOT_FOR_A_LIST_HUNT)]
    assert loaded == []
    assert "pipeline.commands.match" in report["modules"]
    assert not [
        m for m in report["modules"] if m.startswith("pipeline.commands.") and not m.endswith("match")
    ]


@pytest.mark.parametrize("name", command_names())
def test_each_command_module_registers_its_own_command(name: str) -> None:
    parser = build_parser(name)
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    assert list(sub.choices) == [name]


def test_without_a_command_every_command_is_registered() -> None:
    (sub,) = [a for a in build_parser()._actions if a.dest == "command"]
    assert sorted(sub.choices) == command_names()
    assert {"collect", "match", "detect", "intel", "run", "decode"} <= set(sub.choices)


@pytest.mark.parametrize(
    "argv, command",
    [
        (["match", "--intel", "x"], "match"),
        (["-v", "match"], "match"),
        (["-vv", "collect", "--listen", "match"], "collect"),
        (["--help"], None),
        ([], None),
        (["nosuch", "match"], None),
    ],
)
def test_the_command_a_line_names(argv: list[str], command: str | None) -> None:
    assert named_command(argv) == command


def test_an_unknown_command_is_refused_with_the_list_of_commands() -> None:
    res = subprocess.run([sys.executable, "-m", "pipeline.cli", "nosuch"], cwd=ROOT, capture_output=True, text=True,
                         check=False)  # fmt: skip
    assert res.returncode == 2
    assert "invalid choice: 'nosuch'" in res.stderr and "match" in res.stderr and "collect" in res.stderr
