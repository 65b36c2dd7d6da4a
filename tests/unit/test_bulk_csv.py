"""Reading a bulk registration CSV: docs/spec "Bulk registration" and "Names and limits".

Pure tests: every input is an in-memory byte stream. Line numbers are the physical
lines (counted by line feeds) on which a record starts; line 1 is the header.
"""

from __future__ import annotations

import io

import pytest

from shared.domain.bulk_csv import (
    COLUMNS,
    VALUE_SHOWN,
    BulkRow,
    CsvReader,
    RowError,
    shorten,
)

BOM = b"\xef\xbb\xbf"
HEADER = b"REGISTRATION_KEY,HARDWARE_ID,DEVICE_NAME,CATEGORY_A,CATEGORY_B\r\n"
HEADER_3 = b"REGISTRATION_KEY,HARDWARE_ID,DEVICE_NAME\r\n"
EXPECTED_HEADER = ",".join(COLUMNS)
NOT_UTF8 = "the file is not UTF-8 text: save it as CSV UTF-8 (Windows-1252, Latin-1 or binary?)"
NUL_BYTES = "the file contains NUL bytes (a binary file?)"
UNTERMINATED = 'unterminated quote: a field opened with " is never closed'
NAME_CHARSET = "may hold only ASCII letters, digits, space, '_', '-' and '.'"
HARDWARE_CHARSET = "may hold only ASCII letters, digits, '.', '_' and '-'"


def read(
    data: bytes, *, max_rows: int = 1_000_000, max_errors: int = 1000
) -> tuple[list[BulkRow], CsvReader]:
    reader = CsvReader(io.BytesIO(data), max_rows=max_rows, max_errors=max_errors)
    rows = list(reader)
    return rows, reader


def read_ok(data: bytes) -> list[BulkRow]:
    rows, reader = read(data)
    assert reader.errors.shown == []
    assert reader.errors.total == 0
    return rows


def only_error(data: bytes) -> RowError:
    rows, reader = read(data)
    assert rows == []
    assert reader.errors.total == 1
    assert len(reader.errors.shown) == 1
    return reader.errors.shown[0]


# ---------------------------------------------------------------- files that must work


def test_a_spreadsheet_export_with_bom_crlf_quoting_and_trailing_blank_lines_is_read() -> None:
    data = (
        BOM
        + HEADER
        + b'"key,""1""",b827eb8905e5,Example Device,,\r\n'
        + b'key2,b827eb8905e6,Sensor 2,"Floor 1, ""East""",Rack 7\r\n'
        + b"key3,b827eb8905e7,Sensor_3.b,,\r\n"
        + b"\r\n"
        + b",,,,\r\n"
        + b"\r\n"
    )
    rows, reader = read(data)
    assert rows == [
        BulkRow(2, 'key,"1"', "b827eb8905e5", "Example Device", "", ""),
        BulkRow(3, "key2", "b827eb8905e6", "Sensor 2", 'Floor 1, "East"', "Rack 7"),
        BulkRow(4, "key3", "b827eb8905e7", "Sensor_3.b", "", ""),
    ]
    assert reader.errors.shown == []
    assert reader.errors.total == 0
    assert reader.rows_read == 3
    assert reader.columns == COLUMNS
    assert reader.too_many_rows is False


def test_the_example_row_of_the_spec_is_read() -> None:
    rows = read_ok(HEADER + b"1c1b0dbe190e,f0038c1be545,Example Device,,\r\n")
    assert rows == [BulkRow(2, "1c1b0dbe190e", "f0038c1be545", "Example Device")]


def test_a_header_of_only_the_three_required_columns_works() -> None:
    rows, reader = read(HEADER_3 + b"k1,h1,Device 1\r\nk2,h2,Device 2\r\n")
    assert rows == [BulkRow(2, "k1", "h1", "Device 1"), BulkRow(3, "k2", "h2", "Device 2")]
    assert reader.errors.total == 0
    assert reader.columns == COLUMNS[:3]


