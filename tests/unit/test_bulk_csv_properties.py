"""Property tests of the bulk CSV reader (hypothesis): whatever the bytes, it never
raises; a file it accepts is exactly the rows that were written; a file with a bad row
is never accepted."""

from __future__ import annotations

import csv
import io
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from shared.domain import bulk_csv
from shared.domain.bulk_csv import COLUMNS, LINE_MAX_BYTES, SCIENTIFIC, CsvReader, weak_key

HEX = "0123456789abcdef"
# Valid values only: what a spreadsheet writes in scientific notation ("1e5", "0e-0") is
# refused by design (its digits are lost), so the generators leave it out.
keys = st.text(alphabet=HEX, min_size=16, max_size=32).filter(lambda k: not SCIENTIFIC.fullmatch(k))
hardware_ids = st.text(alphabet=HEX + "._-", min_size=1, max_size=64).filter(
    lambda h: h.strip("._-") == h and not SCIENTIFIC.fullmatch(h)
)
names = st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 _.", max_size=100
).map(str.strip)
categories = (
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789 ,\"';:", max_size=100)
    .map(str.strip)
    .filter(lambda c: not c.startswith(("=", "+", "-", "@")))
)
# Values each column must refuse: key, hardware ID, device name.
BAD = (
    ["", "has space", "1.23457E+11", "\u00e9t\u00e9", "k" * 129],
    ["", "h:1", "1.2E+05", "\u00e9", "h" * 65],
    ["=cmd()", "a,b", "caf\u00e9", "n" * 101],
)
rows = st.lists(st.tuples(keys, hardware_ids, names, categories, categories), min_size=1, max_size=30)


def read(data: bytes) -> tuple[list[tuple[str, ...]], CsvReader]:
    reader = CsvReader(io.BytesIO(data), max_rows=1000, max_errors=100)
    found = [(r.registration_key, r.hardware_id, r.name, r.category_a, r.category_b) for r in reader]
    return found, reader


def write(records: list[tuple[str, ...]], line_end: str) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator=line_end)
    writer.writerow(COLUMNS)
    writer.writerows(records)
    return out.getvalue().encode()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_any_bytes_are_read_without_an_exception(data: bytes) -> None:
    _found, reader = read(data)
    assert reader.errors.total >= len(reader.errors.shown)
    assert all(e.line >= 1 for e in reader.errors.shown)


@settings(max_examples=200, deadline=None)
@given(rows, st.sampled_from(["\r\n", "\n"]), st.booleans())
def test_a_valid_file_is_read_exactly(records: list[tuple[str, ...]], line_end: str, bom: bool) -> None:
    data = (b"\xef\xbb\xbf" if bom else b"") + write(records, line_end)
    found, reader = read(data)
    assert reader.errors.total == 0, reader.errors.shown
    assert found == [(k, h, n or h, a, b) for k, h, n, a, b in records]


@settings(max_examples=200, deadline=None)
@given(rows, st.data())
def test_a_file_with_a_bad_row_is_never_accepted(records: list[tuple[str, ...]], data: st.DataObject) -> None:
    index = data.draw(st.integers(0, len(records) - 1))
    column = data.draw(st.sampled_from([0, 1, 2]))
    bad_value = data.draw(st.sampled_from(BAD[column]))
    broken = list(records[index])
    broken[column] = bad_value
    records = [*records[:index], tuple(broken), *records[index + 1 :]]
    _found, reader = read(write(records, "\r\n"))
    assert reader.errors.total >= 1
    assert any(e.line == index + 2 for e in reader.errors.shown)


# Cells near the fast path's edges: spaces around, formula starts, scientific notation,
# limits, quotes, control and non-ASCII characters, the header's own words.
EDGE_CHARS = "aZ09 _.-=+@:,\"'\t\x0b\x0c\x1c\x85\u00e9E!~"
cells = st.one_of(
    st.text(alphabet=EDGE_CHARS, max_size=6),
    st.sampled_from(
        ["", " k", "k ", "1E+05", "1.5e-3", "1e5", "-x", "=x", "REGISTRATION_KEY", "registration_key"]
    ),
    st.integers(min_value=0, max_value=3).map(lambda n: "k" * [63, 64, 65, 100][n]),
    st.integers(min_value=0, max_value=3).map(lambda n: "n" * [99, 100, 101, 128][n] + " "),
    st.integers(min_value=127, max_value=130).map(lambda n: "k" * n),
)


