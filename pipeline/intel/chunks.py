"""The indicators topic's messages, schema ``indicators/2``: a feed's indicators as Arrow IPC chunks
and one manifest per feed naming them (``schemas/indicator/v2.json``).

- ``feed:<feed>`` -> the feed's *manifest* (JSON): the chunks that make up the feed now, in order,
  and how many indicators they hold. A reader switches a feed to a new manifest at once, so a worker
  never sees half of a publish.
- ``chunk:<digest>`` -> a *chunk*: one Arrow IPC stream (one record batch, zstd buffers) of up to
  ``CHUNK_ROWS`` indicators, keyed by a digest of its bytes. Kinds: ``rows`` (table rows,
  :mod:`pipeline.intel.table`, constants in the schema metadata), ``objects`` (indicators that fit
  no row, as indicator/1 JSON), ``withdrawals`` (rows of the feed's other chunks that no longer
  hold: a small change to a large feed is a delta, not a copy of the feed).
- a null value (tombstone) deletes a manifest (the feed) or a chunk no manifest names any more.

Compaction keeps the latest value of each key, so the topic holds each feed's current manifest and
the chunks it names; chunks are content-addressed, so an unchanged chunk is never sent twice.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa

from pipeline.intel.model import Indicator
from pipeline.intel.table import CONSTANTS, REQUIRED, SCHEMA, IndicatorTable, part_constants

SCHEMA_HEADER = "shoal-schema"
SCHEMA_VALUE = b"indicators/2"
OLD_SCHEMA_VALUE = b"indicator/1"
"""One JSON indicator per message, key = indicator id: the layout before this one (refused, see
docs/kafka.md)."""
MANIFEST_PREFIX, CHUNK_PREFIX = "feed:", "chunk:"
CHUNK_ROWS = 32_768
"""Indicators per chunk (~0.5-0.7 MB compressed for list rows); a chunk over the message limit is split."""
MAX_MESSAGE_BYTES = 900_000
"""Under the broker's and librdkafka's default 1 MB message limit."""
KINDS = ("rows", "objects", "withdrawals")
_FEED, _KIND, _SALT = b"shoal.feed", b"shoal.kind", b"shoal.salt"
_WRITE = pa.ipc.IpcWriteOptions(compression="zstd")
_OBJECT_SCHEMA = pa.schema([pa.field("indicator", pa.string(), nullable=False)])
_WITHDRAWAL_SCHEMA = pa.schema([pa.field("chunk", pa.string(), nullable=False),
                                pa.field("row", pa.int32(), nullable=False)])  # fmt: skip


class ChunkError(ValueError):
    """A message of the indicators topic that cannot be read; the message names it."""


def manifest_key(feed: str) -> bytes:
    return (MANIFEST_PREFIX + feed).encode()


def chunk_key(digest: str) -> bytes:
    return (CHUNK_PREFIX + digest).encode()


@dataclass(frozen=True)
class Manifest:
    feed: str
    chunks: tuple[str, ...]
    """Digests of the feed's chunks, in order (rows and objects, then withdrawals applying to them)."""
    indicators: int
    """Indicators the feed holds (rows and objects, less the withdrawn ones): readers check it."""
    published: str = ""

    def encode(self) -> bytes:
        return json.dumps({"feed": self.feed, "chunks": list(self.chunks), "indicators": self.indicators,
                           "published": self.published or datetime.now(UTC).isoformat().replace("+00:00", "Z")},
                          separators=(",", ":")).encode()  # fmt: skip

    @classmethod
    def decode(cls, key: str, value: bytes) -> Manifest:
        try:
            data = json.loads(value)
            manifest = cls(str(data["feed"]), tuple(str(c) for c in data["chunks"]), int(data["indicators"]),
                           str(data.get("published", "")))  # fmt: skip
        except (ValueError, KeyError, TypeError) as exc:
            raise ChunkError(f"{key}: not a manifest ({type(exc).__name__}: {exc})") from None
        if key != MANIFEST_PREFIX + manifest.feed:
            raise ChunkError(f"{key}: the manifest names feed {manifest.feed!r}")
        return manifest


