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
A file that is not a readable flow archive (corrupt, empty, another schema) is skipped and named, and
the hunt goes on: the exit status is then 1 (2 when no file could be read).
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

    loads = []
    for spec in args.intel:
        try:
            loads.append(load_source(spec, args.min_confidence, not args.all_attributes, now=now))
        except IntelError as exc:
            raise SystemExit(f"shoal: intel: {exc}") from exc
    for load in loads:
        for error in load.errors:
            print(f"shoal: intel: {error}", file=sys.stderr)
    for spec, load in zip(args.intel, loads, strict=True):
        if not load.count:
            # A named source that yields nothing (a manifest of missing files, an empty list, only
            # expired or unsupported items) must not pass for a hunt that found nothing.
            why = {"errors": len(load.errors), **dict(load.unsupported), **dict(load.skipped)}
            detail = ", ".join(f"{k}: {v}" for k, v in why.items() if v) or "it is empty"
            raise SystemExit(f"shoal: intel: {spec}: no usable indicator ({detail})")
    return IndicatorIndex.from_loads(loads, load_allowlists(args.allowlist)), loads


def load_allowlists(paths: list[str]) -> Any:
    """Every ``--allowlist`` file into one allowlist; exits with a message naming a file that cannot
    be read or holds no network (a garbage file must not silently allow nothing)."""
    from pipeline.intel import IntelError
    from pipeline.intel.allowlists import Allowlist, load_allowlist

    allow = Allowlist()
    for path in paths:
        before, ignored = len(allow.entries), allow.ignored
        try:
            load_allowlist(Path(path), into=allow)
        except IntelError as exc:
            raise SystemExit(f"shoal: allowlist: {exc}") from exc
        except (ValueError, TypeError, AttributeError) as exc:  # not a warninglist nor a CIDR list
            raise SystemExit(f"shoal: allowlist: {path}: not a warninglist or CIDR list ({exc})") from exc
        if len(allow.entries) == before:
            raise SystemExit(
                f"shoal: allowlist: {path}: no network in it ({allow.ignored - ignored} lines that are "
                "not addresses); a warninglist or one CIDR per line is expected"
            )
    return allow


def flow_files(pattern: str) -> list[str]:
    path = Path(pattern)
    if path.is_dir():
        return sorted(str(p) for p in path.rglob("*.parquet"))
    return sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]


def readable_flow_files(files: list[str], columns: list[str]) -> tuple[list[tuple[str, Any]], list[str]]:
    """(path, ParquetFile) of each file that is a flow archive with ``columns``, and a message naming
    each one that is not (unreadable, empty, corrupt footer, another schema)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.schemas import FLOW_SCHEMA

    good, bad = [], []
    for path in files:
        try:
            parquet = pq.ParquetFile(path)
            schema = parquet.schema_arrow
            wrong = [
                c
                for c in columns
                if c not in schema.names or schema.field(c).type != FLOW_SCHEMA.field(c).type
            ]
            if wrong:
                raise ValueError(f"not a flow archive (column {', '.join(wrong)} missing or of another type)")
            good.append((path, parquet))
        except (OSError, ValueError, pa.ArrowException) as exc:
            bad.append(f"{path}: {exc}")
    return good, bad


def run(args: argparse.Namespace) -> int:
    import pyarrow as pa
    from tqdm import tqdm

    from detectors.matcher import FLOW_COLUMNS, Matcher
    from pipeline.runtime.matching import match_rows

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
    columns = sorted(set(FLOW_COLUMNS) | {"src_as", "dst_as"})
    readable, skipped = readable_flow_files(files, columns)
    out = sys.stdout if args.alerts == "-" else open(args.alerts, "w", encoding="utf-8")  # noqa: SIM115
    total = sum(parquet.metadata.num_rows for _, parquet in readable)
    bar = tqdm(total=total, unit="flow", unit_scale=True, disable=not sys.stderr.isatty())
    hits, dropped = 0, [0, 0]
    try:
        for path, parquet in readable:
            try:  # a file can still be corrupt past its footer: skip the rest of it, named
                for batch in parquet.iter_batches(batch_size=1 << 20, columns=columns):
                    alerts, bad_flows, bad_alerts = match_rows(matcher.match, batch)
                    dropped[0], dropped[1] = dropped[0] + bad_flows, dropped[1] + bad_alerts
                    for alert in alerts:
                        out.write(json.dumps(alert, separators=(",", ":")) + "\n")
                    hits += len(alerts)
                    bar.update(batch.num_rows)
            except (OSError, ValueError, pa.ArrowException) as exc:
                skipped.append(f"{path}: {exc} (read up to the damage)")
    finally:
        bar.close()
        if out is not sys.stdout:
            out.close()
    for message in skipped:
        print(f"shoal match: skipped {message}", file=sys.stderr)
    if any(dropped):
        print(f"shoal match: {dropped[0]} flows and {dropped[1]} alerts dropped (they could not be matched "
              "or written; see the log above)", file=sys.stderr)  # fmt: skip
    s = matcher.stats
    print(f"shoal match: {s.flows} flows scanned, {hits} hits, {sum(s.suppressed.values())} suppressed by "
          f"allowlists, {s.inactive} on indicators not valid at the flow's time", file=sys.stderr)  # fmt: skip
    for load in loads:
        print(f"  {load.source}: {len(load.indicators)} indicators, unsupported {dict(load.unsupported)}, "
              f"skipped {dict(load.skipped)}, errors {len(load.errors)}", file=sys.stderr)  # fmt: skip
    for source, count in sorted(s.hits.items()):
        print(f"  hits from {source}: {count}", file=sys.stderr)
    if skipped:
        print(f"shoal match: {len(skipped)} of {len(files)} files skipped", file=sys.stderr)
        return 2 if not readable else 1
    return 0
