"""The ``shoal`` command. Each sub-command lives in its own module under ``pipeline/commands`` and
exposes ``register(subparsers)``; this file only discovers and dispatches them."""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

from pipeline import __version__, commands
from pipeline.allocator import tune_allocator


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shoal",
        description="Flow telemetry (NetFlow v5/v9, IPFIX) matched against shared threat intelligence.",
    )
    parser.add_argument("--version", action="version", version=f"shoal {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{commands.__name__}.{info.name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    tune_allocator()
    from pipeline.transport.access import KafkaAccessError

    try:
        return int(args.func(args) or 0)
    except KafkaAccessError as exc:  # refused credentials or a missing ACL: one line, no traceback
        print(f"shoal {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
