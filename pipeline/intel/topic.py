"""The indicators topic as applied message by message (layout ``indicators/2``, see
:mod:`pipeline.intel.chunks`): every feed's manifest, the chunks (decoded for the feeds wanted),
what could not be read; and the *live* view, the chunks every manifest names with the rows its
withdrawals take away, that a worker builds its index from and a publisher compares a feed with.

Unreadable messages never stop a reader: each is logged and counted by reason, and the rest loads.
Messages of the old layout (``indicator/1``, one JSON indicator each) are set apart by key: a
reader refuses a topic that still holds some (see docs/kafka.md, "Migrating").
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Collection, Iterable
from dataclasses import dataclass

import numpy as np

from pipeline.intel.chunks import (
    CHUNK_PREFIX,
    MANIFEST_PREFIX,
    OLD_SCHEMA_VALUE,
    SCHEMA_HEADER,
    SCHEMA_VALUE,
    Chunk,
    ChunkError,
    Manifest,
    decode_chunk,
    peek,
)
from pipeline.intel.model import Indicator

log = logging.getLogger(__name__)
REASONS = (
    "unreadable",
    "no_key",
    "old_layout",
    "missing_chunk",
    "bad_withdrawal",
    "bad_object",
    "count_mismatch",
)
"""Why a message (or part of one) was not used: the label values of the bad-message counter."""


@dataclass(frozen=True)
class LiveChunk:
    """A chunk a manifest names, with its withdrawn rows (``dead``, one flag per row; None: none)."""

    chunk: Chunk
    dead: np.ndarray | None = None

    @property
    def alive(self) -> int:
        return self.chunk.size - (int(self.dead.sum()) if self.dead is not None else 0)

    def kept(self) -> np.ndarray | None:
        """Row numbers still live, or None when all are."""
        return None if self.dead is None else np.flatnonzero(~self.dead)


def schema_of(headers: Iterable[tuple[str, bytes | None]] | None) -> bytes | None:
    for name, value in headers or ():
        if name == SCHEMA_HEADER:
            return value
    return None


class TopicState:
    """``feeds``: decode only these feeds' chunks (a publisher); None: every feed (a worker)."""

    def __init__(self, feeds: Collection[str] | None = None) -> None:
        self.feeds = set(feeds) if feeds is not None else None
        self.manifests: dict[str, Manifest] = {}
        self.chunks: dict[str, Chunk] = {}
        self.chunk_feeds: dict[str, str] = {}
        """Digest -> feed of every chunk on the topic, decoded or not (a publisher deletes its feed's
        chunks that no manifest names, left by a publish that stopped half-way)."""
        self.old_layout: set[str] = set()
        """Keys of indicator/1 messages not withdrawn since."""
        self.errors: Counter[str] = Counter()

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def _bad(self, reason: str, what: str, n: int = 1) -> None:
        self.errors[reason] += n
        log.warning("indicators topic: %s", what)

    def apply(self, key: bytes | None, value: bytes | None, headers: Iterable | None = None) -> bool:
        """Apply one message; returns whether the live view may have changed (a manifest came or went,
        or a chunk a manifest names did)."""
        if key is None:
            self._bad("no_key", "message without a key skipped")
            return False
        name = key.decode(errors="replace")
        if value is None:
            self.old_layout.discard(name)
            if name.startswith(MANIFEST_PREFIX):
                return self.manifests.pop(name[len(MANIFEST_PREFIX) :], None) is not None
            if name.startswith(CHUNK_PREFIX):
                digest = name[len(CHUNK_PREFIX) :]
                self.chunk_feeds.pop(digest, None)
                return self.chunks.pop(digest, None) is not None and self._named(digest)
            return False
        schema = schema_of(headers)
        if schema == OLD_SCHEMA_VALUE:
            self.old_layout.add(name)
            return False
        if schema != SCHEMA_VALUE:
            self._bad("unreadable", f"{name}: schema {schema!r}, not {SCHEMA_VALUE.decode()}; skipped")
            return False
        try:
            if name.startswith(MANIFEST_PREFIX):
                self._manifest(Manifest.decode(name, value))
                return True
            if name.startswith(CHUNK_PREFIX):
                return self._chunk(name[len(CHUNK_PREFIX) :], value)
        except ChunkError as exc:
            self._bad("unreadable", f"{exc}; skipped")
            return False
        self._bad("unreadable", f"{name}: neither feed: nor chunk: key; skipped")
        return False

    def _named(self, digest: str) -> bool:
        return any(digest in m.chunks for m in self.manifests.values())

    def _chunk(self, digest: str, value: bytes) -> bool:
        if self.feeds is not None:
            feed, _ = peek(value)
            self.chunk_feeds[digest] = feed
            if feed not in self.feeds:
                return False
        chunk = decode_chunk(digest, value)
        self.chunks[digest] = chunk
        self.chunk_feeds[digest] = chunk.feed
        if chunk.kind == "objects" and (bad := sum(o is None for o in chunk.objects)):
            self._bad(
                "bad_object", f"chunk {digest} of {chunk.feed}: {bad} unreadable indicators left out", bad
            )
        return self._named(digest)

    def _manifest(self, manifest: Manifest) -> None:
        """Take the manifest, checking it against the chunks at hand (they come before it)."""
        self.manifests[manifest.feed] = manifest
        if self.feeds is not None and manifest.feed not in self.feeds:
            return
        missing = [d for d in manifest.chunks if d not in self.chunks]
        if missing:
            self._bad("missing_chunk", f"feed {manifest.feed}: {len(missing)} chunks named but not on the topic "
                      f"(e.g. {missing[0]}); the feed loads without them", len(missing))  # fmt: skip
        content = {d: self.chunks[d].size for d in manifest.chunks if d in self.chunks
                   and self.chunks[d].kind != "withdrawals"}  # fmt: skip
        for digest in manifest.chunks:
            chunk = self.chunks.get(digest)
            if chunk is None or chunk.kind != "withdrawals":
                continue
            for target, rows in chunk.targets.items():
                if target not in content or (len(rows) and (rows.min() < 0 or rows.max() >= content[target])):
                    self._bad("bad_withdrawal", f"feed {manifest.feed}: chunk {digest} withdraws rows of {target}, "
                              "which the manifest does not hold; ignored", len(rows))  # fmt: skip
        alive = sum(c.alive for c in self.live([manifest.feed]))
        if not missing and alive != manifest.indicators:
            self._bad("count_mismatch", f"feed {manifest.feed}: {alive} indicators live, the manifest says "
                      f"{manifest.indicators}")  # fmt: skip

    def live(self, feeds: Iterable[str] | None = None) -> list[LiveChunk]:
        """The chunks of rows and objects the manifests name (feeds in name order, chunks in manifest
        order), each with its withdrawn rows."""
        out = []
        for feed in sorted(self.manifests if feeds is None else set(feeds) & set(self.manifests)):
            names = dict.fromkeys(self.manifests[feed].chunks)  # a chunk named twice counts once
            chunks = [self.chunks[d] for d in names if d in self.chunks]
            content = {c.digest: c for c in chunks if c.kind != "withdrawals" and c.feed == feed}
            withdrawn: dict[str, list[np.ndarray]] = {}
            for chunk in chunks:
                if chunk.kind == "withdrawals" and chunk.feed == feed:
                    for target, rows in chunk.targets.items():
                        if target in content:
                            withdrawn.setdefault(target, []).append(rows)
            for digest, chunk in content.items():
                dead = None
                unusable = chunk.kind == "objects" and any(o is None or o.revoked for o in chunk.objects)
                if digest in withdrawn or unusable:
                    dead = np.zeros(chunk.size, bool)
                    for rows in withdrawn.get(digest, ()):
                        dead[rows[(rows >= 0) & (rows < chunk.size)]] = True
                    if unusable:  # unreadable (counted when read) or revoked: never indexed
                        dead |= np.array([o is None or o.revoked for o in chunk.objects], bool)
                out.append(LiveChunk(chunk, dead))
        return out

    @property
    def indicators(self) -> dict[str, Indicator]:
        """Every live indicator by id, as objects (small topics: tests, inspection)."""
        out: dict[str, Indicator] = {}
        for live in self.live():
            kept = live.kept()
            if live.chunk.kind == "rows":
                rows = live.chunk.rows if kept is None else live.chunk.rows.take(kept)
                out.update((i.id, i) for i in rows.to_indicators())
            else:
                alive = [o for k, o in enumerate(live.chunk.objects) if kept is None or not live.dead[k]]  # type: ignore[index]
                out.update((o.id, o) for o in alive if o is not None)
        return out
