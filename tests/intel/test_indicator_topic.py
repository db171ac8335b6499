"""The indicators topic's layout (indicators/2) without a broker: what successive publishes leave on
the topic reads back as exactly what each feed last held (deltas and rewrites, objects and rows),
unchanged feeds send nothing, the schema file and the code agree, and hostile chunks are refused and
counted without stopping the reader."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.intel import load_source, publish_plan
from pipeline.intel.chunks import (
    MAX_MESSAGE_BYTES,
    SCHEMA_HEADER,
    SCHEMA_VALUE,
    ChunkError,
    decode_chunk,
    encode_rows,
)
from pipeline.intel.load import IntelLoad
from pipeline.intel.model import Condition, Indicator
from pipeline.intel.publish_plan import plan
from pipeline.intel.table import SCHEMA, IndicatorTable, make_part
from pipeline.intel.topic import TopicState
from pipeline.schemas import load_schema, schemas_dir

HEADERS = [(SCHEMA_HEADER, SCHEMA_VALUE)]


class Topic:
    def __init__(self) -> None:
        self.log: list[tuple[bytes, bytes | None]] = []

    def state(self, feeds=None) -> TopicState:
        state = TopicState(feeds)
        for key, value in self.log:
            state.apply(key, value, HEADERS)
        return state

    def publish(self, *loads: IntelLoad) -> list:
        messages, reports = plan(self.state({load.source for load in loads}), loads)
        self.log += messages
        return reports


def test_the_schema_file_is_the_code_s() -> None:
    spec = json.loads((schemas_dir() / "indicator" / "v2.json").read_text())
    assert (
        [f.name for f in load_schema("indicator", 2)] == SCHEMA.names == [f["name"] for f in spec["fields"]]
    )
    for field in spec["fields"]:
        assert SCHEMA.field(field["name"]).nullable == field["nullable"]


ENTRIES = st.sampled_from(["198.51.100.7", "198.51.100.0/24", "198.51.100.9|443", "203.0.113.5", "2001:db8::1",
                          "2001:db8::/48|80", "10.0.0.0/8", "192.0.2.1", "192.0.2.2", "192.0.2.3|22"])  # fmt: skip
OBJECTS = st.sampled_from(["o1", "o2", "o3"])


def objects_of(names: list[str], version: int) -> list[Indicator]:
    """Indicators that fit no row (two conditions), ``version`` changing their content."""
    return [Indicator(id=f"indicator--{n}", value=f"{n} v{version}", source="Partner", conditions=(
        Condition(network=ipaddress.ip_network("198.51.100.7/32")),
        Condition(network=ipaddress.ip_network(f"203.0.113.{version}/32"), side="dst")))
        for n in names]  # fmt: skip


def expected(path: Path, lines: list[str], objects: list[Indicator]) -> dict[str, str]:
    """id -> value of what a feed holds, from the file's lines (duplicates once)."""
    out = {f"{path.name}:{line}": line for line in lines}
    out.update((o.id, o.value) for o in objects)
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rounds=st.lists(st.tuples(st.lists(ENTRIES, unique=True), st.lists(OBJECTS, unique=True), st.integers(1, 3)),
                       min_size=1, max_size=6), delta_bias=st.booleans())  # fmt: skip
