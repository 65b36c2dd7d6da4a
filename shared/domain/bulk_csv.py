"""Reading a bulk registration CSV: streamed, row by row, every problem reported.

Columns, in this order: ``REGISTRATION_KEY,HARDWARE_ID,DEVICE_NAME,CATEGORY_A,CATEGORY_B``
(the two category columns may be left out of the header, or left empty).
Spreadsheet exports work: a UTF-8 byte-order mark, CRLF line ends, RFC 4180
quoting and blank lines are accepted. Only ASCII is accepted in values.

:class:`CsvReader` yields one :class:`BulkRow` per data row and records a
:class:`RowError` (line, column, shortened value, reason) for each problem; a
structural problem (binary content, bad UTF-8, an unterminated quote) ends the
reading with one last error. Memory stays bounded: only the current row and
the first ``max_errors`` errors are kept.
"""

from __future__ import annotations

import codecs
import csv
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, NamedTuple

from shared.domain.identifiers import validate_device_name, validate_hardware_id
from shared.errors import InvalidInput

COLUMNS = ("REGISTRATION_KEY", "HARDWARE_ID", "DEVICE_NAME", "CATEGORY_A", "CATEGORY_B")
REQUIRED_COLUMNS = 3
KEY_MAX = 128
CATEGORY_MAX = 100
VALUE_SHOWN = 40
_KEY = re.compile(r"[!-~]+")  # printable ASCII, no spaces
FORMULA_STARTS = ("=", "+", "-", "@")
# What a spreadsheet writes for a long number in a "General" cell (1.23457E+11): the
# digits are gone, so a device sending the real key or ID could never match.
SCIENTIFIC = re.compile(r"[0-9](\.[0-9]+)?E[+-][0-9]+", re.IGNORECASE)
LINE_MAX_BYTES = 64 * 1024  # a physical line longer than this is refused (memory stays flat)
WEAK_KEY_LENGTH = 8
WARNINGS_SHOWN = 20
_MAC_SEPARATORS = re.compile(r"[:.-]")
_MAC = re.compile(r"[0-9A-Fa-f]{2}([:-])[0-9A-Fa-f]{2}(\1[0-9A-Fa-f]{2}){4}")
_HEX = re.compile(r"[0-9a-f]{12,}")
DELIMITERS = {";": "semicolons", "\t": "tabs", "|": "vertical bars"}
READ_BYTES = 1024 * 1024  # the spooled file is read in blocks of this size
# A block of lines that can be decoded and split at once holds only ASCII without NUL,
# CR only before LF, and none of the characters str.splitlines splits at but a line
# reader does not; any other block goes line by line through the checks that name
# the problem.
_SPLITLINES_ONLY = (b"\x00", b"\x0b", b"\x0c", b"\x1c", b"\x1d", b"\x1e")
# The common row, valid as it stands, recognised by one regular expression per value.
# Each accepts only values the full checks of _checked_row accept unchanged (nothing
# to strip, no spreadsheet damage, no formula, within the limits); every other value
# takes the full checks, which name what is wrong (tests/unit/test_bulk_csv_properties.py
# checks that both paths agree).
_NOT_SCIENTIFIC = r"(?![0-9](?:\.[0-9]+)?[eE][+-][0-9]+\Z)"
_PLAIN_KEY = re.compile(_NOT_SCIENTIFIC + r"[!-~]{1,128}")
_PLAIN_HARDWARE_ID = re.compile(_NOT_SCIENTIFIC + r"[A-Za-z0-9._-]{1,64}")
_PLAIN_NAME = re.compile(r"(?:[A-Za-z0-9_.](?:[A-Za-z0-9 _.-]{0,98}[A-Za-z0-9_.-])?)?")
# printable ASCII, not starting with = + - @ (a formula), no surrounding spaces
_PLAIN_CATEGORY = re.compile(
    r"(?:[\x21-\x2a\x2c\x2e-\x3c\x3e\x3f\x41-\x7e](?:[\x20-\x7e]{0,98}[\x21-\x7e])?)?"
)


