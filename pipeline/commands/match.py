"""``shoal match``: offline matching of archived flows (Parquet) against intel — also the retro-hunt."""

from __future__ import annotations

import argparse
import glob
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

HELP = """\
Read flows archived by `shoal collect` (a Parquet file, a directory such as the collector's output,
or a glob) and write one JSON line per (flow, indicator, side) hit. Indicators are checked at the
flow's own time, so expired intel does not fire on new traffic and retro-hunts over old traffic use
the intel that was valid then. Sources: STIX 2.1 bundle or directory, MISP event JSON or feed
directory, plain list (IP, CIDR or IP|port per line), csv:PATH:COLUMN[:PORT_COLUMN], taxii:URL
(credentials in SHOAL_TAXII_USER/SHOAL_TAXII_PASSWORD), misp:URL (key in SHOAL_MISP_KEY).
"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("match", help="match archived flows against intel (retro-hunt)", description=HELP,
                              formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument(
        "--intel", action="append", required=True, metavar="SOURCE", help="intel source (repeatable)"
    )
    p.add_argument("--allowlist", action="append", default=[], metavar="FILE",
                   help="MISP warninglist JSON or CIDR list whose ranges must not alert (repeatable)")  # fmt: skip
    p.add_argument("--geoip", action="append", default=[], metavar="MMDB",
                   help="MaxMind-format database(s) for the remote address's AS and country (repeatable)")  # fmt: skip
    p.add_argument("--flows", required=True, metavar="PATH", help="Parquet file, directory or glob")
    p.add_argument(
        "--alerts", required=True, metavar="OUT.jsonl", help="where to write alerts ('-' for stdout)"
    )
    p.add_argument(
        "--min-confidence", type=int, default=0, help="ignore STIX indicators below this confidence"
    )
    p.add_argument("--all-attributes", action="store_true", help="use MISP attributes without to_ids too")
    p.set_defaults(func=run)


def build_index(args: argparse.Namespace, now: datetime | None = None) -> tuple[Any, list]:
    """Index of every --intel source. ``now`` (live detection) drops intel already expired; retro-hunts
    pass None and judge validity at each flow's time."""
    from detectors.index import IndicatorIndex
    from pipeline.intel import IntelError, load_source
    from pipeline.intel.allowlists import Allowlist, load_allowlist

    loads = []
    for spec in args.intel:
        try:
            loads.append(load_source(spec, args.min_confidence, not args.all_attributes, now=now))
        except IntelError as exc:
            raise SystemExit(f"shoal: intel: {exc}") from exc
    for load in loads:
        for error in load.errors:
            print(f"shoal: intel: {error}", file=sys.stderr)
    allow = Allowlist()
    for path in args.allowlist:
        try:
            load_allowlist(Path(path), into=allow)
        except IntelError as exc:
            raise SystemExit(f"shoal: allowlist: {exc}") from exc
    return IndicatorIndex.build([i for load in loads for i in load.indicators], allow), loads


def flow_files(pattern: str) -> list[str]:
    path = Path(pattern)
    if path.is_dir():
        return sorted(str(p) for p in path.rglob("*.parquet"))
    return sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]


def run(args: argparse.Namespace) -> int:
    import pyarrow.dataset as ds
    from tqdm import tqdm

    from detectors.matcher import FLOW_COLUMNS, Matcher, alerts_to_dicts

    index, loads = build_index(args)
    geoip = None
    if args.geoip:
        from detectors.geoip import GeoIP

        geoip = GeoIP([Path(p) for p in args.geoip])
    matcher = Matcher(index, geoip)
    files = flow_files(args.flows)
    if not files:
        print(f"shoal: no Parquet files at {args.flows}", file=sys.stderr)
        return 2
    dataset = ds.dataset(files, format="parquet")
    columns = sorted(set(FLOW_COLUMNS) | {"src_as", "dst_as"})
    out = sys.stdout if args.alerts == "-" else open(args.alerts, "w", encoding="utf-8")  # noqa: SIM115
    bar = tqdm(total=dataset.count_rows(), unit="flow", unit_scale=True, disable=not sys.stderr.isatty())
    hits = 0
    try:
        for batch in dataset.to_batches(columns=columns, batch_size=1 << 20):
            for alert in alerts_to_dicts(matcher.match(batch)):
                out.write(json.dumps(alert, separators=(",", ":")) + "\n")
                hits += 1
            bar.update(batch.num_rows)
    finally:
        bar.close()
        if out is not sys.stdout:
            out.close()
    s = matcher.stats
    print(f"shoal match: {s.flows} flows scanned, {hits} hits, {sum(s.suppressed.values())} suppressed by "
          f"allowlists, {s.inactive} on indicators not valid at the flow's time", file=sys.stderr)  # fmt: skip
    for load in loads:
        print(f"  {load.source}: {len(load.indicators)} indicators, unsupported {dict(load.unsupported)}, "
              f"skipped {dict(load.skipped)}, errors {len(load.errors)}", file=sys.stderr)  # fmt: skip
    for source, count in sorted(s.hits.items()):
        print(f"  hits from {source}: {count}", file=sys.stderr)
    return 0