def test_successive_publishes_read_back_as_the_last_content(
    tmp_path: Path, monkeypatch, rounds, delta_bias
) -> None:
    if delta_bias:  # small feeds would always be rewritten: make deltas the rule
        monkeypatch.setattr(publish_plan, "REWRITE_FRACTION", 100.0)
    topic = Topic()
    path = tmp_path / "feed.txt"
    other = tmp_path / "other.txt"
    other.write_text("192.0.2.200\n")
    topic.publish(load_source(str(other)))
    for lines, names, version in rounds:
        path.write_text("".join(f"{line}\n" for line in lines))
        load = load_source(str(path))
        load.objects = objects_of(names, version)
        before = topic.state().indicators
        (report,) = topic.publish(load)
        state = topic.state()
        live = state.indicators
        want = expected(path, lines, load.objects) | {f"{other.name}:192.0.2.200": "192.0.2.200"}
        assert {k: v.value for k, v in live.items()} == want
        assert not state.errors and not state.old_layout
        mine = {k: v for k, v in before.items() if not k.startswith(other.name)}
        now = {k: v for k, v in live.items() if not k.startswith(other.name)}
        assert report.new == len(now.keys() - mine.keys())
        assert report.withdrawn == len(mine.keys() - now.keys())
        assert report.changed == sum(mine[k] != now[k] for k in now.keys() & mine.keys())
        again = topic.publish(load)[0]
        assert again.mode == "unchanged" and again.messages == 0
        if delta_bias and now:  # (a feed left empty is rewritten: no chunk left)
            assert report.mode in ("new", "unchanged", "delta")


def test_a_delta_names_withdrawn_rows_by_chunk_and_row(tmp_path: Path) -> None:
    topic = Topic()
    path = tmp_path / "big.txt"
    lines = [f"10.0.{k >> 8}.{k & 255}" for k in range(40_000)]
    path.write_text("\n".join(lines) + "\n")
    assert topic.publish(load_source(str(path)))[0].messages == 3  # two chunks of rows and the manifest
    lines = lines[:100] + lines[110:] + ["172.16.0.1"]
    path.write_text("\n".join(lines) + "\n")
    (report,) = topic.publish(load_source(str(path)))
    assert (report.mode, report.new, report.withdrawn, report.unchanged, report.messages) == (
        "delta",
        1,
        10,
        39_990,
        3,
    )
    state = topic.state()
    withdrawals = [c for c in state.chunks.values() if c.kind == "withdrawals"]
    assert len(withdrawals) == 1 and [r.tolist() for r in withdrawals[0].targets.values()] == [
        list(range(100, 110))
    ]
    assert len(state.indicators) == 39_991


def test_rows_too_large_for_a_message_are_left_out_and_named(tmp_path: Path) -> None:
    path = tmp_path / "names.txt"
    noise = np.random.default_rng(1).bytes(MAX_MESSAGE_BYTES).hex()  # incompressible enough: > 1 message
    path.write_text(f"198.51.100.7 # short\n198.51.100.8 # {noise}\n")
    topic = Topic()
    (report,) = topic.publish(load_source(str(path)))
    assert report.errors == [f"{path}: 1 indicators too large for a message, left out"]
    assert sorted(topic.state().indicators) == ["names.txt:198.51.100.7"]


def _rows_chunk(columns: dict, constants: dict | None = None) -> tuple[str, bytes]:
    ((digest, value, _),) = encode_rows("f", IndicatorTable([make_part(columns, constants)]))
    return digest, value


GOOD = {"value": ["192.0.2.1"], "network": pa.array([bytes(10) + b"\xff\xff\xc0\x00\x02\x01"], pa.binary(16)),
        "prefix": [32], "version": [4]}  # fmt: skip


def _with_metadata(value: bytes, **changes) -> bytes:
    table = pa.ipc.open_stream(value).read_all()
    metadata = dict(table.schema.metadata)
    metadata.update({k.encode(): v.encode() for k, v in changes.items()})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema.with_metadata(metadata)) as writer:
        writer.write_table(table.replace_schema_metadata(metadata))
    return sink.getvalue().to_pybytes()


