"""Lists and CSV files read as columns give exactly what the object path (the per-line Python
parser these replaced, kept here as the reference) gives: the same indicators, names, errors with
their line numbers, refused catch-alls and collapsed duplicates — on random files, split into
blocks anywhere."""

from __future__ import annotations

import csv
import io
import ipaddress
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.intel import IntelError, lists, load_source, textscan
from pipeline.intel.load import IntelLoad
from pipeline.intel.model import Indicator


def reference_list(path: Path) -> IntelLoad:
    """The object path as it was: decode the whole file, one object per line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise IntelError(
            f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}): a binary file?"
        ) from exc
    load = IntelLoad(str(path))
    for number, line in enumerate(lines, 1):
        text, name = lists.split_line(line)
        if text:
            _reference_add(load, path, text, f"{path}:{number}", name)
    return load.refuse_catch_alls(8, 16).collapse_duplicates()


def _reference_add(load: IntelLoad, path: Path, text: str, where: str, name: str | None = None) -> None:
    try:
        condition = lists.parse_entry(text)
    except ValueError as exc:
        load.errors.append(f"{where}: {exc}")
        return
    load.objects.append(Indicator(id=f"{path.name}:{text}", value=text, source=path.stem,
                                  conditions=(condition,), name=name))  # fmt: skip


def reference_csv(path: Path, value_column: str, port_column: str | None) -> IntelLoad:
    load = IntelLoad(str(path))
    with path.open(newline="") as fh:
        for number, row in enumerate(csv.DictReader(fh), 2):
            value = (row.get(value_column) or "").strip()
            port = (row.get(port_column) or "").strip() if port_column else ""
            _reference_add(load, path, f"{value}|{port}" if port else value, f"{path}:{number}")
    return load.refuse_catch_alls(8, 16).collapse_duplicates()


def summary(load: IntelLoad) -> tuple:
    return ([i.to_dict() for i in load.indicators], load.errors, load.duplicates, dict(load.skipped))


ENTRIES = st.one_of(
    st.builds(lambda a, b, c, d: f"{a}.{b}.{c}.{d}", *[st.integers(0, 300)] * 4),
    st.sampled_from(["203.0.113.5", "198.51.100.0/24", "198.51.100.7/24", "10.0.0.0/8", "10.0.0.0/7", "0.0.0.0/0",
                     "01.2.3.4", "1.2.3.4/33", "1.2.3.4/032", "1.2.3.4/", "1.2.3.4|443", "1.2.3.4|0", "1.2.3.4|65536",
                     "1.2.3.4|", "1.2.3.4|+80", "1.2.3.4|4_43", "1.2.3.4/24|80", "1.2.3", "1.2.3.4.5", "2001:db8::1",
                     "2001:db8::/32", "2001:db8::1|443", "::/0", "::ffff:1.2.3.4", "1.2.3.0/255.255.255.0", "bogus",
                     "1.2.3.4/24/8", "\uff11.2.3.4", "256.1.1.1", "1.2.3.4|99999999999"]),
    st.builds(lambda a, p: f"198.51.{a}.0/{p}", st.integers(0, 255), st.integers(0, 33)),
)  # fmt: skip
SPACE = st.sampled_from([" ", "  ", "\t", " \x1f ", "\u00a0"])
NAMES = st.sampled_from(["", "botnet C2", "SBL256894", "été", "a  b\tc", "x # y", "; z"])


@st.composite
def list_lines(draw) -> str:
    shape = draw(st.integers(0, 6))
    entry, name, space = draw(ENTRIES), draw(NAMES), draw(SPACE)
    if shape == 0:
        return entry
    if shape == 1:
        return f"{entry}{space}# {name}"
    if shape == 2:
        return f"{space}{entry} ; {name}"
    if shape == 3:
        return f"{entry}{space}{name}"
    if shape == 4:
        return draw(st.sampled_from(["", "   ", "# comment", "; comment", "\t#", "#203.0.113.9"]))
    if shape == 5:
        return f"{entry}{space}{name}{space}"
    return draw(st.text(st.characters(codec="utf-8", exclude_characters="\n\r"), max_size=12))


BREAKS = st.sampled_from(["\n", "\n", "\n", "\r\n", "\r", "\x0b", "\x0c", "\x1c", "\x85", "\u2028"])


@st.composite
def list_files(draw) -> str:
    lines = draw(st.lists(list_lines(), max_size=30))
    breaks = draw(st.lists(BREAKS, min_size=len(lines), max_size=len(lines)))
    text = "".join(line + brk for line, brk in zip(lines, breaks, strict=True))
    return text if draw(st.booleans()) else text.rstrip("\n")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=list_files(), block=st.sampled_from([1, 7, 64, 1 << 20]))
def test_list_columns_equal_the_object_path(tmp_path: Path, monkeypatch, text: str, block: int) -> None:
    monkeypatch.setattr(lists, "BLOCK_BYTES", block)
    path = tmp_path / "feed.txt"
    path.write_text(text, encoding="utf-8", newline="")
    assert summary(load_source(str(path))) == summary(reference_list(path))


@pytest.mark.parametrize("data", ["203.0.113.8\n198.51.100.1 caf\xe9\n".encode("latin-1"),
                                  "203.0.113.8\n".encode("utf-16"), b"203.0.113.8\n\x85\n"])  # fmt: skip
def test_undecodable_lists_are_named_at_the_same_byte(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(data)
    with pytest.raises(IntelError) as expected:
        reference_list(path)
    with pytest.raises(IntelError) as got:
        load_source(str(path))
    assert str(got.value) == str(expected.value)


CSV_VALUES = st.one_of(ENTRIES, st.sampled_from(["", " 203.0.113.9 ", "198.51.100.0/24 "]))
CSV_PORTS = st.sampled_from(["", "443", " 80 ", "x", "70000", "0"])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(CSV_VALUES, CSV_PORTS, st.sampled_from(["c2", "a,b", 'say "hi"', ""])), max_size=25),
       ragged=st.booleans(), with_port=st.booleans())  # fmt: skip
def test_csv_columns_equal_the_object_path(tmp_path: Path, rows, ragged: bool, with_port: bool) -> None:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["first_seen", "ip", "port", "comment"])
    for k, (value, port, comment) in enumerate(rows):
        row = ["2026-01-01", value, port, comment]
        writer.writerow(row[:2] if ragged and k % 5 == 3 else row)  # short rows: read by Python's csv
    path = tmp_path / "feed.csv"
    path.write_text(out.getvalue(), newline="")
    port = "port" if with_port else None
    spec = f"csv:{path}:ip:port" if with_port else f"csv:{path}:ip"
    assert summary(load_source(spec)) == summary(reference_csv(path, "ip", port))


def test_a_large_list_is_read_in_blocks_with_line_numbers(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(lists, "BLOCK_BYTES", 4096)
    path = tmp_path / "big.txt"
    lines = [f"10.{k >> 16 & 255}.{k >> 8 & 255}.{k & 255}" for k in range(50_000)]
    lines[31_337] = "10.0.0.300"
    path.write_text("\n".join(lines) + "\n")
    load = load_source(str(path))
    assert load.count == 49_999 and not load.objects
    assert load.errors == [f"{path}:31338: '10.0.0.300' does not appear to be an IPv4 or IPv6 network"]


def _python_entry(text: str) -> tuple[int, int, int, int] | None:
    """(version, 128-bit network value (IPv4 mapped), prefix, port or -1) by the Python parser."""
    try:
        condition = lists.parse_entry(text)
    except ValueError:
        return None
    net = condition.network
    value = int(net.network_address) | (0xFFFF << 32 if net.version == 4 else 0)
    return net.version, value, net.prefixlen, next(iter(condition.dst_ports)) if condition.dst_ports else -1


ADDRESS_TEXT = st.one_of(
    st.text(st.sampled_from("0123456789abcdefABCDEF:./|"), max_size=45),
    st.builds(
        lambda v, p, fmt: (
            f"{ipaddress.IPv6Address(v).exploded if fmt else ipaddress.IPv6Address(v)}"
            + (f"/{p}" if p <= 128 else "")
        ),
        st.integers(0, 2**128 - 1) | st.sampled_from([0, 1, 2**64, 2**128 - 1, 0x20010DB8 << 96]),
        st.integers(0, 130),
        st.booleans(),
    ),
    st.builds(lambda v, p: f"{ipaddress.IPv4Address(v)}/{p}", st.integers(0, 2**32 - 1), st.integers(0, 33)),
)


@settings(max_examples=3000, deadline=None)
@given(ADDRESS_TEXT, st.sampled_from(["", "|443", "|0", "|65536", "|x"]))
def test_compiled_entry_parser_claims_only_what_ipaddress_reads_the_same(text: str, port: str) -> None:
    entry = (text + port).encode()
    ok, version, hi, lo, prefix, number = textscan.parse_entry(np.frombuffer(entry, np.uint8), 0, len(entry))
    expected = _python_entry(entry.decode())
    if ok:
        assert expected == (version, (int(hi) << 64) | int(lo), prefix, number)
    elif expected is not None:  # left to Python: only forms the compiled parser does not read
        assert (
            "." in text.split("/", maxsplit=1)[0].rsplit(":", 1)[-1] or "|" in text or text.count("/") > 1
        ), entry


def test_duplicates_are_found_exactly_when_hashes_collide(tmp_path: Path, monkeypatch) -> None:
    """Every row hashing alike (a collision everywhere) must still collapse exactly the duplicates."""
    from pipeline.intel import table as table_module

    path = tmp_path / "dups.txt"
    path.write_text(
        "203.0.113.5\n198.51.100.0/24\n203.0.113.5|80\n203.0.113.5\n2001:db8::1\n198.51.100.9/24\n"
    )
    expected = summary(reference_list(path))

    def same_hash(network, prefix, version, side, port, others, out) -> None:
        out[:] = 7

    monkeypatch.setattr(table_module, "_row_hashes", same_hash)
    got = load_source(str(path))
    assert summary(got) == expected and got.duplicates == 2


def test_long_loads_log_their_progress_when_not_on_a_terminal(tmp_path: Path, monkeypatch, caplog) -> None:
    from pipeline.intel import progress

    monkeypatch.setattr(lists, "BLOCK_BYTES", 1024)
    monkeypatch.setattr(progress, "LOG_EVERY_SECONDS", 0.0)
    path = tmp_path / "long.txt"
    path.write_text("".join(f"10.0.{k >> 8}.{k & 255}\n" for k in range(2000)))
    with caplog.at_level("INFO", logger="shoal.intel"):
        assert load_source(str(path)).count == 2000
    lines = [r.getMessage() for r in caplog.records if r.name == "shoal.intel"]
    assert any("B read (" in m and "indicators" in m for m in lines), lines
    assert lines[-1].startswith(f"{path}: done, 2,000 indicators")
