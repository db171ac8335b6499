"""docs/metrics.md, written from what the commands really export (their /metrics scrapes in
test_soc_dashboard.py), so the document cannot drift from the code: the test fails on any difference,
and ``SHOAL_WRITE_METRICS_DOC=1`` rewrites the document from the scrapes instead."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
SUFFIXES = ("_bucket", "_count", "_sum", "_total")

HEADER = """\
# Metrics

Every long-running command serves Prometheus metrics at `/metrics`, liveness at `/healthz` and
readiness at `/readyz` on its metrics address (`--metrics HOST:PORT`, or `[metrics] listen` in the
collector's file; with no host it binds 127.0.0.1, so give `0.0.0.0:PORT` or the pod address to let
Prometheus in). `/readyz` answers 503 and names the failing checks until the command is ready:
`shoal collect` listening (and, with `--kafka`, a broker answering), `shoal run` listening,
`shoal detect` index loaded, `shoal intel sync` first round done, `shoal confirm` its Faust app
running, `shoal share` the detections topic read up to each destination's committed offset; and every
command that uses Kafka (all but `shoal run`), a broker answering ("kafka reachable").
Checks that ask a broker or the collector's worker processes run in the background every 2 s; a
probe answers with their last result at once when it was ready, and otherwise after a fresh run
(waiting at most 1 s for it). A check that has not come back for 10 s is itself a failing reason, so
a slow broker makes a pod not ready instead of making its probes time out.

Every label set is bounded: `exporter` by the collector's `metrics.max_exporters` (first 64 seen keep
their name, later ones count as `other`), `feed` by the first 64 intel feeds seen (then `other`),
`tlp` by the TLP 2.0 levels plus `none`, `listener`, `sink`, `topic` and `source` by the command's own
configuration, `partition` by the flows topic's partitions, `reason`, `outcome`, `version` and
`domain` by the code (decoder reasons, observation domains are capped by the decoder's template
limits), `worker` by the collector's `--workers` (each worker caps its own labels), `kind`, `state`
and `verdict` by the detection format, `destination` by the sharing policy's destinations
(`shoal share`).

This table is generated from the commands' real scrapes by `tests/kafka/test_soc_dashboard.py`
(`SHOAL_WRITE_METRICS_DOC=1` rewrites it); the test fails when code and table differ.

| metric | type | labels | commands | meaning |
|---|---|---|---|---|
"""


@dataclass
class Family:
    name: str
    type: str
    help: str
    labels: set[str]
    commands: set[str]
    sampled: bool


def families(scrapes: dict[str, str]) -> dict[str, Family]:
    """Metric families of each command's scrape (exposition names: counters end in _total)."""
    out: dict[str, Family] = {}
    for command, text in scrapes.items():
        for fam in text_string_to_metric_families(text):
            name = fam.name + ("_total" if fam.type == "counter" else "")
            found = out.setdefault(name, Family(name, fam.type, fam.documentation, set(), set(), False))
            found.commands.add(command)
            for sample in fam.samples:
                found.labels |= set(sample.labels) - {"le", "quantile"}
                found.sampled = True
    return out


def _row(f: Family, labels: str) -> str:
    return f"| `{f.name}` | {f.type} | {labels} | {', '.join(sorted(f.commands))} | {f.help} |"


def _documented_labels() -> dict[str, str]:
    if not DOC.exists():
        return {}
    rows = re.findall(r"^\| `([^`]+)` \| [a-z]+ \| ([^|]*) \|", DOC.read_text(), re.MULTILINE)
    return {name: labels.strip() for name, labels in rows}


def render(found: dict[str, Family]) -> str:
    """A family that had no samples in this run keeps the labels the document gives it (a label set
    is only known from samples); every other cell comes from the scrapes."""
    known = _documented_labels()
    rows = []
    for name in sorted(found):
        f = found[name]
        labels = ", ".join(f"`{x}`" for x in sorted(f.labels)) if f.sampled else known.get(name, "")
        rows.append(_row(f, labels or "-"))
    return HEADER + "\n".join(rows) + "\n"
