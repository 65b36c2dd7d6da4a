"""Device search rules: what a query may ask for, page cursors, spreadsheet-safe values."""

from __future__ import annotations

import base64
import csv
import io
import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.operator.handlers.devices import ShownDevice
from services.operator.views import devices as views
from shared.db.devices import Device
from shared.domain.device_search import (
    Cursor,
    DeviceSearch,
    Prefix,
    decode_cursor,
    encode_cursor,
    parse_search,
    spreadsheet_safe,
)
from shared.errors import InvalidInput

ID = "5a0c6a1e-7d6b-4c1e-9a43-0d7f4a1b2c3d"


def refused(query: dict[str, str]) -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        parse_search(query)
    return caught.value


def test_every_filter_is_parsed() -> None:
    search = parse_search(
        {
            "state": "online",
            "lifecycle": "provisioned",
            "product_id": ID.upper(),
            "registration_id": ID,
            "hardware_id": " B827EB8905E5 ",
            "hardware_id_prefix": "B827eb",
            "name_prefix": "Kiosk 1",
            "category_a": "Site 7",
            "category_b": "x,y",
            "registered_since": "2026-01-01T00:00:00",
            "registered_before": "2026-02-01T00:00:00+01:00",
            "seen_since": "2026-03-01T00:00:00Z",
            "seen_before": "2026-04-01",
            "sort": "last_seen_at",
            "order": "desc",
        }
    )
    assert search == DeviceSearch(
        state="online",
        lifecycle="provisioned",
        product_id=ID,
        registration_id=ID,
        hardware_id="B827EB8905E5",
        hardware_id_prefix=Prefix("b827eb", "b827ec"),
        name_prefix=Prefix("kiosk 1", "kiosk 2"),
        category_a="Site 7",
        category_b="x,y",
        registered_since=datetime(2026, 1, 1, tzinfo=UTC),
        registered_before=datetime(2026, 1, 31, 23, tzinfo=UTC),
        seen_since=datetime(2026, 3, 1, tzinfo=UTC),
        seen_before=datetime(2026, 4, 1, tzinfo=UTC),
        sort="last_seen_at",
        order="desc",
    )


def test_an_empty_query_is_every_device_in_id_order() -> None:
    assert parse_search({}) == DeviceSearch()
    assert parse_search({"state": "", "category_a": ""}) == DeviceSearch()


@pytest.mark.parametrize(
    ("query", "field", "rule"),
    [
        ({"state": "sleeping"}, "state", "enum"),
        ({"lifecycle": "online"}, "lifecycle", "enum"),
        ({"sort": "password"}, "sort", "enum"),
        ({"sort": "name; DROP TABLE devices"}, "sort", "enum"),
        ({"order": "up"}, "order", "enum"),
        ({"product_id": "42"}, "product_id", "format=uuid"),
        ({"registration_id": "x"}, "registration_id", "format=uuid"),
        ({"hardware_id": "b8:27"}, "hardware_id", "charset=[A-Za-z0-9._-]"),
        ({"hardware_id_prefix": "b8%"}, "hardware_id_prefix", "charset"),
        ({"hardware_id_prefix": "é"}, "hardware_id_prefix", "charset"),
        ({"hardware_id_prefix": "a" * 129}, "hardware_id_prefix", "max_length=128"),
        ({"name_prefix": "Kiosk%"}, "name_prefix", "charset"),
        ({"name_prefix": "Ünïcode"}, "name_prefix", "charset"),
        ({"category_a": "x" * 101}, "category_a", "max_length=100"),
        ({"category_b": "Café"}, "category_b", "max_length=100"),
        ({"category_a": "a\x00b"}, "category_a", "charset=printable"),
        ({"name_prefix": "a\nb"}, "name_prefix", "charset=printable"),
        ({"registered_since": "yesterday"}, "registered_since", "format=date-time"),
        ({"seen_before": "9999-12-31T23:59:59-05:00"}, "seen_before", "range=date-time"),
    ],
)
def test_a_bad_value_is_refused_naming_its_parameter(query: dict[str, str], field: str, rule: str) -> None:
    error = refused(query)
    assert (error.field, error.rule) == (field, rule)


def test_a_prefix_is_a_range_that_holds_exactly_the_values_starting_with_it() -> None:
    # '_' and '.' are literal (no LIKE pattern is built): "ab_" does not match "abc".
    prefix = Prefix.of("AB_")
    inside = ["ab_", "ab_0", "ab_zzz", "ab_-1"]
    outside = ["ab", "abc", "ab`", "aa_", "b"]
    assert all(prefix.low <= v < prefix.high for v in inside)
    assert not any(prefix.low <= v < prefix.high for v in outside)