def test_a_header_with_only_category_a_works() -> None:
    rows = read_ok(b"REGISTRATION_KEY,HARDWARE_ID,DEVICE_NAME,CATEGORY_A\r\nk1,h1,n1,Cat\r\n")
    assert rows == [BulkRow(2, "k1", "h1", "n1", "Cat", "")]


def test_a_header_in_lower_case_with_lf_line_ends_works() -> None:
    data = b"registration_key,hardware_id,device_name,category_a,category_b\nk1,h1,Device 1,A,B\n"
    rows, reader = read(data)
    assert rows == [BulkRow(2, "k1", "h1", "Device 1", "A", "B")]
    assert reader.errors.total == 0
    assert reader.columns == COLUMNS


def test_a_row_with_fewer_category_fields_than_the_header_has_empty_categories() -> None:
    rows = read_ok(HEADER + b"k1,h1,Device 1\r\nk2,h2,Device 2,Only A\r\n")
    assert rows == [
        BulkRow(2, "k1", "h1", "Device 1", "", ""),
        BulkRow(3, "k2", "h2", "Device 2", "Only A", ""),
    ]


@pytest.mark.parametrize("name", [b"", b"   ", b'""'])
def test_an_empty_device_name_defaults_to_the_hardware_id(name: bytes) -> None:
    rows = read_ok(HEADER + b"k1,b827eb8905e5," + name + b",,\r\n")
    assert rows == [BulkRow(2, "k1", "b827eb8905e5", "b827eb8905e5", "", "")]


def test_blank_lines_between_rows_keep_the_physical_line_numbers() -> None:
    rows = read_ok(HEADER + b"\r\nk1,h1,n1\r\n\r\n   \r\nk2,h2,n2\r\n")
    assert [row.line for row in rows] == [3, 6]


def test_a_quoted_field_spanning_two_lines_keeps_the_next_line_numbers_right() -> None:
    data = (
        HEADER
        + b'k1,h1,n1,"two\r\nlines",\r\n'  # record on lines 2-3
        + b"k2,h2,n2,,\r\n"  # line 4
        + b"k3,h3,=bad,,\r\n"  # line 5
    )
    rows, reader = read(data)
    # Quoting is read (the record spans lines 2-3), but a value is one line: that row is
    # refused naming the line break, and the rows after it keep their physical line numbers.
    assert rows == [BulkRow(4, "k2", "h2", "n2", "", "")]
    assert [(e.line, e.column) for e in reader.errors.shown] == [(2, "CATEGORY_A"), (5, "DEVICE_NAME")]
    assert reader.errors.shown[0].reason == "a line break inside a quoted value: values are one line"
    assert "formula" in reader.errors.shown[1].reason


# ---------------------------------------------------------------- header rules


@pytest.mark.parametrize(
    ("header", "value", "reason_part"),
    [
        (
            b"HARDWARE_ID,REGISTRATION_KEY,DEVICE_NAME,CATEGORY_A,CATEGORY_B",
            "HARDWARE_ID,REGISTRATION_KEY,DEVICE_N...",
            "columns in the wrong order",
        ),
        (
            b"REGISTRATION_KEY,HARDWARE_ID,DEVICE_NAME,CATEGORY_B",
            "REGISTRATION_KEY,HARDWARE_ID,DEVICE_N...",
            "columns in the wrong order",
        ),
        (
            b"REGISTRATION_KEY,HARDWARE_ID,CATEGORY_A",
            "REGISTRATION_KEY,HARDWARE_ID,CATEGORY_A",
            "missing column DEVICE_NAME",
        ),
        (
            b"HARDWARE_ID,DEVICE_NAME",
            "HARDWARE_ID,DEVICE_NAME",
            "missing column REGISTRATION_KEY",
        ),
        (
            b"REGISTRATION_KEY,HARDWARE_ID,DEVICE_NAME,CATEGORY_A,CATEGORY_B,NOTES",
            "REGISTRATION_KEY,HARDWARE_ID,DEVICE_N...",
            "unknown column NOTES",
        ),
        (
            b"REGISTRATION_KEY,HARDWARE_ID,DEVICE_NAME,COLOUR",
            "REGISTRATION_KEY,HARDWARE_ID,DEVICE_N...",
            "unknown column COLOUR",
        ),
    ],
    ids=["wrong-order", "category-b-without-a", "missing-name", "missing-key", "extra-column", "unknown-4th"],
)
def test_a_wrong_header_is_one_error_on_line_1_and_no_rows(
    header: bytes, value: str, reason_part: str
) -> None:
    rows, reader = read(header + b"\r\nk1,h1,n1,,\r\nk2,h2,n2,,\r\n")
    assert rows == []
    assert reader.errors.total == 1
    (error,) = reader.errors.shown
    assert (error.line, error.column, error.value) == (1, "", value)
    assert error.reason.startswith(reason_part + ": ")
    assert error.reason.endswith("the header must be " + EXPECTED_HEADER)


