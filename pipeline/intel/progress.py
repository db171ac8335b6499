"""Progress of long intel loads: a tqdm bar on a terminal, a log line every few seconds otherwise
(``-v`` shows them), so a load of millions of indicators is never a silent minute."""

from __future__ import annotations

import logging
import sys
import time
from types import TracebackType

from tqdm import tqdm

log = logging.getLogger("shoal.intel")
LOG_EVERY_SECONDS = 5.0


class Progress:
    """``update(n)`` as work is done, in ``unit`` (bytes of a file, messages of a topic)."""

    def __init__(self, what: str, total: int | None, unit: str = "B") -> None:
        self.what, self.total, self.unit = what, total, unit
        self.done = 0
        self.items = 0
        self._bar = (
            tqdm(total=total, desc=what, unit=unit, unit_scale=True, leave=False, file=sys.stderr)
            if sys.stderr.isatty()
            else None
        )
        self._started = self._logged = time.monotonic()

    def update(self, n: int, items: int = 0) -> None:
        """``n`` more units done, ``items`` more indicators read."""
        self.done += n
        self.items += items
        if self._bar is not None:
            self._bar.update(n)
            if items:
                self._bar.set_postfix(indicators=f"{self.items:,}", refresh=False)
            return
        now = time.monotonic()
        if now - self._logged >= LOG_EVERY_SECONDS:
            self._logged = now
            share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
            log.info("%s: %s %s read%s, %s indicators, %.0f s", self.what, f"{self.done:,}", self.unit, share,
                     f"{self.items:,}", now - self._started)  # fmt: skip

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elapsed = time.monotonic() - self._started
        if elapsed >= LOG_EVERY_SECONDS:
            log.info("%s: done, %s indicators in %.1f s", self.what, f"{self.items:,}", elapsed)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()
