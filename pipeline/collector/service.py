"""The collector service: sockets -> decoder -> batcher -> sinks, with a clean stop.

Two threads: the *receive* thread reads every listener with ``recvmmsg``, filters exporters, decodes
whole datagram batches and cuts row/time-bounded batches; the *writer* thread hands those to the sinks
(Parquet compression and Kafka production release the GIL, so the two overlap). A bounded queue sits
between them: a slow sink turns into socket back-pressure, which shows up as kernel drops.

With a decoder that has ``decode_block`` (the default ``FlowDecoder``), datagrams never become Python
objects: a receive block (the buffer rows plus length and sender arrays) goes to the decoder as is,
the decoder writes the flows straight into the batcher's preallocated columns, and only whole flow
batches cross between threads. Whenever a read empties the sockets the receive thread pauses
briefly so that the next block is large: a decode call costs ~0.5 ms whatever its size (numpy calls
per template), so blocks of a few hundred datagrams cost 2-5x more per flow than blocks of 2,000.

``stop()``: stop receiving (after draining what the kernel already queued), decode and flush every
pending batch, close the sinks, persist templates. Nothing decoded is lost on a clean stop.

With several workers (:mod:`pipeline.collector.workers`) each worker process runs one ``Collector``
on its own share of the listening ports' SO_REUSEPORT groups (``listeners``), with its own decoder
state file.
"""

from __future__ import annotations

import ipaddress
import logging
import queue
import selectors
import socket
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from pipeline.collector.batcher import Batcher, Ready
from pipeline.collector.config import CollectorConfig, Endpoint
from pipeline.collector.metrics import CollectorMetrics
from pipeline.collector.receiver import BatchSocket, Block
from pipeline.metrics import new_registry
from pipeline.schemas import FLOW_SCHEMA
from pipeline.sinks.base import Sink, SinkError
from pipeline.sinks.buffered import BufferedSink

log = logging.getLogger(__name__)

_STOP = object()
_BLOCK_CALLS = 8
"""``recvmmsg`` calls chained into one block when the socket has a backlog."""
_COALESCE_SECONDS = 0.04
"""After a read that emptied the sockets, wait up to this long before the next one (see
``Collector._pause``): the kernel queues meanwhile, and fewer, larger blocks cost less CPU per flow
in every later step. Batches wait for ``batch.max_seconds`` (a second by default) anyway."""
_SKB_OVERHEAD = 1024
"""Receive-buffer bytes a queued datagram costs beyond its payload (socket buffer accounting counts
the kernel's whole buffer, ~0.7-1 KiB more than the payload on Linux), for the pause bound."""


class Allowlist:
    """Exporter CIDR filter with a bounded per-address verdict cache (the hot path sees few exporters)."""

    def __init__(self, cidrs: Sequence[str]) -> None:
        self.networks = [ipaddress.ip_network(c, strict=False) for c in cidrs]
        self._cache: dict[str, bool] = {}

    def __bool__(self) -> bool:
        return bool(self.networks)

    def allows(self, exporter: str) -> bool:
        verdict = self._cache.get(exporter)
        if verdict is None:
            ip = ipaddress.ip_address(exporter)
            verdict = any(ip in net for net in self.networks if net.version == ip.version)
            if len(self._cache) > 65536:
                self._cache.clear()
            self._cache[exporter] = verdict
        return verdict


def v6only(endpoint: Endpoint, endpoints: Sequence[Endpoint]) -> bool:
    """``[::]:PORT`` alone takes IPv4 exporters too (dual-stack); next to an IPv4 listener on the same
    port (or bound to one address) an IPv6 listener is IPv6 only."""
    v4_ports = {ep.port for ep in endpoints if not ep.family_v6}
    return endpoint.host != "::" or endpoint.port in v4_ports