def test_an_empty_file_is_an_error_on_line_1() -> None:
    error = only_error(b"")
    assert error == RowError(1, "", "", "the file is empty: expected the header " + EXPECTED_HEADER)


def test_a_file_of_only_a_bom_and_blank_lines_is_empty() -> None:
    error = only_error(BOM + b"\r\n\r\n,,\r\n")
    assert (error.line, error.column) == (1, "")
    assert "empty" in error.reason


def test_a_header_only_file_has_no_rows_and_no_errors() -> None:
    rows, reader = read(BOM + HEADER + b"\r\n")
    assert rows == []
    assert reader.errors.total == 0
    assert reader.errors.shown == []
    assert reader.rows_read == 0
    assert reader.columns == COLUMNS


# ---------------------------------------------------------------- field counts


def test_a_row_with_too_many_fields_is_reported_with_its_line() -> None:
    rows, reader = read(HEADER + b"k1,h1,n1,a,b\r\nk2,h2,n2,a,b,extra\r\nk3,h3,n3\r\n")
    assert [row.line for row in rows] == [2, 4]
    assert reader.errors.shown == [
        RowError(3, "", "k2,h2,n2,a,b,extra", "6 fields; the header has 5 columns"),
    ]


def test_a_category_field_beyond_a_three_column_header_is_too_many_fields() -> None:
    rows, reader = read(HEADER_3 + b"k1,h1,n1,cat\r\n")
    assert rows == []
    assert reader.errors.shown == [RowError(2, "", "k1,h1,n1,cat", "4 fields; the header has 3 columns")]


@pytest.mark.parametrize(
    ("row", "column", "reason"),
    [
        (b"k1,h1", "DEVICE_NAME", "2 fields; at least 3 are required"),
        (b"k1", "HARDWARE_ID", "1 fields; at least 3 are required"),
    ],
)
def test_a_row_with_fewer_than_three_fields_is_reported(row: bytes, column: str, reason: str) -> None:
    rows, reader = read(HEADER + b"k0,h0,n0\r\n" + row + b"\r\n")
    assert [r.line for r in rows] == [2]
    assert reader.errors.shown == [RowError(3, column, "", reason)]


# ---------------------------------------------------------------- structural problems


def test_an_unterminated_quote_is_an_error_and_ends_the_reading() -> None:
    data = HEADER + b'k1,h1,n1\r\nk2,"h2,n2\r\nk3,h3,n3\r\nk4,h4,=bad\r\n'
    rows, reader = read(data)
    assert rows == [BulkRow(2, "k1", "h1", "n1")]
    assert reader.errors.shown == [RowError(3, "", "", UNTERMINATED)]
    assert reader.errors.total == 1


def test_a_file_that_is_not_utf8_in_its_header_is_reported_on_line_1() -> None:
    error = only_error(b"REGISTRATION_KEY,HARDWARE_ID,DEVICE_NAME\xa0\r\nk1,h1,n1\r\n")
    assert error == RowError(1, "", "", NOT_UTF8)
    assert "not UTF-8" in error.reason