@dataclass
class Chunk:
    """One decoded chunk. ``rows`` for kind rows; ``objects`` for kind objects (None where one could
    not be read); ``targets`` for kind withdrawals (chunk digest -> withdrawn row numbers)."""

    digest: str
    feed: str
    kind: str
    rows: IndicatorTable = field(default_factory=IndicatorTable.empty)
    objects: list[Indicator | None] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    """The objects as published (indicator/1 JSON), for comparisons with a feed's current content."""
    targets: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def size(self) -> int:
        """Indicators (rows kind, objects kind) or withdrawn rows (withdrawals kind)."""
        if self.kind == "rows":
            return len(self.rows)
        if self.kind == "objects":
            return len(self.objects)
        return sum(len(r) for r in self.targets.values())


def _ipc(batch: pa.RecordBatch) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema, options=_WRITE) as writer:
        writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


def _digest(value: bytes) -> str:
    return hashlib.blake2b(value, digest_size=16).hexdigest()


def _metadata(
    feed: str, kind: str, extra: dict[bytes, bytes] | None = None, salt: str = ""
) -> dict[bytes, bytes]:
    """A chunk's schema metadata; ``salt`` (a delta's publish time) makes a delta's digest its own
    even when its content equals an earlier chunk's (whose rows may be withdrawn)."""
    out = {**(extra or {}), _FEED: feed.encode(), _KIND: kind.encode()}
    if salt:
        out[_SALT] = salt.encode()
    return out


def _fitted(batch: pa.RecordBatch) -> list[tuple[str, bytes, int]]:
    """(digest, value, rows): ``batch`` as one message, or halves of it until each fits; a single row
    that cannot fit is left out (the caller counts what was not sent)."""
    value = _ipc(batch)
    if len(value) <= MAX_MESSAGE_BYTES:
        return [(_digest(value), value, batch.num_rows)]
    if batch.num_rows == 1:
        return []
    half = batch.num_rows // 2
    return _fitted(batch.slice(0, half)) + _fitted(batch.slice(half))


def encode_rows(feed: str, table: IndicatorTable, salt: str = "") -> list[tuple[str, bytes, int]]:
    """(digest, value, rows) of the chunks holding ``table``'s rows, in order, ``CHUNK_ROWS`` at most each."""
    out = []
    for part in table.parts:
        constants = {k: v for k, v in (part.schema.metadata or {}).items() if k == CONSTANTS}
        tagged = part.replace_schema_metadata(_metadata(feed, "rows", constants, salt))
        for batch in tagged.to_batches(max_chunksize=CHUNK_ROWS):
            out += _fitted(batch)
    return out


def object_text(indicator: Indicator, feed: str) -> str:
    """An object as a chunk holds it: canonical indicator/1 JSON (sorted keys) with its feed."""
    return json.dumps({**indicator.to_dict(), "feed": feed}, sort_keys=True, separators=(",", ":"))


def encode_objects(feed: str, texts: list[str], salt: str = "") -> list[tuple[str, bytes, int]]:
    """(digest, value, objects) of the chunks holding objects (:func:`object_text`), in order."""
    schema = _OBJECT_SCHEMA.with_metadata(_metadata(feed, "objects", salt=salt))
    out = []
    for start in range(0, len(texts), CHUNK_ROWS):
        batch = pa.record_batch([pa.array(texts[start : start + CHUNK_ROWS], pa.string())], schema=schema)
        out += _fitted(batch)
    return out


def encode_withdrawals(
    feed: str, targets: dict[str, np.ndarray], salt: str = ""
) -> list[tuple[str, bytes, int]]:
    """(digest, value, entries) of the chunks withdrawing ``targets`` (chunk digest -> row numbers)."""
    if not targets:
        return []
    chunks = np.concatenate([np.full(len(rows), k, np.int32) for k, rows in enumerate(targets.values())])
    names = pa.DictionaryArray.from_arrays(pa.array(chunks), pa.array(list(targets), pa.string()))
    rows = np.concatenate([np.asarray(r, np.int32) for r in targets.values()])
    schema = _WITHDRAWAL_SCHEMA.with_metadata(_metadata(feed, "withdrawals", salt=salt))
    table = pa.table([names.cast(pa.string()), pa.array(rows, pa.int32())], schema=schema)
    out = []
    for batch in table.to_batches(8 * CHUNK_ROWS):
        out += _fitted(batch)
    return out


