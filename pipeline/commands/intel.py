"""``shoal intel``: inspect intel sources (``stats``); Kafka publishing adds sub-commands here."""

from __future__ import annotations

import argparse
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("intel", help="inspect intel sources")
    sub = p.add_subparsers(dest="intel_command", metavar="SUBCOMMAND", required=True)
    stats = sub.add_parser(
        "stats", help="what each source yields: indicators by kind, unsupported, expired..."
    )
    stats.add_argument("sources", nargs="+", metavar="SOURCE")
    stats.add_argument("--allowlist", action="append", default=[], metavar="FILE")
    stats.add_argument("--min-confidence", type=int, default=0)
    stats.add_argument("--all-attributes", action="store_true")
    stats.set_defaults(func=run_stats)


def _kind(condition: Any) -> str:
    if condition.network is None:
        return "as"
    family = f"ipv{condition.network.version}"
    exact = condition.network.num_addresses == 1
    extra = "+port" if condition.src_ports or condition.dst_ports else ""
    return f"{family}-{'address' if exact else 'cidr'}{extra}"


def run_stats(args: argparse.Namespace) -> int:
    from detectors.index import IndicatorIndex
    from pipeline.intel import IntelError, load_source
    from pipeline.intel.allowlists import Allowlist, load_allowlist

    now = datetime.now(UTC)
    allow = Allowlist()
    for path in args.allowlist:
        load_allowlist(Path(path), into=allow)
    status = 0
    for spec in args.sources:
        try:
            load = load_source(spec, args.min_confidence, not args.all_attributes, now=now)
        except IntelError as exc:
            print(f"{spec}: ERROR {exc}")
            status = 1
            continue
        kinds = Counter(_kind(c) for i in load.indicators for c in i.conditions)
        print(f"{spec}: {len(load.indicators)} indicators")
        print(f"  conditions by kind: {dict(sorted(kinds.items()))}")
        print(f"  unsupported: {dict(load.unsupported) or 0}")
        print(f"  skipped (revoked/expired/confidence/to_ids): {dict(load.skipped) or 0}")
        if allow.entries:
            index = IndicatorIndex.build(load.indicators, allow)
            suppressed = _suppressed_by_allowlist(index)
            print(f"  indicators inside allowlisted ranges: {suppressed}")
        for error in load.errors:
            print(f"  error: {error}")
    return status


def _suppressed_by_allowlist(index: Any) -> int:
    """Indicators whose own first address is allowlisted (they would never alert there)."""
    import numpy as np

    from detectors.addresses import Addresses
    from pipeline.schemas import ip_to_bytes16

    rows = [
        ip_to_bytes16(c.network.network_address) for i in index.indicators for c in i.conditions if c.network
    ]
    if not rows:
        return 0
    raw = np.frombuffer(b"".join(rows), dtype=np.uint8).reshape(-1, 16)
    hit, _ = index.allow.lookup(Addresses(raw))
    return len(np.unique(hit))