def test_a_latin1_file_is_not_utf8_on_the_line_of_the_first_bad_byte() -> None:
    """BUG: the codecs stream reader decodes ahead, so the error lands on an earlier line
    (here on line 1, the header) and the valid row before it is never yielded."""
    data = HEADER + b"k1,h1,Device 1\r\nk2,h2,M\xfcller\r\n"  # latin-1 u-umlaut on line 3
    rows, reader = read(data)
    assert reader.errors.shown == [RowError(3, "", "", NOT_UTF8)]
    assert rows == [BulkRow(2, "k1", "h1", "Device 1")]


def test_a_latin1_byte_right_after_the_header_is_reported_on_line_2() -> None:
    """BUG: reported on line 1 (the header) instead of line 2."""
    error = only_error(HEADER + b"k1,h1,M\xfcller\r\n")
    assert error == RowError(2, "", "", NOT_UTF8)


def test_a_binary_file_with_nul_bytes_is_reported() -> None:
    error = only_error(b"\x00" * 32)
    assert error == RowError(1, "", "", NUL_BYTES)


def test_a_nul_byte_in_a_row_is_reported_on_its_line_and_ends_the_reading() -> None:
    rows, reader = read(HEADER + b"k1,h1,n1\r\nk2,h\x00,n2\r\nk3,h3,n3\r\n")
    assert rows == [BulkRow(2, "k1", "h1", "n1")]
    assert reader.errors.shown == [RowError(3, "", "", NUL_BYTES)]


@pytest.mark.parametrize(
    "separator",
    ["\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"],
    ids=["VT", "FF", "FS", "GS", "RS", "NEL", "LS", "PS"],
)
def test_a_unicode_line_boundary_inside_a_quoted_value_does_not_shift_line_numbers(
    separator: str,
) -> None:
    """BUG: str.splitlines() boundaries (used by codecs readline) count as physical lines."""
    data = HEADER + f'k1,h1,"N{separator}1",,\r\nk2,h2,=bad,,\r\n'.encode()
    rows, reader = read(data)
    assert rows == []
    assert [(e.line, e.column) for e in reader.errors.shown] == [(2, "DEVICE_NAME"), (3, "DEVICE_NAME")]
    assert "formula" in reader.errors.shown[1].reason


def test_a_form_feed_inside_an_unquoted_name_does_not_split_the_row() -> None:
    """BUG: the row is cut at the form feed: k1 is accepted with the name "N" and the
    rest ("1") is reported as a separate 1-field row on line 3; k2 moves to line 4."""
    rows, reader = read(HEADER_3 + b"k1,h1,N\x0c1\r\nk2,h2,n2\r\n")
    assert reader.errors.shown == [RowError(2, "DEVICE_NAME", "N?1", NAME_CHARSET)]
    assert rows == [BulkRow(3, "k2", "h2", "n2")]


# ---------------------------------------------------------------- values


@pytest.mark.parametrize(
    ("index", "value", "shown"),
    [
        (0, "k\u00e9y", "k\\xe9y"),
        (1, "h\u00e91", "h\\xe91"),
        (2, "Caf\u00e9", "Caf\\xe9"),
        (3, "Stra\u00dfe", "Stra\\xdfe"),
        (4, "\u6771\u4eac", "\\u6771\\u4eac"),
    ],
    ids=list(COLUMNS),
)
def test_non_ascii_in_each_column_is_reported_escaped(index: int, value: str, shown: str) -> None:
    cells = ["k1", "h1", "n1", "a", "b"]
    cells[index] = value
    data = HEADER + b"k0,h0,n0,,\r\n" + ",".join(cells).encode() + b"\r\n"
    rows, reader = read(data)
    assert [row.line for row in rows] == [2]
    assert reader.errors.shown == [RowError(3, COLUMNS[index], shown, "only ASCII is accepted")]
    assert "ASCII" in reader.errors.shown[0].reason


