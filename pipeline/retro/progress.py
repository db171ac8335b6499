"""Progress of a retro-hunt over files and rows: a tqdm bar on a terminal, a log line every few seconds
otherwise (a hunt run from cron or under nohup still says how far it got)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from pipeline.retro.scan import FilePlan, Progress

LOG_EVERY_SECONDS = 10.0


class ScanProgress(Progress):
    def __init__(
        self,
        plans: list[FilePlan],
        stream: TextIO = sys.stderr,
        terminal: bool | None = None,
        every: float = LOG_EVERY_SECONDS,
    ) -> None:
        self.files = len(plans)
        self.total = sum(p.rows for p in plans)
        self.stream, self.every = stream, every
        self.file = self.rows = self.hits = 0
        self.started = self._logged = time.monotonic()
        self._bar = None
        if stream.isatty() if terminal is None else terminal:
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, unit="flow", unit_scale=True, file=stream, dynamic_ncols=True)

    def next_file(self, plan: FilePlan) -> None:
        self.file += 1
        if self._bar is not None:
            self._bar.set_description(f"file {self.file}/{self.files}", refresh=False)

    def advance(self, rows: int) -> None:
        self.rows += rows
        if self._bar is not None:
            self._bar.set_postfix(hits=self.hits, refresh=False)
            self._bar.update(rows)
            return
        now = time.monotonic()
        if now - self._logged >= self.every:
            self._logged = now
            share = f" ({100 * self.rows / self.total:.0f}%)" if self.total else ""
            print(
                f"shoal match: file {self.file}/{self.files}, {self.rows:,} of {self.total:,} flows{share}, "
                f"{self.hits:,} hits, {now - self.started:.0f} s",
                file=self.stream,
                flush=True,
            )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.set_postfix(hits=self.hits, refresh=True)
            self._bar.close()


__all__ = ["LOG_EVERY_SECONDS", "ScanProgress"]
