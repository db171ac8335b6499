"""What to send to the indicators topic so that it holds what each feed holds now, and no more.

A feed's current content on the topic (its live chunks, :class:`pipeline.intel.topic.TopicState`)
and its freshly loaded content are compared row by row by fingerprint (every column of a row,
:mod:`pipeline.intel.hashing`). Then, per feed:

- nothing differs: nothing is sent;
- a few rows differ: a *delta* — a chunk of the added rows (and objects), a chunk of withdrawals
  naming the removed rows by (chunk, row), and the manifest naming the old chunks plus these. A
  1,000-indicator change to a 10M-indicator feed is then a few hundred kilobytes, and a worker
  applies it as a delta;
- the withdrawals piled up in a feed would pass ``REWRITE_FRACTION`` of it (or its chunks
  ``max_chunks``): a *rewrite* — the feed in fresh chunks (those equal to chunks already on the topic
  are not sent again), its manifest, and tombstones for its chunks no manifest names any more.

Messages come in that order (chunks, manifest, tombstones), in one partition, so a reader never
meets a manifest before its chunks.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa

from pipeline.intel.chunks import (
    CHUNK_ROWS,
    Manifest,
    chunk_key,
    encode_objects,
    encode_rows,
    encode_withdrawals,
    manifest_key,
    object_text,
)
from pipeline.intel.hashing import hash_strings, multiset_difference, string_hashes
from pipeline.intel.load import IntelLoad
from pipeline.intel.table import IndicatorTable
from pipeline.intel.topic import LiveChunk, TopicState

REWRITE_FRACTION = 0.25
"""Withdrawn rows and withdrawal entries, as a share of a feed's live indicators, past which the
feed is rewritten rather than given one more delta."""

Message = tuple[bytes, bytes | None]


@dataclass
class PublishReport:
    feed: str
    new: int = 0
    changed: int = 0
    withdrawn: int = 0
    unchanged: int = 0
    mode: str = "unchanged"
    """unchanged, new (first publish), delta or rewrite."""
    messages: int = 0
    bytes: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass
class _Current:
    """A feed's live content on the topic, flattened: fingerprints and ids of its live rows and
    objects, each with the (chunk, row) that holds it."""

    chunks: list[LiveChunk]
    fingerprints: np.ndarray
    id_hashes: np.ndarray
    chunk_of: np.ndarray
    row_of: np.ndarray

    @classmethod
    def of(cls, live: list[LiveChunk]) -> _Current:
        fps, ids, chunk_of, row_of = [], [], [], []
        for k, item in enumerate(live):
            chunk, kept = item.chunk, item.kept()
            rows = np.arange(chunk.size) if kept is None else kept
            if chunk.kind == "rows":
                fps.append(chunk.rows.fingerprints()[rows])
                ids.append(chunk.rows.id_hashes()[rows])
            else:
                fps.append(hash_strings(pa.array([chunk.texts[r] for r in rows.tolist()], pa.string())))
                ids.append(string_hashes([chunk.objects[r].id for r in rows.tolist()]))  # type: ignore[union-attr]
            chunk_of.append(np.full(len(rows), k, np.int32))
            row_of.append(rows.astype(np.int32))
        words, small = np.empty(0, np.uint64), np.empty(0, np.int32)
        return cls(live, np.concatenate([*fps, words]), np.concatenate([*ids, words]),
                   np.concatenate([*chunk_of, small]), np.concatenate([*row_of, small]))  # fmt: skip


def plan(
    state: TopicState, loads: Iterable[IntelLoad], max_chunks: int | None = None
) -> tuple[list[Message], list[PublishReport]]:
    """The messages (key, value; None = tombstone) that bring each load's feed on the topic to what
    the load holds, in sending order, and a report per feed. Revoked objects are not published."""
    messages: list[Message] = []
    reports = []
    for load in loads:
        feed_messages, report = _plan_feed(state, load, max_chunks)
        messages += feed_messages
        reports.append(report)
    return messages, reports


def _plan_feed(
    state: TopicState, load: IntelLoad, max_chunks: int | None
) -> tuple[list[Message], PublishReport]:
    feed = load.source
    report = PublishReport(feed)
    fit, objects = IndicatorTable.from_indicators([i for i in load.objects if not i.revoked])
    table = IndicatorTable.concat([load.table, fit])
    texts = [object_text(o, feed) for o in objects]
    new_fps = np.concatenate([table.fingerprints(), hash_strings(pa.array(texts, pa.string()))])
    manifest = state.manifests.get(feed)
    current = _Current.of(state.live([feed]) if manifest else [])
    gone, added = multiset_difference(current.fingerprints, new_fps)
    n_rows = len(table)
    added_rows, added_objects = added[added < n_rows], added[added >= n_rows] - n_rows
    if manifest is not None and not len(gone) and not len(added):
        report.unchanged = len(current.fingerprints)
        return [], report
    # Counted by id: an id both withdrawn and added is a changed indicator.
    added_ids = np.concatenate([table.take(added_rows).id_hashes() if len(added_rows) < n_rows else table.id_hashes(),
                                string_hashes([objects[k].id for k in added_objects.tolist()])])  # fmt: skip
    changed = len(np.intersect1d(added_ids, current.id_hashes[gone])) if len(gone) and len(added_ids) else 0
    report.new, report.changed = len(added) - changed, changed
    report.withdrawn, report.unchanged = len(gone) - changed, len(current.fingerprints) - len(gone)
    live_after = len(new_fps)
    waste_now = sum(c.chunk.size - c.alive for c in current.chunks) + sum(
        state.chunks[d].size for d in (manifest.chunks if manifest else ()) if d in state.chunks
        and state.chunks[d].kind == "withdrawals")  # fmt: skip
    limit = max_chunks if max_chunks is not None else 2 * (live_after // CHUNK_ROWS + 1) + 64
    delta = (
        manifest is not None
        and waste_now + 2 * len(gone) <= REWRITE_FRACTION * live_after
        and len(manifest.chunks) + 3 <= limit
    )
    if delta:
        assert manifest is not None
        report.mode = "delta"
        salt = f"{datetime.now(UTC).isoformat()} {secrets.token_hex(4)}"
        targets: dict[str, list[int]] = {}
        for k, row in zip(current.chunk_of[gone].tolist(), current.row_of[gone].tolist(), strict=True):
            targets.setdefault(current.chunks[k].chunk.digest, []).append(row)
        content = encode_rows(feed, table.take(added_rows), salt) + encode_objects(
            feed, [texts[k] for k in added_objects.tolist()], salt
        )
        sent = sum(n for _, _, n in content)
        if sent != len(added):
            report.errors.append(f"{feed}: {len(added) - sent} indicators too large for a message, left out")
        chunks = content + encode_withdrawals(
            feed, {d: np.array(r, np.int32) for d, r in targets.items()}, salt
        )
        names = list(manifest.chunks) + [d for d, _, _ in chunks]
        out: list[Message] = [(chunk_key(d), v) for d, v, _ in chunks]
        keep = set(names)
    else:
        report.mode = "new" if manifest is None else "rewrite"
        chunks = encode_rows(feed, table) + encode_objects(feed, texts)
        sent = sum(n for _, _, n in chunks)
        if sent != live_after:
            report.errors.append(f"{feed}: {live_after - sent} indicators too large for a message, left out")
        names = [d for d, _, _ in chunks]
        on_topic = {d for d, f in state.chunk_feeds.items() if f == feed}
        out = [(chunk_key(d), v) for d, v, _ in chunks if d not in on_topic]
        keep = set(names)
    alive = (len(current.fingerprints) - len(gone) if delta else 0) + sent
    out.append((manifest_key(feed), Manifest(feed, tuple(names), alive).encode()))
    out += [(chunk_key(d), None) for d, f in sorted(state.chunk_feeds.items()) if f == feed and d not in keep]
    report.messages = len(out)
    report.bytes = sum(len(v) for _, v in out if v is not None)
    return out, report