def test_non_ascii_in_two_columns_of_one_row_gives_two_errors() -> None:
    rows, reader = read(HEADER + "k1,h\u00e9,N\u00e9,,\r\n".encode())
    assert rows == []
    assert [(e.line, e.column, e.value) for e in reader.errors.shown] == [
        (2, "HARDWARE_ID", "h\\xe9"),
        (2, "DEVICE_NAME", "N\\xe9"),
    ]


@pytest.mark.parametrize("start", ["=", "+", "-", "@"])
@pytest.mark.parametrize("index", [2, 3, 4], ids=["DEVICE_NAME", "CATEGORY_A", "CATEGORY_B"])
def test_a_value_that_a_spreadsheet_would_run_as_a_formula_is_rejected(index: int, start: str) -> None:
    cells = ["k1", "h1", "n1", "a", "b"]
    cells[index] = f"{start}SUM(A1)"
    rows, reader = read(HEADER + b"k0,h0,n0,,\r\n" + ",".join(cells).encode() + b"\r\n")
    assert [row.line for row in rows] == [2]
    assert reader.errors.total == 1
    (error,) = reader.errors.shown
    assert (error.line, error.column, error.value) == (3, COLUMNS[index], f"{start}SUM(A1)")
    assert f"starts with {start!r}" in error.reason
    assert "formula" in error.reason


def test_a_formula_after_leading_spaces_is_still_rejected() -> None:
    rows, reader = read(HEADER + b'k1,h1,"  =1+2",,\r\n')
    assert rows == []
    assert [(e.line, e.column, e.value) for e in reader.errors.shown] == [(2, "DEVICE_NAME", "=1+2")]
    assert "formula" in reader.errors.shown[0].reason


def test_a_device_name_with_a_comma_is_rejected() -> None:
    rows, reader = read(HEADER + b'k1,h1,"Rack 1, slot 2",,\r\n')
    assert rows == []
    assert reader.errors.shown == [RowError(2, "DEVICE_NAME", "Rack 1, slot 2", NAME_CHARSET)]


def test_a_device_name_of_101_characters_is_rejected_and_100_accepted() -> None:
    ok, too_long = "n" * 100, "n" * 101
    rows, reader = read(HEADER_3 + f"k1,h1,{ok}\r\nk2,h2,{too_long}\r\n".encode())
    assert rows == [BulkRow(2, "k1", "h1", ok)]
    assert reader.errors.shown == [
        RowError(3, "DEVICE_NAME", "n" * 37 + "...", "is 101 characters; the limit is 100")
    ]


def test_a_category_of_101_characters_is_rejected() -> None:
    rows, reader = read(HEADER + b"k1,h1,n1," + b"c" * 101 + b",\r\n")
    assert rows == []
    assert reader.errors.shown == [RowError(2, "CATEGORY_A", "c" * 37 + "...", "longer than 100 characters")]


def test_a_hardware_id_with_a_colon_is_rejected() -> None:
    rows, reader = read(HEADER + b"k1,b8:27:eb:89:05:e5,n1,,\r\n")
    assert rows == []
    assert reader.errors.shown == [RowError(2, "HARDWARE_ID", "b8:27:eb:89:05:e5", HARDWARE_CHARSET)]


def test_a_hardware_id_of_65_characters_is_rejected_and_64_accepted() -> None:
    ok, too_long = "h" * 64, "h" * 65
    rows, reader = read(HEADER_3 + f"k1,{ok},n1\r\nk2,{too_long},n2\r\n".encode())
    assert rows == [BulkRow(2, "k1", ok, "n1")]
    assert reader.errors.shown == [
        RowError(3, "HARDWARE_ID", "h" * 37 + "...", "is 65 characters; the limit is 64")
    ]


def test_an_empty_hardware_id_is_rejected() -> None:
    rows, reader = read(HEADER_3 + b"k1,,n1\r\n")
    assert rows == []
    assert reader.errors.shown == [RowError(2, "HARDWARE_ID", "", "is required")]


