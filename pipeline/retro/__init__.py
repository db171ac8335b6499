"""Retro-hunts over the flow archive: which files, row groups and rows to read (``--since``/``--until``,
partition folders, row-group statistics), and reading them column-wise, candidates first."""

from pipeline.retro.progress import ScanProgress
from pipeline.retro.scan import FilePlan, Reads, ScanStats, plan_archive, scan_archive
from pipeline.retro.window import TimeWindow, WindowError, parse_time

__all__ = [
    "FilePlan",
    "Reads",
    "ScanProgress",
    "ScanStats",
    "TimeWindow",
    "WindowError",
    "parse_time",
    "plan_archive",
    "scan_archive",
]