def peek(value: bytes) -> tuple[str, str]:
    """(feed, kind) of a chunk, from its schema alone (the batch is not decoded)."""
    try:
        metadata = pa.ipc.open_stream(value).schema.metadata or {}
        return metadata[_FEED].decode(), metadata[_KIND].decode()
    except (pa.ArrowException, KeyError, UnicodeDecodeError, OSError) as exc:
        raise ChunkError(
            f"not an Arrow IPC chunk with a feed and a kind ({type(exc).__name__}: {exc})"
        ) from None


def decode_chunk(digest: str, value: bytes) -> Chunk:
    """A chunk, checked column by column (types, ranges, ids) so that a bad one never reaches an index."""
    try:
        table = pa.ipc.open_stream(value).read_all()
    except (pa.ArrowException, OSError) as exc:
        raise ChunkError(f"chunk {digest}: not Arrow IPC ({type(exc).__name__}: {exc})") from None
    metadata = table.schema.metadata or {}
    try:
        feed, kind = metadata[_FEED].decode(), metadata[_KIND].decode()
    except (KeyError, UnicodeDecodeError):
        raise ChunkError(f"chunk {digest}: no feed or kind in its schema") from None
    if kind == "rows":
        return Chunk(digest, feed, kind, rows=IndicatorTable([_checked_rows(digest, table)]))
    if kind == "objects":
        if table.schema.remove_metadata() != _OBJECT_SCHEMA:
            raise ChunkError(f"chunk {digest}: objects of schema {table.schema.remove_metadata()}")
        objects: list[Indicator | None] = []
        texts = table.column("indicator").to_pylist()
        for text in texts:
            try:
                objects.append(Indicator.from_dict(json.loads(text)))
            except (ValueError, KeyError, TypeError, AttributeError):
                objects.append(None)
        return Chunk(digest, feed, kind, objects=objects, texts=texts)
    if kind == "withdrawals":
        if table.schema.remove_metadata() != _WITHDRAWAL_SCHEMA:
            raise ChunkError(f"chunk {digest}: withdrawals of schema {table.schema.remove_metadata()}")
        names = table.column("chunk").combine_chunks().dictionary_encode()
        rows = table.column("row").to_numpy()
        codes = names.indices.to_numpy(zero_copy_only=False)
        targets = {name: np.sort(rows[codes == k]) for k, name in enumerate(names.dictionary.to_pylist())}
        return Chunk(digest, feed, kind, targets=targets)
    raise ChunkError(f"chunk {digest}: unknown kind {kind!r}")


def _checked_rows(digest: str, table: pa.Table) -> pa.Table:
    for name in table.column_names:
        if name not in SCHEMA.names or table.schema.field(name).type != SCHEMA.field(name).type:
            raise ChunkError(
                f"chunk {digest}: column {name} ({table.schema.field(name).type}) is not in indicators/2"
            )
    missing = [name for name in REQUIRED if name not in table.column_names]
    if missing or any(table.column(name).null_count for name in REQUIRED):
        raise ChunkError(f"chunk {digest}: column(s) {missing or list(REQUIRED)} missing or null")
    try:
        constants = part_constants(table)
    except ValueError:
        raise ChunkError(f"chunk {digest}: unreadable constants") from None
    if "id_prefix" in table.column_names:
        raise ChunkError(f"chunk {digest}: id_prefix as a column (it is only ever a constant)")
    if (
        not set(constants) <= {"source", "id_prefix", "name", "tlp"}
        or set(constants) & set(table.column_names)
        or not all(isinstance(v, str) for v in constants.values())
    ):
        raise ChunkError(f"chunk {digest}: bad constants {constants}")
    if "id" not in table.column_names and not isinstance(constants.get("id_prefix"), str):
        raise ChunkError(f"chunk {digest}: rows without ids (no id column, no id prefix)")
    if "id" in table.column_names and table.column("id").null_count:
        raise ChunkError(f"chunk {digest}: rows without ids")
    version = table.column("version").to_numpy()
    prefix = table.column("prefix").to_numpy()
    bad = ((version != 4) & (version != 6)) | (prefix > np.where(version == 4, 32, 128))
    if "side" in table.column_names:
        bad |= table.column("side").fill_null(0).to_numpy() > 2
        bad |= table.column("side").fill_null(0).to_numpy() < 0
    if "dst_port" in table.column_names:
        port = table.column("dst_port").fill_null(0).to_numpy()
        bad |= (port < 0) | (port > 65535)
    if bad.any():
        raise ChunkError(f"chunk {digest}: {int(bad.sum())} rows of impossible family, prefix, side or port")
    return table