@pytest.mark.parametrize(
    ("key", "shown", "reason"),
    [
        ("a key", "a key", "only printable ASCII without spaces"),
        ("", "", "a registration key is required"),
        ("k" * 129, "k" * 37 + "...", "longer than 128 characters"),
    ],
    ids=["space", "empty", "129-chars"],
)
def test_a_bad_registration_key_is_rejected(key: str, shown: str, reason: str) -> None:
    rows, reader = read(HEADER_3 + b"k0,h0,n0\r\n" + f"{key},h1,n1\r\n".encode())
    assert [row.line for row in rows] == [2]
    assert reader.errors.shown == [RowError(3, "REGISTRATION_KEY", shown, reason)]


def test_a_registration_key_of_128_printable_characters_is_accepted() -> None:
    key = "!~" * 64
    rows = read_ok(HEADER_3 + f"{key},h1,n1\r\n".encode())
    assert rows == [BulkRow(2, key, "h1", "n1")]


def test_every_bad_value_of_a_row_is_reported() -> None:
    rows, reader = read(HEADER + b"a b,h:1,=x,@y,+z\r\n")
    assert rows == []
    assert [(e.line, e.column) for e in reader.errors.shown] == [
        (2, "REGISTRATION_KEY"),
        (2, "HARDWARE_ID"),
        (2, "DEVICE_NAME"),
        (2, "CATEGORY_A"),
        (2, "CATEGORY_B"),
    ]


def test_every_bad_row_is_reported_and_the_good_rows_are_yielded() -> None:
    data = HEADER_3 + b"k1,h1,n1\r\nk2,h:2,n2\r\nk3,h3,n3\r\nk 4,h4,n4\r\nk5,h5,n5\r\n"
    rows, reader = read(data)
    assert [row.line for row in rows] == [2, 4, 6]
    assert [(e.line, e.column) for e in reader.errors.shown] == [(3, "HARDWARE_ID"), (5, "REGISTRATION_KEY")]
    assert reader.rows_read == 5


# ---------------------------------------------------------------- limits


def test_more_rows_than_the_limit_is_an_error_naming_the_limit() -> None:
    data = HEADER_3 + b"".join(b"k%d,h%d,n%d\r\n" % (i, i, i) for i in range(1, 6))
    rows, reader = read(data, max_rows=3)
    assert rows == [BulkRow(2, "k1", "h1", "n1"), BulkRow(3, "k2", "h2", "n2"), BulkRow(4, "k3", "h3", "n3")]
    assert reader.too_many_rows is True
    assert reader.errors.shown == [RowError(5, "", "", "more than 3 rows (the row limit)")]
    assert reader.errors.total == 1


def test_exactly_the_row_limit_is_accepted() -> None:
    data = HEADER_3 + b"".join(b"k%d,h%d,n%d\r\n" % (i, i, i) for i in range(1, 4)) + b"\r\n\r\n"
    rows, reader = read(data, max_rows=3)
    assert [row.line for row in rows] == [2, 3, 4]
    assert reader.too_many_rows is False
    assert reader.errors.total == 0


def test_the_shown_errors_are_capped_and_the_total_counts_them_all() -> None:
    data = HEADER_3 + b"".join(b"k%d,h:%d,n\r\n" % (i, i) for i in range(2000))
    rows, reader = read(data, max_rows=10_000, max_errors=100)
    assert rows == []
    assert reader.errors.total == 2000
    assert len(reader.errors.shown) == 100
    assert reader.errors.shown[0] == RowError(2, "HARDWARE_ID", "h:0", HARDWARE_CHARSET)
    assert reader.errors.shown[-1] == RowError(101, "HARDWARE_ID", "h:99", HARDWARE_CHARSET)
    assert reader.rows_read == 2000
    assert reader.too_many_rows is False


def test_row_errors_serialize_to_a_dict() -> None:
    error = RowError(7, "HARDWARE_ID", "h:1", "bad")
    assert error.to_dict() == {"line": 7, "column": "HARDWARE_ID", "value": "h:1", "reason": "bad"}