@given(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._- ", min_size=1, max_size=8), st.text(max_size=8)
)
def test_a_prefix_range_agrees_with_startswith(prefix: str, value: str) -> None:
    bounds = Prefix.of(prefix)
    # byte order of UTF-8 is code point order, as Python compares str
    assert (bounds.low <= value < bounds.high) == value.startswith(prefix.lower())


@pytest.mark.parametrize(
    ("sort", "key"),
    [
        ("hardware_id", "b827eb8905e5"),
        ("name", "kiosk 12"),
        ("created_at", datetime(2026, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)),
        ("registered_at", None),
        ("last_seen_at", datetime(2026, 5, 1, tzinfo=UTC)),
    ],
)
def test_a_cursor_comes_back_as_it_was_made(sort: str, key: str | datetime | None) -> None:
    search = parse_search({"sort": sort, "order": "desc"})
    text = encode_cursor(search, Cursor(key, ID))
    assert decode_cursor(search, text) == Cursor(key, ID)


def test_in_id_order_the_cursor_is_the_last_id() -> None:
    assert encode_cursor(DeviceSearch(), Cursor(ID, ID)) == ID
    assert decode_cursor(DeviceSearch(), ID.upper()) == Cursor(ID, ID)
    with pytest.raises(InvalidInput) as caught:
        decode_cursor(DeviceSearch(), "zzz")
    assert (caught.value.field, caught.value.rule) == ("after", "format=uuid")


def _b64(document: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(document).encode()).decode()


@pytest.mark.parametrize(
    "text",
    [
        "not base64 at all!",
        "x" * 600,
        _b64([1, 2]),
        _b64({"s": "name", "o": "asc", "k": "a", "i": ID}),  # another sort
        _b64({"s": "hardware_id", "o": "desc", "k": "a", "i": ID}),  # another order
        _b64({"s": "hardware_id", "o": "asc", "k": "a", "i": "42"}),
        _b64({"s": "hardware_id", "o": "asc", "k": 7, "i": ID}),
        _b64({"s": "hardware_id", "o": "asc", "k": "a\x00", "i": ID}),
        _b64({"s": "hardware_id", "o": "asc", "k": "a", "i": ID, "x": 1}),
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
        _b64("[" * 10000),
    ],
)
def test_a_cursor_that_is_not_one_of_this_listing_is_refused_on_after(text: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        decode_cursor(parse_search({"sort": "hardware_id"}), text)
    assert (caught.value.field, caught.value.rule) == ("after", "cursor")


def test_a_time_cursor_needs_a_time() -> None:
    for key in ("yesterday", 5, None):
        with pytest.raises(InvalidInput):
            decode_cursor(
                parse_search({"sort": "created_at"}), _b64({"s": "created_at", "o": "asc", "k": key, "i": ID})
            )


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ('=HYPERLINK("http://x")', '\'=HYPERLINK("http://x")'),
        ("+1", "'+1"),
        ("-1234", "'-1234"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tx", "'\tx"),
        ("\rx", "'\rx"),
        ("b827eb8905e5", "b827eb8905e5"),
        ("a-=b", "a-=b"),
        ("", ""),
    ],
)
def test_a_value_a_spreadsheet_would_run_gets_an_apostrophe(value: str, shown: str) -> None:
    assert spreadsheet_safe(value) == shown


def test_an_export_row_has_the_documented_columns_and_is_spreadsheet_safe() -> None:
    now = datetime(2026, 5, 1, tzinfo=UTC)
    device = Device(
        id=ID,
        hardware_id="-b827eb",
        claimed_hardware_id="-b827eb",
        name="Kiosk, lobby",
        category_a='say "hi"',
        category_b="@site",
        lifecycle="provisioned",
        disabled=False,
        product_id=ID,
        registration_id=ID,
        created_at=now - timedelta(days=1),
        registered_at=None,
        provisioned_at=None,
        last_seen_at=now,
        credential_generation=1,
    )
    text = (views.export_header("csv") + views.export_lines([ShownDevice(device, "online")], "csv")).decode()
    assert text.endswith("\r\n")
    header, row = list(csv.reader(io.StringIO(text)))
    assert tuple(header) == views.EXPORT_COLUMNS
    shown = dict(zip(header, row, strict=True))
    assert shown["hardware_id"] == "'-b827eb"
    assert shown["name"] == "Kiosk, lobby"  # quoted by the csv module, read back whole
    assert shown["category_a"] == 'say "hi"'
    assert shown["category_b"] == "'@site"
    assert (shown["disabled"], shown["registered_at"], shown["state"]) == ("false", "", "online")
    assert shown["last_seen_at"] == now.isoformat()
    line = views.export_lines([ShownDevice(device, "online")], "jsonl")
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line)["hardware_id"] == "-b827eb"  # JSON is data, not a spreadsheet: as stored
