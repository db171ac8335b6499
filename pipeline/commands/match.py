"""``shoal match``: offline matching of archived flows (Parquet) against intel — also the retro-hunt."""

from __future__ import annotations

import argparse
import glob
import os
import resource
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

    from detectors.matcher import Matcher
    from pipeline.retro import Reads

HELP = """\
Read flows archived by `shoal collect` (a Parquet file, a directory such as the collector's output,
or a glob) and write one JSON line per (flow, indicator, side) hit. Indicators are checked at the
flow's own time, so expired intel does not fire on new traffic and retro-hunts over old traffic use
the intel that was valid then. Sources: STIX 2.1 bundle or directory, MISP event JSON or feed
directory, plain list (IP, CIDR or IP|port per line), csv:PATH:COLUMN[:PORT_COLUMN], taxii:URL
(credentials in SHOAL_TAXII_USER/SHOAL_TAXII_PASSWORD), misp:URL (key in SHOAL_MISP_KEY).
A file that is not a readable flow archive (corrupt, empty, another schema) is skipped and named, and
the hunt goes on: the exit status is then 1 (2 when no file could be read).

--since/--until keep the flows whose own time span overlaps [since, until): ended at or after --since,
started before --until (no end time: its receipt; no start: its end). Times: ISO 8601 (2026-12-01,
2026-12-01T10:00Z; UTC unless a zone is given) or a time before now (24h, 90m, 7d, 2w). Files and row
groups received more than an hour outside the window are not read, and flows received more than an
hour outside it are not reported. Progress over files and flows goes to stderr: a bar on a terminal,
a line every 10 s otherwise.
"""


MATCH_ROWS = 16384
"""Candidate flows matched together: the matcher's cost per call (~0.4 ms) is paid once per this many,
and their alerts (~2 KB each as dicts) are held at most this many at a time."""


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
    p.add_argument("--since", metavar="TIME",
                   help="only flows that ended at or after TIME: ISO 8601 (2026-12-01, 2026-12-01T10:00Z; "
                        "UTC unless a zone is given) or a time before now (24h, 90m, 7d; --since=-24h too)")  # fmt: skip
    p.add_argument("--until", metavar="TIME", help="only flows that started before TIME (same forms)")
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


def run(args: argparse.Namespace) -> int:
    from detectors.matcher import FLOW_COLUMNS, Matcher
    from pipeline.retro import ScanProgress, ScanStats, TimeWindow, WindowError, plan_archive, scan_archive
    from pipeline.retro.alerts import alert_lines
    from pipeline.runtime.matching import match_rows

    try:
        window = TimeWindow.parse(args.since, args.until)
    except WindowError as exc:
        raise SystemExit(f"shoal match: {exc}") from exc
    began = time.perf_counter()
    index, loads = build_index(args)
    geoip = None
    if args.geoip:
        from detectors.geoip import GeoIP

        geoip = GeoIP([Path(p) for p in args.geoip])
    matcher = Matcher(index, geoip)
    loaded, cpu = time.perf_counter(), _cpu_seconds()
    files = flow_files(args.flows)
    if not files:
        print(f"shoal: no Parquet files at {args.flows}", file=sys.stderr)
        return 2
    columns = list(FLOW_COLUMNS)
    stats = ScanStats()
    plans = plan_archive(files, columns, window, stats)
    out = sys.stdout if args.alerts == "-" else open(args.alerts, "wb")  # noqa: SIM115
    write = out.buffer.write if out is sys.stdout else out.write
    progress = ScanProgress(plans)
    hits, dropped, closed = 0, [0, 0], False
    flows = scan_archive(plans, hunt_reads(matcher, columns), window, stats, progress)
    try:
        for batch in rebatch(flows, MATCH_ROWS):
            alerts, bad_flows, bad_alerts = match_rows(matcher.match, batch, alert_lines)
            dropped[0], dropped[1] = dropped[0] + bad_flows, dropped[1] + bad_alerts
            if alerts:
                try:
                    write(b"".join(alerts))
                except BrokenPipeError:  # `shoal match ... --alerts - | head`: the reader has gone
                    closed = True
                    break
            hits += len(alerts)
            progress.hits = hits
    finally:
        flows.close()  # stops the read-ahead thread
        progress.close()
        if out is not sys.stdout:
            out.close()
        elif closed:  # nothing more can be written there, not even at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        else:
            out.flush()
    timing = (loaded - began, time.perf_counter() - loaded, _cpu_seconds() - cpu)
    report(stats, matcher, loads, hits, dropped, window, timing)
    if closed:
        print(
            f"shoal match: the alerts output was closed after {hits} hits; the hunt stopped there",
            file=sys.stderr,
        )
        return 1
    if stats.files_skipped:
        print(f"shoal match: {len(stats.files_skipped)} of {len(files)} files skipped", file=sys.stderr)
        return 2 if not stats.files_read else 1
    return 0


