"""Clean stops for long-running commands: SIGINT/SIGTERM (and an optional duration) set one event."""

from __future__ import annotations

import signal
import threading


def stop_event(duration: float | None = None) -> threading.Event:
    """An event set by SIGINT or SIGTERM, or after ``duration`` seconds; the command's loop finishes
    its current step, flushes and exits 0."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    if duration:
        timer = threading.Timer(duration, stop.set)
        timer.daemon = True
        timer.start()
    return stop
