"""The ``shoal`` command. Each sub-command lives in its own module under ``pipeline/commands`` (named
as the command) and exposes ``register(subparsers)``; this file only discovers and dispatches them.

A command line that names a command imports that command's module alone: the others' imports (the
collector's compiled decoders, Kafka, Faust) cost a one-shot command such as ``shoal match`` about a
second of start-up. Without one (``shoal --help``, a typo), every command is registered."""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

from pipeline import __version__, commands
from pipeline.allocator import tune_allocator


def command_names() -> list[str]:
    """Every sub-command, by module name."""
    return sorted(m.name for m in pkgutil.iter_modules(commands.__path__) if not m.name.startswith("_"))


def named_command(argv: list[str]) -> str | None:
    """The sub-command ``argv`` names (its first word that is not an option: the top-level options
    take no value), None when that is not a command."""
    word = next((a for a in argv if not a.startswith("-")), None)
    return word if word in command_names() else None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser of every sub-command, or of ``only`` (a command name) alone."""
    parser = argparse.ArgumentParser(
        prog="shoal",
        description="Flow telemetry (NetFlow v5/v9, IPFIX) matched against shared threat intelligence.",
    )
    parser.add_argument("--version", action="version", version=f"shoal {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in [only] if only else command_names():
        importlib.import_module(f"{commands.__name__}.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(named_command(argv)).parse_args(argv)
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    tune_allocator()
    try:
        return int(args.func(args) or 0)
    except Exception as exc:
        # Refused Kafka credentials or a missing ACL: one line, no traceback. Only a command that
        # imported the Kafka access module can raise its error (a match need not load Kafka's client).
        access = sys.modules.get("pipeline.transport.access")
        if access is None or not isinstance(exc, access.KafkaAccessError):
            raise
        print(f"shoal {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