@settings(max_examples=2000, deadline=None)
@given(st.lists(cells, min_size=1, max_size=6), st.sampled_from([3, 4, 5]))
def test_the_fast_row_path_agrees_with_the_full_checks(record: list[str], columns: int) -> None:
    fast, full = CsvReader(io.BytesIO(b""), max_rows=10), CsvReader(io.BytesIO(b""), max_rows=10)
    fast.columns = full.columns = COLUMNS[:columns]
    assert fast._row(list(record), 7) == full._checked_row(list(record), 7)
    assert (fast.errors, fast.warnings) == (full.errors, full.warnings)


def _line_by_line(data: bytes) -> list[str]:
    """The lines as a line reader reads them, each checked (the reader before blocks)."""
    reader = CsvReader(io.BytesIO(data), max_rows=10)
    stream = io.BytesIO(data)
    found = []
    while raw := stream.readline(LINE_MAX_BYTES + 1):
        found.append(reader._checked_line(raw, first=not found))
    return found


@settings(max_examples=500, deadline=None)
@given(
    st.lists(
        st.sampled_from([b"a,b", b"\r", b"\n", b"\r\n", b"\x0c", b"\x1e", b"\xc3\xa9", b'"', b"\x00"]),
        max_size=40,
    ),
    st.integers(min_value=1, max_value=9),
)
def test_lines_read_in_blocks_are_the_lines_read_one_by_one(parts: list[bytes], block: int) -> None:
    data = b"REGISTRATION_KEY,HARDWARE_ID,DEVICE_NAME\n" + b"".join(parts)
    try:
        expected: list[str] | type[Exception] = _line_by_line(data)
    except Exception as exc:
        expected = type(exc)
    read_bytes, bulk_csv.READ_BYTES = bulk_csv.READ_BYTES, block  # block edges everywhere
    try:
        found: list[str] | type[Exception] = list(CsvReader(io.BytesIO(data), max_rows=10)._lines())
    except Exception as exc:
        found = type(exc)
    finally:
        bulk_csv.READ_BYTES = read_bytes
    assert found == expected


def _weak_key_as_written_first(key: str, hardware_id: str) -> str:
    """weak_key before its per-row shortcut: the reference it must agree with."""
    if len(key) < 8:
        return f"a short registration key ({len(key)} characters): guessable; use 16 random hex digits"
    plain_key = re.sub(r"[:.-]", "", key).lower()
    plain_id = re.sub(r"[:.-]", "", hardware_id).lower()
    if plain_key == plain_id:
        return "the registration key is the hardware ID: guessable by anyone who reads the ID"
    mac = r"[0-9A-Fa-f]{2}([:-])[0-9A-Fa-f]{2}(\1[0-9A-Fa-f]{2}){4}"
    if re.fullmatch(mac, key) or (
        re.fullmatch("[0-9a-f]{12,}", plain_key)
        and re.fullmatch("[0-9a-f]{12,}", plain_id)
        and plain_key[:6] == plain_id[:6]
    ):
        return "the registration key looks derived from a MAC address: guessable; use random keys"
    return ""


mac_like = st.text(alphabet="0123456789abcdefABCDEF:-.g", min_size=0, max_size=20)


@settings(max_examples=1000, deadline=None)
@given(mac_like, mac_like)
def test_weak_key_agrees_with_its_first_form(key: str, hardware_id: str) -> None:
    assert weak_key(key, hardware_id) == _weak_key_as_written_first(key, hardware_id)
    assert weak_key(hardware_id, hardware_id) == _weak_key_as_written_first(hardware_id, hardware_id)
