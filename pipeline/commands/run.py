"""``shoal run``: collector and matcher in one process, no Kafka — Shoal's embedded default."""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.commands._detection_args import add_detection_args, detection_settings
from pipeline.commands._signals import stop_event
from pipeline.samples import DEMO_DETECTIONS, DEMO_INTEL, DEMO_SHARING, DEMO_TRAFFIC

log = logging.getLogger("shoal.run")

HELP = """\
Receive NetFlow v5/v9 and IPFIX, match every flow against intel, write every alert to a JSON-lines
file, aggregate them into detections (per indicator and internal host, and scanners probing the
constituency, in tumbling windows, confirmed by rules: see docs/detections.md) and show the detections
on the terminal and in a second JSON-lines file, all in one process: the same collector, matcher and
confirmation code as `shoal collect`, the Kafka workers and `shoal confirm`. With no --intel it loads
the bundled sample intel (documentation address ranges only). --demo also plays the bundled sample
traffic into itself. Point routers at the listen ports (see docs/collector.md). Ctrl-C stops cleanly,
closing the open windows (final versions of their detections).
Collector settings also come from SHOAL_COLLECT__<SECTION>__<KEY> environment variables, as for
`shoal collect` (e.g. SHOAL_COLLECT__DECODER__TEMPLATE_KEY_INCLUDES_PORT=false); options win over them.
"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("run", help="embedded collector + matcher (no Kafka)", description=HELP,
                              formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--listen", action="append", metavar="HOST:PORT",
                   help="UDP listeners (default 0.0.0.0:2055 for NetFlow and 0.0.0.0:4739 for IPFIX); "
                        "[::]:PORT alone also receives IPv4")  # fmt: skip
    p.add_argument("--allow-exporter", action="append", metavar="CIDR",
                   help="accept export packets only from these source networks (repeatable); others are "
                        "dropped and counted (default: from anyone)")  # fmt: skip
    p.add_argument(
        "--intel", action="append", metavar="SOURCE", help="intel source (default: bundled sample intel)"
    )
    p.add_argument(
        "--allowlist", action="append", default=[], metavar="FILE", help="warninglist or CIDR list"
    )
    p.add_argument("--geoip", action="append", default=[], metavar="MMDB", help="MaxMind-format database(s)")
    p.add_argument("--alerts", default="shoal-alerts.jsonl", metavar="FILE", help="JSON-lines alert file")
    add_detection_args(p)
    p.add_argument("--detections-out", default="shoal-detections.jsonl", metavar="FILE",
                   help="JSON-lines file of detection versions (the last line of an id is its latest)")  # fmt: skip
    p.add_argument("--share-policy", metavar="FILE",
                   help="when stopping, show what this sharing policy would share from the detections (a dry "
                        "run: nothing is sent; `shoal share` sends) and write it as a STIX bundle "
                        "(default with --demo: the bundled demo policy)")  # fmt: skip
    p.add_argument("--shared-out", default="shoal-shared.json", metavar="FILE",
                   help="the dry run's STIX bundle (default %(default)s)")  # fmt: skip
    p.add_argument("--alert-lines", action="store_true", help="also print every raw alert on the terminal")
    p.add_argument("--parquet", metavar="DIR", help="also archive flows as Parquet")
    p.add_argument(
        "--metrics", default="127.0.0.1:9109", metavar="HOST:PORT", help="/metrics /healthz /readyz ('': off)"
    )
    p.add_argument("--quiet", action="store_true", help="no alert or detection lines on the terminal")
    p.add_argument("--demo", action="store_true", help="play the bundled sample traffic into the listeners")
    p.add_argument(
        "--duration", type=float, metavar="SECONDS", help="stop after this long (default: until Ctrl-C)"
    )
    p.add_argument("--min-confidence", type=int, default=0)
    p.add_argument("--all-attributes", action="store_true", help="use MISP attributes without to_ids too")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from detectors.matcher import Matcher, MatcherHandle
    from pipeline.collector.config import ConfigError, load_config
    from pipeline.collector.service import Collector
    from pipeline.commands.collect import serve_metrics
    from pipeline.commands.match import build_index
    from pipeline.confirm.stage import InProcessConfirmation, PartialsStage
    from pipeline.metrics import Health, new_registry
    from pipeline.runtime.alerts import ConsoleOutput, DetectionConsole, JsonLinesOutput
    from pipeline.runtime.index_metrics import IndexMetrics
    from pipeline.runtime.matching import MatchingSink
    from pipeline.sinks.base import SinkError

    bundled = not args.intel
    args.intel = args.intel or [str(DEMO_INTEL)]
    # The bundled sample traffic comes with a detection configuration naming its constituency.
    settings = detection_settings(args.detections_config or (str(DEMO_DETECTIONS) if bundled else None))
    listens = args.listen or ["0.0.0.0:2055", "0.0.0.0:4739"]
    overrides: dict[str, Any] = {"receive": {"listen": listens}, "batch": {"max_seconds": 0.5}}
    if args.allow_exporter:
        overrides["receive"]["allow_exporters"] = list(args.allow_exporter)
    if args.parquet:
        overrides["parquet"] = {"dir": args.parquet}
    try:  # settings first: a typo fails before intel takes its time to load
        config = load_config(None, overrides=overrides)
        policy = _share_policy(args)
    except ConfigError as exc:
        log.error("configuration: %s", exc)
        return 2
    index, loads = build_index(args, now=datetime.now(UTC))
    geoip = None
    if args.geoip:
        from detectors.geoip import GeoIP

        geoip = GeoIP([Path(p) for p in args.geoip])
    registry = new_registry()
    IndexMetrics(registry).built(index)
    try:
        outputs: list = [JsonLinesOutput(Path(args.alerts))]
        detection_outputs: list = [JsonLinesOutput(Path(args.detections_out))]
    except OSError as exc:
        print(f"shoal run: cannot write alerts or detections ({args.alerts}, {args.detections_out}): {exc}",
              file=sys.stderr)  # fmt: skip
        return 1
    if args.alert_lines and not args.quiet:
        outputs.append(ConsoleOutput(sys.stdout))
    if not args.quiet:
        detection_outputs.append(DetectionConsole(sys.stdout))
    confirmation = InProcessConfirmation(settings, detection_outputs, registry)
    partials = PartialsStage(settings, confirmation, registry)
    sinks: list = [MatchingSink(MatcherHandle(Matcher(index, geoip)), outputs, registry, partials)]
    if config.parquet.dir:
        from pipeline.sinks.parquet import ParquetSink

        sinks.append(ParquetSink(config.parquet.dir))
    collector = Collector(config, sinks, registry)
    if args.metrics:
        health = Health()
        health.add("listening", lambda: bool(collector.sockets))
        if not serve_metrics(registry, args.metrics, "shoal run", health):
            return 1
    confirmation.start()
    try:
        collector.start()
    except SinkError as exc:
        print(f"shoal run: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(
            f"shoal run: cannot listen on {', '.join(listens)}: {exc} (choose others with --listen)",
            file=sys.stderr,
        )
        return 1
    stop = stop_event(args.duration)
    addresses = ", ".join(f"{h}:{p}" for h, p in collector.addresses)
    print(f"shoal run: listening on {addresses}; {sum(x.count for x in loads)} indicators from "
          f"{', '.join(x.source for x in loads)}; alerts to {args.alerts}; detections to {args.detections_out} "
          f"({settings.detections.window_seconds}s windows, scans {'on' if partials.scans else 'off'})"
          + (f"; metrics at http://{args.metrics}/metrics" if args.metrics else ""), flush=True)  # fmt: skip
    if args.demo:
        threading.Thread(target=_play_demo, args=(collector.addresses,), daemon=True).start()
    while not stop.wait(0.5):  # a timeout keeps signal handlers prompt in the main thread
        pass
    collector.stop()
    confirmation.stop()
    latest = list(confirmation.latest.values())
    states = {state: sum(d["state"] == state for d in latest) for state in ("confirmed", "observed")}
    print(f"shoal run: stopped; {collector.flows_out} flows matched, {sinks[0].alerts} alerts, "
          f"{len(latest)} detections ({states['confirmed']} confirmed, {states['observed']} observed)", flush=True)  # fmt: skip
    if policy is not None:
        from pipeline.commands.share import report

        prefix = "shoal run: sharing (dry run, nothing sent; `shoal share` sends)"
        try:
            print(report(policy, latest, Path(args.shared_out), prefix=prefix), end="", flush=True)
        except OSError as exc:
            print(f"shoal run: cannot write {args.shared_out}: {exc}", file=sys.stderr)
            return 1
    return 0


def _share_policy(args: argparse.Namespace) -> Any:
    """The sharing policy of the stop-time dry run (--share-policy, or the demo's with --demo)."""
    path = args.share_policy or (str(DEMO_SHARING) if args.demo else None)
    if path is None:
        return None
    from pipeline.config import ConfigError
    from pipeline.share.policy import load_policy

    try:
        return load_policy(path)
    except ConfigError as exc:
        raise ConfigError(f"sharing policy {path}: {exc}") from None


def _play_demo(addresses: list[tuple[str, int]]) -> None:
    from pipeline.runtime.replay import replay

    host, first = addresses[0]
    second = addresses[1][1] if len(addresses) > 1 else first
    target = "::1" if ":" in host else "127.0.0.1"
    time.sleep(0.3)
    sent = replay(DEMO_TRAFFIC, target, {2055: first, 4739: second}, pace_seconds=0.01)
    print(f"shoal run --demo: played {sent} sample export packets (NetFlow v5, v9, IPFIX) into the collector",
          flush=True)  # fmt: skip