# ---------------------------------------------------------------- shorten


def test_shorten_keeps_a_value_of_at_most_40_characters() -> None:
    assert VALUE_SHOWN == 40
    assert shorten("x" * 40) == "x" * 40
    assert shorten("") == ""


def test_shorten_cuts_a_long_value_to_40_characters_with_an_ellipsis() -> None:
    shown = shorten("abcdefghij" * 10)
    assert shown == ("abcdefghij" * 4)[:37] + "..."
    assert len(shown) == 40


def test_shorten_replaces_non_printable_characters() -> None:
    assert shorten("a\tb\x00c\r\nd\x7f") == "a?b?c??d?"


def test_shorten_escapes_non_ascii() -> None:
    assert shorten("M\u00fcller \u2028\U0001f600") == "M\\xfcller \\u2028\\U0001f600"


def test_shorten_counts_the_escaped_form_towards_the_limit() -> None:
    shown = shorten("\u00e9" * 20)  # 20 characters, 80 once escaped
    assert shown == ("\\xe9" * 10)[:37] + "..."
    assert len(shown) == VALUE_SHOWN


# ---------------------------------------------------------------- streaming


def test_a_200000_row_file_is_streamed_with_the_right_last_line() -> None:
    count = 200_000
    data = BOM + HEADER_3 + b"".join(b"k%d,h%d,\r\n" % (i, i) for i in range(count))
    reader = CsvReader(io.BytesIO(data), max_rows=1_000_000)
    seen = 0
    last: BulkRow | None = None
    for row in reader:
        seen += 1
        last = row
    assert seen == count
    assert reader.rows_read == count
    assert reader.errors.total == 0
    assert last == BulkRow(count + 1, f"k{count - 1}", f"h{count - 1}", f"h{count - 1}")


# ------------------------------------------- spreadsheet damage and misleading reasons


@pytest.mark.parametrize("value", ["1.23457E+11", "1.2e+11", "9.99999E-05", "1.0E+3"])
@pytest.mark.parametrize("column", ["REGISTRATION_KEY", "HARDWARE_ID"])
def test_a_number_in_scientific_notation_is_refused_naming_the_spreadsheet(value: str, column: str) -> None:
    """A spreadsheet turns a long numeric key into 1.23457E+11: published, the real device
    sending 123456789012 would be refused forever."""
    row = f"{value},h1,n1" if column == "REGISTRATION_KEY" else f"k1,{value},n1"
    error = only_error(HEADER_3 + row.encode() + b"\r\n")
    assert (error.line, error.column, error.value) == (2, column, value)
    assert "scientific notation" in error.reason and "format the column as text" in error.reason


@pytest.mark.parametrize("value", ["1e5", "deadbeefe1", "1E05", "b827eb8905e5", "1.5"])
def test_hex_and_plain_values_with_an_e_are_not_taken_for_scientific_notation(value: str) -> None:
    rows = read_ok(HEADER_3 + f"k1,{value},n1\r\n".encode())
    assert rows[0].hardware_id == value


@pytest.mark.parametrize(("delimiter", "what"), [(b";", "semicolons"), (b"\t", "tabs")])
def test_a_file_separated_by_another_delimiter_says_so(delimiter: bytes, what: str) -> None:
    header = delimiter.join(c.encode() for c in COLUMNS)
    error = only_error(header + b"\r\n" + delimiter.join([b"k1", b"h1", b"n1", b"", b""]) + b"\r\n")
    assert error.line == 1 and f"separated by {what}" in error.reason


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be"])
def test_a_utf16_file_is_named_as_such(encoding: str) -> None:
    data = (",".join(COLUMNS) + "\r\nk1,h1,n1,,\r\n").encode(encoding)
    error = only_error(data)
    assert error.reason == "the file is UTF-16 text: save it as CSV UTF-8 (comma-separated)"