def hunt_reads(matcher: Matcher, columns: list[str]) -> Reads:
    """What the scan decodes for ``matcher``: the candidate columns of every flow; when the matcher's
    ``find`` reads more (ports, times, AS for constrained, time-bound or allowlisted indicators), those
    of the candidates, then the rest only for the flows ``find`` confirms (a list of IP|port entries
    names addresses that carry much traffic on other ports)."""
    import numpy as np

    from detectors.matcher import Matcher
    from pipeline.retro import Reads

    find_columns = matcher.find_columns()
    candidate_columns = matcher.candidate_columns()
    if set(find_columns) <= set(candidate_columns):  # every candidate hits, or is told apart by its addresses
        return Reads(columns, candidate_columns, matcher.candidates)
    confirmer = Matcher(matcher.index, matcher.geoip)  # counts apart: the alerts' matcher counts hits once

    def confirm(batch: pa.RecordBatch) -> np.ndarray:
        try:
            return np.unique(confirmer.find(batch).rows)
        except Exception:  # matched again downstream, where failing rows are isolated and counted
            return np.arange(batch.num_rows)

    return Reads(columns, candidate_columns, matcher.candidates, find_columns, confirm)


def rebatch(batches: Iterator[pa.RecordBatch], rows: int, seconds: float = 1.0) -> Iterator[pa.RecordBatch]:
    """``batches`` gathered into batches of ``rows`` rows or of what ``seconds`` brought: a row group's
    few candidate flows are matched together with the next ones', and hits still show as they come."""
    import pyarrow as pa

    held: list[pa.RecordBatch] = []
    count, since = 0, time.monotonic()
    for batch in batches:
        held.append(batch)
        count += batch.num_rows
        if count >= rows or time.monotonic() - since >= seconds:
            yield pa.Table.from_batches(held).combine_chunks().to_batches()[0]
            held, count, since = [], 0, time.monotonic()
    if held:
        yield pa.Table.from_batches(held).combine_chunks().to_batches()[0]


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of the process
    return usage.ru_utime + usage.ru_stime


def report(
    stats: Any,
    matcher: Any,
    loads: list,
    hits: int,
    dropped: list[int],
    window: Any,
    timing: tuple[float, float, float],
) -> None:
    """The hunt's closing lines on stderr: what was skipped, read and found."""
    for message in stats.files_skipped:
        print(f"shoal match: skipped {message}", file=sys.stderr)
    if any(dropped):
        print(f"shoal match: {dropped[0]} flows and {dropped[1]} alerts dropped (they could not be matched "
              "or written; see the log above)", file=sys.stderr)  # fmt: skip
    s = matcher.stats
    print(f"shoal match: {stats.flows_read} flows scanned, {hits} hits, {sum(s.suppressed.values())} suppressed by "
          f"allowlists, {s.inactive} on indicators not valid at the flow's time", file=sys.stderr)  # fmt: skip
    files, steps = "", [f"{stats.candidates} candidates"]
    if window.bounded:
        files = f" ({stats.files_pruned} outside the window by their date=/hour= folder)"
        steps.append(f"{stats.in_window} in the window")
    if stats.confirming:
        steps.append(f"{stats.confirmed} confirmed by find")
    groups = (f"{stats.row_groups_pruned} outside the window by their receipt-time statistics; " if window.bounded
              else "") + f"{stats.row_groups_fetched} decoded whole for {stats.flows_kept} flows: {', '.join(steps)}"  # fmt: skip
    print(f"shoal match: read {stats.files_read} of {stats.files} files{files}, {stats.row_groups_read} of "
          f"{stats.row_groups} row groups ({groups})", file=sys.stderr)  # fmt: skip
    load_s, scan_s, scan_cpu = timing
    rate = f" = {stats.flows_read / scan_cpu / 1e6:.1f}M flows per CPU-second" if scan_cpu > 0 else ""
    print(f"shoal match: intel loaded and indexed in {load_s:.2f} s; scan {scan_s:.2f} s, {scan_cpu:.2f} CPU-s{rate}",
          file=sys.stderr)  # fmt: skip
    for load in loads:
        print(f"  {load.source}: {load.count} indicators, unsupported {dict(load.unsupported)}, "
              f"skipped {dict(load.skipped)}, errors {len(load.errors)}", file=sys.stderr)  # fmt: skip
    for source, count in sorted(s.hits.items()):
        print(f"  hits from {source}: {count}", file=sys.stderr)
