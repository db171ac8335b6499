"""Several collector processes on the same ports: ``shoal collect --workers N``.

One collector process decodes on one core (its receive thread holds the GIL; only Parquet and
Kafka encoding run beside it). With workers, the ``shoal collect`` process becomes a *supervisor*:

* it claims each listening port and binds one SO_REUSEPORT socket per worker on it
  (:mod:`pipeline.collector.reuseport`), so the kernel hashes each exporter to one worker and its
  templates stay there; a second ``shoal collect`` cannot join the group;
* it starts N worker processes (multiprocessing, *spawn*: a fresh interpreter each, which inherits
  nothing but its own sockets and a control pipe). Each is a whole collector (receive and writer
  threads, its own sinks, Parquet files tagged ``w<i>``, a Kafka producer of its own, its own decoder
  state file);
* it serves ``/metrics``, ``/healthz`` and ``/readyz`` for all of them: each scrape asks every worker
  for its registry's families over the control pipe and exposes them with a ``worker`` label;
* it supervises: a worker that dies (killed by the OOM killer, a crash in native code) is started
  again on the *same* sockets, which the supervisor keeps open, so the kernel keeps queueing that
  worker's exporters meanwhile and hashes them to it again. More than ``MAX_CRASHES`` deaths within
  ``CRASH_WINDOW`` seconds (a crash loop), or a worker that cannot start at all, stop the collector
  with an error instead: the other workers flush and exit, and the process exits 1 for systemd or
  Kubernetes to act on;
* it alone takes SIGINT/SIGTERM: workers ignore both (a terminal's Ctrl-C and systemd signal the
  whole process group) and stop, flushing everything, when the supervisor asks or when its pipe
  closes (the supervisor died).

prometheus-client's multiprocess mode would aggregate processes through memory-mapped files, but
it does not run custom collectors, and the collector's metrics are mostly computed at scrape time
(the decoder's counters, kernel drops per socket from ``/proc/net/udp``); hence the scrape over
the pipe, which keeps every worker's registry as it is.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import logging
import multiprocessing
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector as _PromCollector

from pipeline.collector.config import CollectorConfig, Endpoint
from pipeline.collector.reuseport import bind_group
from pipeline.collector.service import Collector, v6only
from pipeline.metrics import NAMESPACE, Health, new_registry

log = logging.getLogger(__name__)

WorkerBuild = Callable[[int, CollectorRegistry, list[socket.socket]], tuple[Collector, Health]]
"""Builds worker ``i``'s collector (not started) and its readiness checks, in the worker process,
from its registry and its listeners (one per listen address). Must be picklable."""

MAX_CRASHES = 3
CRASH_WINDOW = 60.0
START_TIMEOUT = 120.0
"""Seconds a worker may take to report it is listening (sink checks: a Kafka broker may take 10 s)."""
STOP_TIMEOUT = 240.0
"""Seconds a worker may take to flush and exit on stop (the collector's threads and sinks have
their own, shorter limits)."""


class WorkerFailed(RuntimeError):
    """A worker could not start, or workers keep dying: the collector must stop."""


def worker_main(
    build: WorkerBuild, index: int, listeners: list[socket.socket], conn: Connection, log_level: int
) -> None:
    """A worker process: build and start its collector, report, then answer the supervisor's
    requests (``metrics``, ``health``, ``stop``) until asked to stop or the pipe closes."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)  # the supervisor decides when workers stop
    logging.basicConfig(
        level=log_level, format=f"%(asctime)s %(levelname)s worker {index} %(name)s: %(message)s"
    )
    from pipeline.allocator import tune_allocator

    tune_allocator()
    registry = new_registry()
    try:
        collector, health = build(index, registry, listeners)
        collector.start()
    except Exception as exc:  # reported to the supervisor, which fails the collector with it
        log.debug("start failed", exc_info=True)
        with contextlib.suppress(OSError):  # the supervisor may have given up on us already
            conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        raise SystemExit(1) from None
    gc.collect()  # start-up objects out of every full collection, as in the single collector
    gc.freeze()
    seq: int | None = None
    with contextlib.suppress(OSError):  # if the supervisor gave up on us meanwhile, the loop stops
        conn.send(("ready", [s.label for s in collector.sockets]))
    while True:
        try:
            kind, seq = conn.recv()
        except (EOFError, OSError):
            log.info("supervisor gone: stopping")
            kind, seq = "stop", None
        if kind == "stop":
            break
        reply: Any = None
        try:
            if kind == "metrics":
                reply = list(registry.collect())
            elif kind == "health":
                reply = health.failing()
        except Exception as exc:  # a probe or scrape must get an answer
            log.exception("%s request failed", kind)
            reply = exc if kind == "metrics" else [f"{type(exc).__name__}: {exc}"]
        conn.send((seq, reply))
    collector.stop()
    if seq is not None:
        with contextlib.suppress(OSError):
            conn.send((seq, collector.summary()))