class Collector:
    """Build without I/O; :meth:`start` binds and runs; :meth:`stop` drains and persists."""

    def __init__(
        self,
        config: CollectorConfig,
        sinks: Sequence[Sink],
        registry: CollectorRegistry | None = None,
        decoder: Any = None,
        datagram_type: Any = None,
        worker: int | None = None,
        listeners: Sequence[socket.socket] | None = None,
    ) -> None:
        """``decoder`` defaults to ``pipeline.decode.FlowDecoder`` built from ``config.decoder``; anything
        with the same ``decode``/``expire``/``stats``/``save_state``/``load_state`` surface will do.
        ``worker``: this collector's index among several worker processes (None: the only one);
        ``listeners``: sockets already bound for ``config.receive.listen``, one per address in that
        order (a worker's share of the port groups), instead of binding them at :meth:`start`."""
        self.config = config
        self.worker = worker
        self._listeners = list(listeners) if listeners is not None else None
        self.registry = registry if registry is not None else new_registry()
        buf = config.buffer
        self.sinks = [
            s
            if isinstance(s, BufferedSink)
            else BufferedSink(
                s,
                self.registry,
                max_rows=buf.max_rows,
                max_bytes=buf.max_bytes,
                retry_seconds=buf.retry_seconds,
            )
            for s in sinks
        ]
        if decoder is None:
            from pipeline.decode import FlowDecoder

            decoder = FlowDecoder(config.decoder)
        self.decoder = decoder
        if datagram_type is None:
            from pipeline.decode import Datagram

            datagram_type = Datagram
        self._datagram = datagram_type
        self._block_decoder = callable(getattr(decoder, "decode_block", None))
        """Decoders with ``decode_block`` get whole receive batches as arrays (no per-datagram objects)
        and write the flows straight into the batcher's columns (its ``into`` argument)."""
        self.endpoints = [Endpoint.parse(t) for t in config.receive.listen]
        self.allowlist = Allowlist(config.receive.allow_exporters)
        self.batcher = Batcher(FLOW_SCHEMA, config.batch.max_rows, config.batch.max_seconds)
        self.sockets: list[BatchSocket] = []
        self.metrics = CollectorMetrics(
            self.registry, config.metrics.max_exporters, config.metrics.max_label_values
        )
        self._queue: queue.Queue = queue.Queue(maxsize=8)
        self._stopping = threading.Event()
        self._receiver: threading.Thread | None = None
        self._writer: threading.Thread | None = None
        self.flows_out = 0
        """Rows handed to the sinks (for tests and the benchmark)."""

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        """Check every sink (:class:`SinkError` if one cannot work: nothing is accepted only to be
        lost), restore the decoder's state, bind (``OSError``) and start the threads."""
        for sink in self.sinks:
            sink.check()
        for state in self.state_files():
            try:
                self.decoder.load_state(state)
                log.info("templates restored from %s", state)
            except Exception as exc:  # a corrupt state file must not prevent collecting
                log.error("cannot restore decoder state from %s: %s", state, exc)
        rc = self.config.receive
        given = self._listeners or [None] * len(self.endpoints)
        if len(given) != len(self.endpoints):
            raise ValueError(f"{len(given)} listeners given for {len(self.endpoints)} listen addresses")
        try:
            for ep, sock in zip(self.endpoints, given, strict=True):
                self.sockets.append(
                    BatchSocket(
                        ep,
                        rc.rcvbuf_bytes,
                        rc.recv_batch,
                        rc.max_datagram,
                        self.config.metrics.max_exporters,
                        _BLOCK_CALLS,
                        v6only=v6only(ep, self.endpoints),
                        sock=sock,
                    )
                )
        except OSError:
            for s in self.sockets:
                s.close()
            raise
        for s in self.sockets:
            if s.rcvbuf < rc.rcvbuf_bytes:
                log.warning("%s: SO_RCVBUF is %d, asked for %d", s.endpoint, s.rcvbuf, rc.rcvbuf_bytes)
            log.info("listening on %s (SO_RCVBUF %d)", s.label, s.rcvbuf)
        self.metrics.attach(self.sockets, self.sinks, self.decoder, self.batcher)
        self._writer = threading.Thread(target=self._write_loop, name="shoal-writer", daemon=True)
        self._receiver = threading.Thread(target=self._receive_loop, name="shoal-receiver", daemon=True)
        self._writer.start()
        self._receiver.start()

    def stop(self, timeout: float = 60.0) -> None:
        self._stopping.set()
        if self._receiver is not None:
            self._receiver.join(timeout)
        if self._writer is not None:
            self._writer.join(timeout)
        for sink in self.sinks:
            sink.close()
        state = self.config.state_path(self.worker)
        if state is not None:
            try:
                state.parent.mkdir(parents=True, exist_ok=True)
                self.decoder.save_state(state)
            except Exception as exc:
                log.error("cannot persist decoder state to %s: %s", state, exc)
        self.metrics.refresh()
        for s in self.sockets:
            s.close()

    def state_files(self) -> list[Path]:
        """Decoder state files to restore, every worker's: the kernel may hash an exporter to another
        worker than before (after a reboot, or with another number of workers), and templates no
        data uses here cost little (saved only up to a bound, and expired by their TTL). This
        worker's own file comes last, so its templates win where two files disagree."""
        own = self.config.state_path(self.worker)
        if own is None:
            return []
        base = self.config.state_path()
        assert base is not None
        siblings = sorted(base.parent.glob(f"{base.name}.w[0-9]*"))
        files = [f for f in [base, *siblings] if not f.name.endswith(".tmp") and f != own]
        return [f for f in [*files, own] if f.is_file()]

    def summary(self) -> dict[str, int]:
        """Totals since start: what came in, what was decoded, what each sink took or dropped."""
        out = {
            "datagrams": sum(s.stats.datagrams for s in self.sockets),
            "truncated": sum(s.stats.truncated for s in self.sockets),
            "rejected": self.metrics.total_rejected(),
            "flows_decoded": self.metrics.total_flows(),
            "flows_batched": self.flows_out,
        }
        for sink in self.sinks:
            out[f"{sink.name}_written"] = sink.written_rows
            out[f"{sink.name}_dropped"] = sink.dropped_rows
        return out

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [s.address for s in self.sockets]

    # -- receive side -----------------------------------------------------------------------------
    def _receive_loop(self) -> None:
        sel = selectors.DefaultSelector()
        for s in self.sockets:
            sel.register(s.sock, selectors.EVENT_READ, s)
        next_tick = time.monotonic() + 1.0
        last_drain, bytes_seen = time.monotonic(), 0
        try:
            while not self._stopping.is_set():
                got, backlog = 0, False
                for key, _ in sel.select(timeout=0.05):
                    n, drained = self._read(key.data, rounds=8)
                    got += n
                    backlog = backlog or not drained
                if got and not backlog:  # every socket emptied: let the next block build up
                    now, total = time.monotonic(), sum(s.stats.bytes for s in self.sockets)
                    # what was read queued up since the last drain (capped: traffic after a quiet
                    # spell counts as a burst, so the pause stays short)
                    window = min(now - last_drain, 2 * _COALESCE_SECONDS)
                    pause = self._pause(got, total - bytes_seen, window)
                    last_drain, bytes_seen = now, total
                    time.sleep(pause)
                now = time.monotonic()
                self._emit(self.batcher.collect(now))
                if now >= next_tick:
                    next_tick = now + 1.0
                    self._tick()
            # Stop receiving, but first take what the kernel has already queued for us.
            for s in self.sockets:
                self._read(s, rounds=1_000_000)
            self._emit(self.batcher.drain())
        except Exception:
            log.exception("receive loop failed")
            self._emit(self.batcher.drain())
        finally:
            sel.close()
            self._queue.put(_STOP)

    def _pause(self, datagrams: int, payload: int, window: float) -> float:
        """How long to let the next block build up: ``_COALESCE_SECONDS``, but short enough that the
        smallest socket buffer fills to at most a quarter at the rate just seen (``datagrams`` and
        ``payload`` bytes read over ``window`` seconds). Without root the kernel grants at most
        net.core.rmem_max, 208 KiB by default: a few milliseconds of a busy router's export."""
        if window <= 0:
            return 0.0
        queued_per_second = (payload + datagrams * _SKB_OVERHEAD) / window
        room = min(s.rcvbuf for s in self.sockets) / 4
        return max(0.0, min(_COALESCE_SECONDS, room / queued_per_second))

    def _read(self, sock: BatchSocket, rounds: int) -> tuple[int, bool]:
        """Receive and decode what ``sock`` has queued (at most ``rounds`` batches); returns the
        number of datagrams and whether the socket was emptied."""
        got = 0
        if self._block_decoder:
            budget = rounds * sock.batch  # as many datagrams between ticks as batch by batch
            while got < budget:
                block = sock.receive_block(time.time())
                if block is None:
                    return got, True
                got += len(block)
                self._decode_block(sock, block)
                if len(block) < sock.batch * sock.block_calls:
                    return got, True
            return got, False
        for _ in range(rounds):
            datagrams = sock.receive(self._datagram, time.time())
            if not datagrams:
                return got, True
            got += len(datagrams)
            self._decode(sock, datagrams)
            if len(datagrams) < sock.batch:
                return got, True
        return got, False

    def _decode_block(self, sock: BatchSocket, block: Block) -> None:
        """The block path: the whole ``recvmmsg`` batch goes to the decoder as arrays."""
        m = self.metrics
        if self.allowlist:
            allows = self.allowlist.allows
            verdicts = np.array([allows(ip) for ip, _ in block.sources], dtype=bool)
            keep = verdicts[block.source]
            kept = int(keep.sum())
            if kept != len(block):
                m.rejected(sock, len(block) - kept)
                if not kept:
                    return
                block = block.select(keep)
        start = time.perf_counter()
        rows_before = self.batcher.rows_in
        try:
            self.decoder.decode_block(
                block.data, block.lengths, block.source, block.sources, block.received, into=self.batcher
            )
        except Exception:
            log.exception("decoder raised on %d datagrams from %s", len(block), sock.label)
            m.decoder_crash(sock, len(block))
        else:
            m.decoded(sock, self.batcher.rows_in - rows_before, time.perf_counter() - start)
        self._emit(self.batcher.collect())

    def _decode(self, sock: BatchSocket, datagrams: list) -> None:
        m = self.metrics
        if self.allowlist:
            allows = self.allowlist.allows
            kept = [d for d in datagrams if allows(d[1])]
            if len(kept) != len(datagrams):
                m.rejected(sock, len(datagrams) - len(kept))
            datagrams = kept
            if not datagrams:
                return
        start = time.perf_counter()
        try:
            batch = self.decoder.decode(datagrams)
        except Exception:
            # The decoder promises not to raise; if it ever does, count it and keep the service up.
            log.exception("decoder raised on %d datagrams from %s", len(datagrams), sock.label)
            m.decoder_crash(sock, len(datagrams))
            return
        m.decoded(sock, batch.num_rows, time.perf_counter() - start)
        self._emit(self.batcher.add(batch))

    def _emit(self, ready: list[Ready]) -> None:
        for item in ready:
            self._queue.put(item)

    def _tick(self) -> None:
        try:
            self.decoder.expire(time.time())
        except Exception:
            log.exception("decoder expire failed")
        self.metrics.refresh()

    # -- writer side ------------------------------------------------------------------------------
    def _write_loop(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=0.5)
            except queue.Empty:
                for sink in self.sinks:
                    sink.retry()
                continue
            if item is _STOP:
                return
            batch, first = item
            for sink in self.sinks:
                try:
                    sink.write(batch)
                except SinkError:  # BufferedSink does not raise; a bare custom sink might
                    log.exception("sink %s failed", sink.name)
            self.flows_out += batch.num_rows
            self.metrics.batch_written(batch, time.monotonic() - first)