@pytest.mark.parametrize(
    "bad, reason",
    [
        ({**GOOD, "prefix": [33]}, "impossible family, prefix"),
        ({**GOOD, "version": [5]}, "impossible family, prefix"),
        ({**GOOD, "dst_port": [70000]}, "impossible family, prefix, side or port"),
        ({**GOOD, "side": [3]}, "impossible family, prefix, side or port"),
        ({k: v for k, v in GOOD.items() if k != "prefix"}, "missing or null"),
        (GOOD, "rows without ids"),  # neither an id column nor an id prefix
    ],
)
def test_hostile_row_chunks_are_refused(bad: dict, reason: str) -> None:
    digest, value = _rows_chunk(bad, None if reason == "rows without ids" else {"id_prefix": "x:"})
    with pytest.raises(ChunkError, match=reason):
        decode_chunk(digest, value)


def test_hostile_messages_are_counted_and_the_rest_reads(tmp_path: Path) -> None:
    path = tmp_path / "list.txt"
    path.write_text("198.51.100.7\n")
    topic = Topic()
    topic.publish(load_source(str(path)))
    digest, good = _rows_chunk(GOOD, {"id_prefix": "x:", "source": "x"})
    assert decode_chunk(digest, good).rows.column("id").to_pylist() == ["x:192.0.2.1"]
    wrong_type = pa.table({"value": ["v"], "network": pa.array([bytes(16)], pa.binary(16)),
                           "prefix": pa.array([32], pa.int64()), "version": pa.array([4], pa.uint8())})  # fmt: skip
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(
        sink, wrong_type.schema.with_metadata({b"shoal.feed": b"f", b"shoal.kind": b"rows"})
    ) as w:
        w.write_table(wrong_type)
    hostile = [
        (b"chunk:1", b"\xff" * 64),  # not Arrow
        (
            b"chunk:2",
            _with_metadata(good, **{"shoal.constants": json.dumps({"side": 7})}),
        ),  # a constant not allowed
        (b"chunk:3", _with_metadata(good, **{"shoal.kind": "tables"})),  # unknown kind
        (b"chunk:4", sink.getvalue().to_pybytes()),  # a column of the wrong type
        (
            b"feed:ghost",
            json.dumps({"feed": "other", "chunks": [], "indicators": 0}).encode(),
        ),  # key and feed differ
        (b"elsewhere", b"{}"),
    ]
    state = topic.state()
    for key, value in hostile:
        assert state.apply(key, value, HEADERS) is False
    assert state.apply(None, b"x", HEADERS) is False
    assert state.apply(b"chunk:5", good, [(SCHEMA_HEADER, b"flows/1")]) is False  # another schema
    assert dict(state.errors) == {"unreadable": 7, "no_key": 1}
    assert sorted(state.indicators) == ["list.txt:198.51.100.7"]


def test_fingerprints_do_not_depend_on_how_a_part_keeps_a_column() -> None:
    """A list's rows (constants, derived ids) and the same indicators as objects made into rows."""
    entries = ["198.51.100.7", "10.0.0.0/8|80", "2001:db8::1"]
    objects = [Indicator(id=f"x.txt:{e}", value=e, source="x", conditions=(Condition(
        network=ipaddress.ip_network(e.partition("|")[0]), dst_ports=frozenset({80}) if "|" in e else None),))
        for e in entries]  # fmt: skip
    as_rows, rest = IndicatorTable.from_indicators(objects)
    assert not rest
    listed = IndicatorTable.from_columns(
        as_rows.network_bytes(), as_rows.numbers("prefix"), as_rows.numbers("version"), as_rows.numbers("dst_port"),
        values=pa.array(entries), source="x", id_prefix="x.txt:",
    )  # fmt: skip
    assert listed.parts[0].schema.names != as_rows.parts[0].schema.names
    assert np.array_equal(listed.fingerprints(), as_rows.fingerprints())
    assert np.array_equal(listed.id_hashes(), as_rows.id_hashes())
    changed = IndicatorTable.from_columns(
        as_rows.network_bytes(), as_rows.numbers("prefix"), as_rows.numbers("version"), as_rows.numbers("dst_port"),
        values=pa.array(entries), source="y", id_prefix="x.txt:",
    )  # fmt: skip
    assert not (changed.fingerprints() == listed.fingerprints()).any()