def test_a_trailing_delimiter_on_every_line_is_ignored() -> None:
    rows = read_ok(HEADER.rstrip(b"\r\n") + b",\r\nk1,h1,n1,,,\r\nk2,h2,n2,a,b,\r\n")
    assert [(r.hardware_id, r.category_a) for r in rows] == [("h1", ""), ("h2", "a")]


def test_a_line_over_the_limit_is_refused_as_too_long_naming_the_limit() -> None:
    from shared.domain.bulk_csv import LINE_MAX_BYTES

    error = only_error(HEADER_3 + b'k1,h1,"' + b"x" * (LINE_MAX_BYTES * 2) + b'"\r\n')
    assert error.line == 2
    assert f"longer than {LINE_MAX_BYTES} bytes" in error.reason


@pytest.mark.parametrize(
    ("key", "hardware_id", "why"),
    [
        ("abc123", "h1", "short registration key"),
        ("b827eb8905e5", "b827eb8905e5", "is the hardware ID"),
        ("B8-27-EB-89-05-E5", "b827eb8905e5", "is the hardware ID"),
        ("aa:bb:cc:dd:ee:ff", "x1", "derived from a MAC"),
        ("b827eb000001", "b827eb8905e5", "derived from a MAC"),
    ],
)
def test_a_guessable_key_is_accepted_with_a_warning(key: str, hardware_id: str, why: str) -> None:
    rows, reader = read(HEADER_3 + f"{key},{hardware_id},n1\r\n".encode())
    assert len(rows) == 1 and reader.errors.total == 0
    assert reader.warnings.total == 1
    warning = reader.warnings.shown[0]
    assert (warning.line, warning.column, warning.value) == (2, "REGISTRATION_KEY", "")  # never shown
    assert why in warning.reason


def test_random_keys_get_no_warning() -> None:
    rows, reader = read(HEADER_3 + b"1c1b0dbe190e,f0038c1be545,n1\r\n9f3a1c77d0e2b4a8,b827eb8905e5,n2\r\n")
    assert len(rows) == 2 and reader.warnings.total == 0


def test_a_repeated_header_row_is_refused_not_made_a_device() -> None:
    rows, reader = read(HEADER + b"k1aaaaaaaa,h1,n1,,\r\n" + HEADER + b"k2aaaaaaaa,h2,n2,,\r\n")
    assert [r.hardware_id for r in rows] == ["h1", "h2"]
    assert [(e.line, e.reason) for e in reader.errors.shown] == [
        (3, "the header again: is this two files in one?")
    ]


@pytest.mark.parametrize("value", ["1E+11", "2e-05"])
def test_scientific_notation_without_a_decimal_point_is_caught_too(value: str) -> None:
    error = only_error(HEADER_3 + f"{value},h1,n1\r\n".encode())
    assert "scientific notation" in error.reason


@pytest.mark.parametrize(
    "header",
    [
        b'"REGISTRATION_KEY";"HARDWARE_ID";"DEVICE_NAME"',  # LibreOffice quotes every cell
        b"REGISTRATION_KEY; HARDWARE_ID; DEVICE_NAME",
    ],
)
def test_a_quoted_or_spaced_semicolon_header_is_named(header: bytes) -> None:
    error = only_error(header + b'\r\n"k1";"h1";"n1"\r\n')
    assert "separated by semicolons" in error.reason


def test_cr_only_line_ends_are_named() -> None:
    error = only_error(HEADER_3.replace(b"\r\n", b"\r") + b"k1aaaaaaaa,h1,n1\rk2aaaaaaaa,h2,n2\r")
    assert "CR only" in error.reason


def test_a_csv_lists_no_id_longer_than_64_characters() -> None:
    """IDs beyond 64 characters exist only as assigned clone IDs (H-N); a CSV assigns none."""
    error = only_error(HEADER_3 + ("k1aaaaaaaa," + "s" * 64 + "-1,n1\r\n").encode())
    assert error.column == "HARDWARE_ID" and "the limit is 64" in error.reason