class _BinaryContent(Exception):
    """A NUL byte: this is no text file."""


class _Utf16(Exception):
    """A UTF-16 file (a spreadsheet's "Unicode text")."""


class _LineTooLong(Exception):
    """A physical line over LINE_MAX_BYTES."""


class _OtherDelimiter(Exception):
    """The header is separated by something other than commas."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


class BulkRow(NamedTuple):
    """One valid data row (a named tuple: one is built per row of files of millions)."""

    line: int
    registration_key: str
    hardware_id: str
    name: str
    category_a: str = ""
    category_b: str = ""


@dataclass(frozen=True)
class RowError:
    line: int
    column: str
    value: str
    reason: str

    def to_dict(self) -> dict[str, object]:
        return {"line": self.line, "column": self.column, "value": self.value, "reason": self.reason}


def shorten(value: str) -> str:
    """A value as shown in an error: printable, at most VALUE_SHOWN characters."""
    shown = value.encode("ascii", "backslashreplace").decode("ascii")
    shown = "".join(c if c.isprintable() else "?" for c in shown)
    return shown if len(shown) <= VALUE_SHOWN else shown[: VALUE_SHOWN - 3] + "..."


@dataclass
class Errors:
    """The first ``limit`` errors, and how many there were in all."""

    limit: int
    shown: list[RowError] = field(default_factory=list)
    total: int = 0

    def add(self, error: RowError) -> None:
        self.total += 1
        if len(self.shown) < self.limit:
            self.shown.append(error)


class CsvReader:
    """Iterate the valid rows of a CSV read from a binary stream; collect the errors."""

    def __init__(self, stream: IO[bytes], *, max_rows: int, max_errors: int = 1000) -> None:
        self._stream = stream
        # Each physical line is decoded on its own, so a bad byte is reported on its own
        # line and only CR/LF end a line (str.splitlines would also split on FF, NEL, ...).
        self._decoder = codecs.getincrementaldecoder("utf-8-sig")("strict")
        self._max_rows = max_rows
        self.errors = Errors(max_errors)
        # Keys that work but can be guessed: reported with the upload, never refused.
        self.warnings = Errors(WARNINGS_SHOWN)
        self.rows_read = 0
        self.columns: tuple[str, ...] = ()
        self.too_many_rows = False

    def __iter__(self) -> Iterator[BulkRow]:
        reader = csv.reader(self._lines(), strict=True)
        record_start = 1
        try:
            for record in reader:
                line = record_start
                record_start = reader.line_num + 1
                if not record or (not record[0].strip() and all(not cell.strip() for cell in record)):
                    continue  # blank lines, including the trailing ones spreadsheets leave
                if not self.columns:
                    self._read_header(record, line)
                    if not self.columns:
                        return
                    continue
                self.rows_read += 1
                if self.rows_read > self._max_rows:
                    self.too_many_rows = True
                    self.errors.add(
                        RowError(line, "", "", f"more than {self._max_rows} rows (the row limit)")
                    )
                    return
                row = self._row(record, line)
                if row is not None:
                    yield row
        except UnicodeDecodeError:
            self.errors.add(
                RowError(
                    record_start,
                    "",
                    "",
                    "the file is not UTF-8 text: save it as CSV UTF-8 (Windows-1252, Latin-1 or binary?)",
                )
            )
            return
        except _Utf16:
            self.errors.add(
                RowError(
                    record_start, "", "", "the file is UTF-16 text: save it as CSV UTF-8 (comma-separated)"
                )
            )
            return
        except _BinaryContent:
            self.errors.add(RowError(record_start, "", "", "the file contains NUL bytes (a binary file?)"))
            return
        except _OtherDelimiter as exc:
            reason = f"the file is separated by {exc.what}, not commas: save it as CSV (comma-separated)"
            self.errors.add(RowError(1, "", "", reason))
            return
        except _LineTooLong:
            self.errors.add(
                RowError(
                    reader.line_num + 1,
                    "",
                    "",
                    f"a line longer than {LINE_MAX_BYTES} bytes (the line limit): is this a CSV file?",
                )
            )
            return
        except csv.Error as exc:
            message = str(exc)
            if "EOF" in message or "unexpected end of data" in message or "field limit" in message:
                reason = 'unterminated quote: a field opened with " is never closed'
            elif "new-line character seen in unquoted field" in message:
                reason = (
                    "lines end with CR only (old Mac format): save it as CSV UTF-8 (CRLF or LF line ends)"
                )
            else:
                reason = f"malformed CSV: {message}"
            self.errors.add(RowError(record_start, "", "", reason))
            return
        if not self.columns:
            self.errors.add(
                RowError(1, "", "", "the file is empty: expected the header " + ",".join(COLUMNS))
            )

    def _lines(self) -> Iterator[str]:
        """The file's physical lines, decoded, each ending at LF only (as a line reader
        reads them: str.splitlines would also split at CR, FF, ...). After the first
        line, read in blocks: a block of plain lines is decoded and split at once."""
        first = self._stream.readline(LINE_MAX_BYTES + 1)
        if not first:
            return
        yield self._checked_line(first, first=True)
        carry = b""
        while block := self._stream.read(READ_BYTES):
            data = carry + block if carry else block
            end = data.rfind(b"\n") + 1
            if end:
                yield from self._block_lines(data[:end])
            carry = data[end:]
            if len(carry) > LINE_MAX_BYTES:
                raise _LineTooLong
        if carry:
            yield self._checked_line(carry, first=False)

    def _block_lines(self, block: bytes) -> Iterator[str]:
        """The complete lines of a block: at once when all are plain, else one by one."""
        if (
            block.isascii()
            and not any(c in block for c in _SPLITLINES_ONLY)
            and block.count(b"\r") == block.count(b"\r\n")
        ):
            lines = block.decode("ascii").splitlines(keepends=True)
            if max(map(len, lines)) <= LINE_MAX_BYTES:
                yield from lines
                return
        for raw in _lf_lines(block):
            yield self._checked_line(raw, first=False)

    def _checked_line(self, raw: bytes, *, first: bool) -> str:
        """One physical line, checked and decoded (the first also for its encoding)."""
        if len(raw) > LINE_MAX_BYTES:
            raise _LineTooLong
        if first and raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            raise _Utf16
        if b"\x00" in raw:
            # UTF-16 without a byte-order mark: every other byte of ASCII text is NUL.
            if first and _looks_utf16(raw):
                raise _Utf16
            raise _BinaryContent
        text = self._decoder.decode(raw)
        if first:
            _check_delimiter(text)
        return text

    def _read_header(self, record: list[str], line: int) -> None:
        names = tuple(cell.strip().upper() for cell in _without_empty_tail(record))
        if names in (COLUMNS, COLUMNS[:REQUIRED_COLUMNS], COLUMNS[:4]):
            self.columns = names
            return
        expected = ",".join(COLUMNS)
        if len(names) == 1:
            for delimiter, what in DELIMITERS.items():
                parts = [part.strip().strip('"').upper() for part in names[0].split(delimiter)]
                if parts[:REQUIRED_COLUMNS] == list(COLUMNS[:REQUIRED_COLUMNS]):
                    reason = f"the file is separated by {what}, not commas: save it as CSV (comma-separated)"
                    self.errors.add(RowError(line, "", shorten(",".join(record)), reason))
                    return
        missing = [c for c in COLUMNS[:REQUIRED_COLUMNS] if c not in names]
        if missing:
            reason = f"missing column {missing[0]}: the header must be {expected}"
        elif len(names) > len(COLUMNS) or any(n not in COLUMNS for n in names):
            unknown = next((n for n in names if n not in COLUMNS), names[-1])
            reason = f"unknown column {shorten(unknown)}: the header must be {expected}"
        else:
            reason = f"columns in the wrong order: the header must be {expected}"
        self.errors.add(RowError(line, "", shorten(",".join(record)), reason))

    def _row(self, record: list[str], line: int) -> BulkRow | None:
        if len(record) == len(self.columns):
            key, hardware_id, name, category_a, category_b = record + _EMPTY[len(record) :]
            if (
                _PLAIN_KEY.fullmatch(key)
                and _PLAIN_HARDWARE_ID.fullmatch(hardware_id)
                and _PLAIN_NAME.fullmatch(name)
                and _PLAIN_CATEGORY.fullmatch(category_a)
                and _PLAIN_CATEGORY.fullmatch(category_b)
                and key.upper() != COLUMNS[0]  # not the header again
            ):
                weak = weak_key(key, hardware_id)
                if weak:
                    self.warnings.add(RowError(line, "REGISTRATION_KEY", "", weak))
                return BulkRow(line, key, hardware_id, name or hardware_id, category_a, category_b)
        return self._checked_row(record, line)

    def _checked_row(self, record: list[str], line: int) -> BulkRow | None:
        """The full checks of a row, naming every problem of it."""
        record = _without_empty_tail(record, keep=len(self.columns))
        if tuple(cell.strip().upper() for cell in record) == self.columns:
            # Two sheets pasted together: the header again would become a device.
            self.errors.add(
                RowError(line, "", shorten(",".join(record)), "the header again: is this two files in one?")
            )
            return None
        if len(record) > len(self.columns):
            self.errors.add(
                RowError(
                    line,
                    "",
                    shorten(",".join(record)),
                    f"{len(record)} fields; the header has {len(self.columns)} columns",
                )
            )
            return None
        if len(record) < REQUIRED_COLUMNS:
            self.errors.add(
                RowError(
                    line,
                    COLUMNS[len(record)],
                    "",
                    f"{len(record)} fields; at least {REQUIRED_COLUMNS} are required",
                )
            )
            return None
        raw = record + [""] * (len(COLUMNS) - len(record))
        problems = self._check_ascii(raw, line)  # before stripping: a no-break space is not ASCII
        values = [cell.strip() for cell in raw]
        key, hardware_id, name, category_a, category_b = values
        if problems:
            for problem in problems:
                self.errors.add(problem)
            return None
        ok = True
        for column, value in zip(COLUMNS, values, strict=True):
            if "\n" in value or "\r" in value:
                self.errors.add(
                    RowError(
                        line,
                        column,
                        shorten(value),
                        "a line break inside a quoted value: values are one line",
                    )
                )
                ok = False
        if not ok:
            return None
        for column, value, check in (
            ("REGISTRATION_KEY", key, _check_key),
            ("HARDWARE_ID", hardware_id, _check_hardware_id),
            ("DEVICE_NAME", name, _check_name),
            ("CATEGORY_A", category_a, _check_category),
            ("CATEGORY_B", category_b, _check_category),
        ):
            reason = check(value)
            if reason:
                self.errors.add(RowError(line, column, shorten(value), reason))
                ok = False
        if not ok:
            return None
        weak = weak_key(key, hardware_id)
        if weak:
            self.warnings.add(RowError(line, "REGISTRATION_KEY", "", weak))
        return BulkRow(line, key, hardware_id, name or hardware_id, category_a, category_b)

    def _check_ascii(self, values: list[str], line: int) -> list[RowError]:
        return [
            RowError(line, column, shorten(value), "only ASCII is accepted")
            for column, value in zip(COLUMNS, values, strict=True)
            if not value.isascii()
        ]


_EMPTY = [""] * len(COLUMNS)


def _lf_lines(block: bytes) -> Iterator[bytes]:
    """A block's lines, each ending at LF (as a line reader's: CR alone ends none)."""
    start = 0
    while start < len(block):
        end = block.find(b"\n", start) + 1 or len(block)
        yield block[start:end]
        start = end


def weak_key(key: str, hardware_id: str) -> str:
    """Why a registration key is guessable, or "": short, the hardware ID itself, or
    derived from a MAC address (a MAC's first 6 hex digits name its vendor, publicly)."""
    if len(key) < WEAK_KEY_LENGTH:
        return f"a short registration key ({len(key)} characters): guessable; use 16 random hex digits"
    plain_key, plain_id = _without_mac_separators(key), _without_mac_separators(hardware_id)
    if plain_key[:6] == plain_id[:6]:  # else neither equal nor of one vendor (cheap: once per row)
        if plain_key == plain_id:
            return "the registration key is the hardware ID: guessable by anyone who reads the ID"
        if _HEX.fullmatch(plain_key) and _HEX.fullmatch(plain_id):
            return "the registration key looks derived from a MAC address: guessable; use random keys"
    if _MAC.fullmatch(key):
        return "the registration key looks derived from a MAC address: guessable; use random keys"
    return ""


def _without_mac_separators(value: str) -> str:
    if ":" in value or "." in value or "-" in value:
        value = _MAC_SEPARATORS.sub("", value)
    return value.lower()


def _check_delimiter(first_line: str) -> None:
    """A header separated by semicolons, tabs or bars, quoted or not (LibreOffice quotes
    every cell), is named before the CSV parser fails on it with a puzzling reason."""
    if "," in first_line or "REGISTRATION_KEY" not in first_line.upper():
        return
    for delimiter, what in DELIMITERS.items():
        if delimiter in first_line:
            raise _OtherDelimiter(what)


def _looks_utf16(raw: bytes) -> bool:
    """UTF-16 text without a byte-order mark: every other byte of ASCII is NUL."""
    half = len(raw) // 2
    odd, even = raw[1::2].count(0), raw[0::2].count(0)
    return half >= 4 and ((odd >= half - 1 and even <= 1) or (even >= half - 1 and odd <= 1))


def _without_empty_tail(record: list[str], keep: int = 0) -> list[str]:
    """The record without the empty fields a trailing delimiter leaves (``...,,`` at the
    end of every line), keeping at least ``keep`` fields."""
    end = len(record)
    while end > keep and not record[end - 1].strip():
        end -= 1
    return record[:end]


def _spreadsheet_number(value: str) -> str:
    if SCIENTIFIC.fullmatch(value):
        return (
            "a number a spreadsheet wrote in scientific notation (its digits are lost): "
            "format the column as text and export again"
        )
    return ""


def _check_key(value: str) -> str:
    if not value:
        return "a registration key is required"
    if damaged := _spreadsheet_number(value):
        return damaged
    if len(value) > KEY_MAX:
        return f"longer than {KEY_MAX} characters"
    if not _KEY.fullmatch(value):
        return "only printable ASCII without spaces"
    return ""


def _check_hardware_id(value: str) -> str:
    if damaged := _spreadsheet_number(value):
        return damaged
    try:
        validate_hardware_id(value, "HARDWARE_ID", assigned=False)  # a CSV lists IDs, assigns none
    except InvalidInput as exc:
        return exc.message.removeprefix("HARDWARE_ID ")
    return ""


def _formula(value: str) -> str:
    if value.startswith(FORMULA_STARTS):
        return f"starts with {value[0]!r}: a spreadsheet would run it as a formula"
    return ""


def _check_name(value: str) -> str:
    if not value:
        return ""  # the device name defaults to the hardware ID
    formula = _formula(value)
    if formula:
        return formula
    try:
        validate_device_name(value, "DEVICE_NAME")
    except InvalidInput as exc:
        return exc.message.removeprefix("DEVICE_NAME ")
    return ""


def category_problem(value: str) -> str:
    """Why ``value`` is no category (CATEGORY_A or CATEGORY_B: at most 100 printable
    characters, not starting as a spreadsheet formula), or "" when it is one."""
    return _check_category(value)


def _check_category(value: str) -> str:
    if len(value) > CATEGORY_MAX:
        return f"longer than {CATEGORY_MAX} characters"
    if not value.isprintable():
        return "only printable characters (no line breaks or control characters)"
    return _formula(value)