class WorkerHandle:
    """The supervisor's side of one worker: its process, control pipe and request sequence."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.name = str(index)
        self.process: BaseProcess | None = None
        self.conn: Connection | None = None
        self.ready = False
        self.stopping = False
        self.labels: list[str] = []
        self._lock = threading.Lock()
        self._seq = 0

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()

    def close(self) -> None:
        """Close the pipe (once no request is using it) and release a process that has ended."""
        locked = self._lock.acquire(timeout=10)
        try:
            if self.conn is not None:
                self.conn.close()
                self.conn = None
        finally:
            if locked:
                self._lock.release()
        if self.process is not None and not self.process.is_alive():
            self.process.close()
            self.process = None

    def request(self, kind: str, timeout: float) -> Any:
        """Send a request and wait for its reply; ``TimeoutError`` if none comes in ``timeout``,
        ``EOFError``/``OSError`` if the worker is gone. A reply that comes after its request timed
        out is skipped by the next request (replies carry the request's number)."""
        if not self._lock.acquire(timeout=timeout):
            raise TimeoutError(f"worker {self.index} busy")
        try:
            if self.conn is None:
                raise EOFError(f"worker {self.index} not running")
            self._seq += 1
            self.conn.send((kind, self._seq))
            deadline = time.monotonic() + timeout
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self.conn.poll(remaining):
                    raise TimeoutError(f"worker {self.index} did not answer {kind!r} in {timeout:g} s")
                seq, reply = self.conn.recv()
                if seq == self._seq:
                    return reply
        finally:
            self._lock.release()


class Supervisor:
    """Binds, starts, watches and stops ``count`` workers; see the module docstring."""

    def __init__(
        self,
        config: CollectorConfig,
        build: WorkerBuild,
        count: int,
        registry: CollectorRegistry | None = None,
        log_level: int | None = None,
    ) -> None:
        if count < 2:
            raise ValueError("a supervisor is for two workers or more")
        self.config = config
        self.build = build
        self.count = count
        self.registry = registry if registry is not None else new_registry()
        self.log_level = log_level if log_level is not None else logging.getLogger().getEffectiveLevel()
        self.endpoints = [Endpoint.parse(t) for t in config.receive.listen]
        self.workers = [WorkerHandle(i) for i in range(count)]
        self.groups: list[list[socket.socket]] = []
        """Per listen address, one socket per worker (kept open here across worker restarts)."""
        self._claims: dict[int, socket.socket] = {}
        self._context = multiprocessing.get_context("spawn")
        self._deaths: collections.deque[float] = collections.deque()
        self.summaries: dict[int, dict[str, int]] = {}
        self.up = Gauge(
            "collector_worker_up",
            "1 while the worker process is listening, 0 while it starts or restarts",
            ["worker"],
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.restarts = Counter(
            "collector_worker_restarts",
            "Worker processes started again after they died",
            ["worker"],
            namespace=NAMESPACE,
            registry=self.registry,
        )
        for w in self.workers:
            self.up.labels(w.name).set(0)
            self.restarts.labels(w.name)
        self.registry.register(WorkerMetrics(self.workers))

    # -- lifecycle --------------------------------------------------------------------------------
    def bind(self) -> None:
        """Claim every port and bind every worker's socket (``OSError``: nothing is left bound)."""
        rc = self.config.receive
        by_address = not self.config.decoder.template_key_includes_port
        try:
            for ep in self.endpoints:
                self.groups.append(
                    bind_group(
                        ep, self.count, rc.rcvbuf_bytes, v6only(ep, self.endpoints), by_address, self._claims
                    )
                )
        except OSError:
            self._close_sockets()
            raise

    def start(self) -> None:
        """Bind, then start every worker and wait until each listens. ``OSError`` if a port cannot be
        had, :class:`WorkerFailed` if a worker cannot start (the others are stopped then)."""
        self.bind()
        try:
            for w in self.workers:
                self._spawn(w)
            for w in self.workers:
                self._await_ready(w)
        except BaseException:
            self.stop()
            raise

    @property
    def labels(self) -> list[str]:
        """The listening addresses, as the workers report them."""
        return self.workers[0].labels

    def check(self) -> None:
        """Start again any worker that died; :class:`WorkerFailed` on a crash loop or when the
        restarted worker cannot start. Call it periodically from the main thread."""
        for w in self.workers:
            if w.stopping or w.process is None or w.process.is_alive():
                continue
            code = w.process.exitcode
            how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            now = time.monotonic()
            self._deaths.append(now)
            while self._deaths and now - self._deaths[0] > CRASH_WINDOW:
                self._deaths.popleft()
            self._discard(w)
            if len(self._deaths) > MAX_CRASHES:
                raise WorkerFailed(
                    f"worker {w.index} died ({how}); {len(self._deaths)} worker deaths within "
                    f"{CRASH_WINDOW:g} s: stopping the collector"
                )
            log.error("worker %d died (%s); starting it again on the same sockets", w.index, how)
            self.restarts.labels(w.name).inc()
            self._spawn(w)
            self._await_ready(w)

    def stop(self) -> dict[str, int]:
        """Ask every worker to flush and exit, wait, and return their summaries added up."""
        for w in self.workers:
            w.stopping = True
        threads = [threading.Thread(target=self._stop_one, args=(w,)) for w in self.workers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self._close_sockets()
        totals: collections.Counter[str] = collections.Counter()
        for summary in self.summaries.values():
            totals.update(summary)
        return dict(totals)

    def listening(self) -> bool | str:
        """Readiness, from the supervisor's own state: every worker listening."""
        down = [f"worker {w.index} not listening" for w in self.workers if not (w.ready and w.alive)]
        return "; ".join(down) or True

    def health(self) -> bool | str:
        """Readiness, asked of every listening worker: each passing its own checks (sinks reachable).
        Waits on the workers (up to 5 s each): run it in the background (``Health.add(poll_every)``)."""
        problems = []
        for w in self.workers:
            if not (w.ready and w.alive):
                continue  # said by listening()
            try:
                problems += [f"worker {w.index}: {f}" for f in w.request("health", timeout=5)]
            except (TimeoutError, EOFError, OSError) as exc:
                problems.append(f"worker {w.index}: {exc or type(exc).__name__}")
        return "; ".join(problems) or True

    # -- internals ----------------------------------------------------------------------------------
    def _spawn(self, w: WorkerHandle) -> None:
        ours, theirs = self._context.Pipe()
        listeners = [group[w.index] for group in self.groups]
        process = self._context.Process(
            target=worker_main,
            args=(self.build, w.index, listeners, theirs, self.log_level),
            name=f"shoal-collect-worker-{w.index}",
            daemon=False,
        )
        process.start()
        theirs.close()
        w.process, w.conn, w.ready, w.stopping = process, ours, False, False

    def _await_ready(self, w: WorkerHandle) -> None:
        assert w.conn is not None and w.process is not None
        try:
            if not w.conn.poll(START_TIMEOUT):
                raise WorkerFailed(f"worker {w.index} did not start listening within {START_TIMEOUT:g} s")
            kind, detail = w.conn.recv()
        except (EOFError, OSError):
            w.process.join(5)
            raise WorkerFailed(f"worker {w.index} exited at start (exit code {w.process.exitcode})") from None
        if kind != "ready":
            raise WorkerFailed(f"worker {w.index} cannot start: {detail}")
        w.labels, w.ready = list(detail), True
        self.up.labels(w.name).set(1)
        log.info("worker %d (pid %d) listening on %s", w.index, w.process.pid, ", ".join(w.labels))

    def _stop_one(self, w: WorkerHandle) -> None:
        process = w.process
        if process is None:
            return
        if w.ready and process.is_alive():
            try:
                self.summaries[w.index] = w.request("stop", timeout=STOP_TIMEOUT)
            except (TimeoutError, EOFError, OSError) as exc:
                log.error("worker %d did not stop cleanly: %s", w.index, exc or type(exc).__name__)
        elif process.is_alive():
            w.close()  # still starting: a closed pipe makes it stop once it is up
        process.join(STOP_TIMEOUT if process.is_alive() else 5)
        if process.is_alive():
            log.error("worker %d (pid %d) still running: killed", w.index, process.pid)
            process.kill()
            process.join(5)
        self._discard(w)

    def _discard(self, w: WorkerHandle) -> None:
        w.ready = False
        self.up.labels(w.name).set(0)
        w.close()

    def _close_sockets(self) -> None:
        for group in self.groups:
            for sock in group:
                sock.close()
        self.groups = []
        for claim in self._claims.values():
            claim.close()
        self._claims = {}


class WorkerMetrics(_PromCollector):
    """Every listening worker's metric families, each sample labelled with its ``worker``."""

    def __init__(self, workers: Sequence[WorkerHandle], timeout: float = 5.0) -> None:
        self.workers = workers
        self.timeout = timeout

    def describe(self) -> Iterator[Metric]:
        return iter(())  # families are known only from the workers' scrapes

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        for w in self.workers:
            if not w.ready:
                continue
            try:
                families = w.request("metrics", self.timeout)
            except (TimeoutError, EOFError, OSError) as exc:
                log.warning("worker %d metrics left out of this scrape: %s", w.index, exc)
                continue
            if isinstance(families, Exception):
                log.warning("worker %d metrics failed: %s", w.index, families)
                continue
            for fam in families:
                out = merged.get(fam.name)
                if out is None:
                    out = merged[fam.name] = Metric(fam.name, fam.documentation, fam.type, fam.unit)
                out.samples.extend(s._replace(labels={**s.labels, "worker": w.name}) for s in fam.samples)
        yield from merged.values()
