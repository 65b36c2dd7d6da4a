"""Device search: the filters, sort orders and page cursors an operator may ask for,
validated from a query string; and the spreadsheet-safe form of an exported value.

Pure rules (no registry): the repository (shared/db/devices.py) turns a
:class:`DeviceSearch` into SQL from a fixed set of fragments, so nothing an operator
types ever becomes SQL text. Every refusal is an :class:`InvalidInput` naming the
query parameter.

Matching rules:

* ``hardware_id`` is exact and case-insensitive (hardware IDs are unique in an account
  case-insensitively: migration 0008, docs/domain.md#identity-rules).
* ``hardware_id_prefix`` and ``name_prefix`` are case-insensitive prefixes, compared
  byte by byte (collation "C") as a range ``prefix <= lower(value) < next(prefix)``: no
  LIKE pattern is built, so ``%``, ``_`` and ``\\`` in a prefix match only themselves,
  and the range uses a b-tree index whatever the database's locale.
* ``category_a`` and ``category_b`` are exact (case-sensitive, as stored from the CSV).
* Time ranges: ``*_since`` is inclusive, ``*_before`` exclusive (ISO 8601; a time
  without an offset is UTC).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, TypeVar

from shared.domain.identifiers import is_uuid, validate_hardware_id
from shared.errors import InvalidInput

DEVICE_STATES = ("preregistered", "registered", "online", "offline", "disabled")
LIFECYCLES = ("preregistered", "registered", "provisioned")
C = TypeVar("C", bound=str)
SortKey = Literal["id", "hardware_id", "name", "created_at", "registered_at", "last_seen_at"]
SORT_KEYS: tuple[SortKey, ...] = ("id", "hardware_id", "name", "created_at", "registered_at", "last_seen_at")
# Sort keys whose value may be missing (never registered, never seen): such devices sort
# as the earliest time (first ascending, last descending).
TIME_SORT_KEYS = ("created_at", "registered_at", "last_seen_at")
Order = Literal["asc", "desc"]
ORDERS: tuple[Order, ...] = ("asc", "desc")

PREFIX_MAX = 128  # longer than any hardware ID fleetreg assigns (a 64-character stem and -N suffixes)
CATEGORY_MAX = 100  # shared.domain.bulk_csv.CATEGORY_MAX: a longer one matches nothing
CURSOR_MAX = 512
_HARDWARE_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
_NAME_CHARS = _HARDWARE_ID_CHARS | {" "}

# The query parameters of a search, and those a listing adds for its pages.
FILTERS = (
    "state",
    "lifecycle",
    "product_id",
    "registration_id",
    "hardware_id",
    "hardware_id_prefix",
    "name_prefix",
    "category_a",
    "category_b",
    "registered_since",
    "registered_before",
    "seen_since",
    "seen_before",
)
SEARCH_PARAMETERS = (*FILTERS, "sort", "order")
PAGE_PARAMETERS = ("limit", "after")


@dataclass(frozen=True)
class Prefix:
    """A case-insensitive prefix as a half-open range of lower-case text: ``low`` <= value <
    ``high`` in byte order. ``high`` is ``low`` with its last character's code point
    plus one (prefix characters are ASCII, so it always exists)."""

    low: str
    high: str

    @classmethod
    def of(cls, text: str) -> Prefix:
        low = text.lower()
        return cls(low, low[:-1] + chr(ord(low[-1]) + 1))


@dataclass(frozen=True)
class Cursor:
    """Where a page ends: the sort key's value of its last device (lower-case text, a time,
    or None: never registered or seen) and that device's ID, the tie-break."""

    key: str | datetime | None
    id: str


@dataclass(frozen=True)
class DeviceSearch:
    """Validated filters (None: not filtered) and a sort order."""

    state: str | None = None
    lifecycle: str | None = None
    product_id: str | None = None
    registration_id: str | None = None
    hardware_id: str | None = None
    hardware_id_prefix: Prefix | None = None
    name_prefix: Prefix | None = None
    category_a: str | None = None
    category_b: str | None = None
    registered_since: datetime | None = None
    registered_before: datetime | None = None
    seen_since: datetime | None = None
    seen_before: datetime | None = None
    sort: SortKey = "id"
    order: Order = "asc"


# ---------------------------------------------------------------- parsing a query


def _text(query: Mapping[str, str], name: str) -> str | None:
    """A parameter's value; empty is not given (as every listing of the API treats it).
    A NUL or other control character is refused: no stored value holds one."""
    value = query.get(name)
    if not value:
        return None
    if not value.isprintable():
        raise InvalidInput(f"{name} may not hold control characters", field=name, rule="charset=printable")
    return value


def _choice(query: Mapping[str, str], name: str, allowed: tuple[C, ...]) -> C | None:
    """An optional parameter that must be one of ``allowed``, typed as they are."""
    value = _text(query, name)
    if value is None:
        return None
    if value not in allowed:
        raise InvalidInput(f"{name} must be one of {', '.join(allowed)}", field=name, rule="enum")
    return allowed[allowed.index(value)]  # the allowed item itself: its Literal type, no cast


def _uuid(query: Mapping[str, str], name: str) -> str | None:
    value = _text(query, name)
    if value is not None and not is_uuid(value):
        raise InvalidInput(f"{name} must be an ID", field=name, rule="format=uuid")
    return value.lower() if value is not None else None


def _prefix(query: Mapping[str, str], name: str, chars: frozenset[str], allowed: str) -> Prefix | None:
    value = _text(query, name)
    if value is None:
        return None
    if len(value) > PREFIX_MAX:
        raise InvalidInput(
            f"{name} is {len(value)} characters; the limit is {PREFIX_MAX}",
            field=name,
            rule=f"max_length={PREFIX_MAX}",
        )
    if not set(value) <= chars:
        raise InvalidInput(f"{name} may hold only {allowed}", field=name, rule="charset")
    return Prefix.of(value)


def _category(query: Mapping[str, str], name: str) -> str | None:
    value = _text(query, name)
    if value is None:
        return None
    if len(value) > CATEGORY_MAX or not value.isascii():
        raise InvalidInput(
            f"{name} must be up to {CATEGORY_MAX} printable ASCII characters",
            field=name,
            rule=f"max_length={CATEGORY_MAX}",
        )
    return value


def parse_time(value: str, name: str) -> datetime:
    """An ISO 8601 time (UTC when it has no offset), as an aware UTC datetime."""
    if not value.isprintable():  # fromisoformat lets some control characters through
        raise InvalidInput(f"{name} must be an ISO 8601 time", field=name, rule="format=date-time")
    try:
        when = datetime.fromisoformat(value)
        return (when if when.tzinfo else when.replace(tzinfo=UTC)).astimezone(UTC)
    except ValueError as exc:
        raise InvalidInput(f"{name} must be an ISO 8601 time", field=name, rule="format=date-time") from exc
    except OverflowError as exc:  # e.g. year 9999 with a negative offset: past what a time can hold
        raise InvalidInput(
            f"{name} is out of range: years 1 to 9999 in UTC", field=name, rule="range=date-time"
        ) from exc


def _time(query: Mapping[str, str], name: str) -> datetime | None:
    value = _text(query, name)
    return parse_time(value, name) if value is not None else None


def parse_search(query: Mapping[str, str]) -> DeviceSearch:
    """The search a query asks for (unknown parameters are the caller's to refuse).

    Raises InvalidInput naming the parameter: a value outside its enum, an ID that is
    not a UUID, a hardware ID or prefix outside the hardware-ID characters, a name
    prefix outside the device-name characters, a category longer than 100 characters
    or not ASCII, a time that is not ISO 8601, a control character anywhere."""
    hardware_id = _text(query, "hardware_id")
    return DeviceSearch(
        state=_choice(query, "state", DEVICE_STATES),
        lifecycle=_choice(query, "lifecycle", LIFECYCLES),
        product_id=_uuid(query, "product_id"),
        registration_id=_uuid(query, "registration_id"),
        hardware_id=validate_hardware_id(hardware_id) if hardware_id is not None else None,
        hardware_id_prefix=_prefix(
            query, "hardware_id_prefix", _HARDWARE_ID_CHARS, "ASCII letters, digits, '.', '_' and '-'"
        ),
        name_prefix=_prefix(
            query, "name_prefix", _NAME_CHARS, "ASCII letters, digits, space, '.', '_' and '-'"
        ),
        category_a=_category(query, "category_a"),
        category_b=_category(query, "category_b"),
        registered_since=_time(query, "registered_since"),
        registered_before=_time(query, "registered_before"),
        seen_since=_time(query, "seen_since"),
        seen_before=_time(query, "seen_before"),
        sort=_choice(query, "sort", SORT_KEYS) or "id",
        order=_choice(query, "order", ORDERS) or "asc",
    )


# ---------------------------------------------------------------- page cursors


def sort_value(
    sort: SortKey,
    *,
    device_id: str,
    hardware_id: str,
    name: str,
    created_at: datetime,
    registered_at: datetime | None,
    last_seen_at: datetime | None,
) -> str | datetime | None:
    """A device's value of a sort key, as the registry compares it (text lower-cased;
    hardware IDs and names are ASCII, so Python's and Postgres's lower() agree)."""
    values: dict[str, str | datetime | None] = {
        "id": device_id,
        "hardware_id": hardware_id.lower(),
        "name": name.lower(),
        "created_at": created_at,
        "registered_at": registered_at,
        "last_seen_at": last_seen_at,
    }
    return values[sort]


def encode_cursor(search: DeviceSearch, cursor: Cursor) -> str:
    """The opaque ``next_after`` of a page. In ID order it is the last ID itself (as it has
    always been); otherwise base64url of a small JSON document naming the sort, the order,
    the key and the ID, so that a cursor of another sort is recognised and refused."""
    if search.sort == "id":
        return cursor.id
    key = cursor.key.isoformat() if isinstance(cursor.key, datetime) else cursor.key
    document = {"s": search.sort, "o": search.order, "k": key, "i": cursor.id}
    return base64.urlsafe_b64encode(json.dumps(document, separators=(",", ":")).encode()).decode().rstrip("=")


def _bad_cursor(why: str) -> InvalidInput:
    return InvalidInput(
        f"after is not a cursor of this listing ({why}): pass the next_after of the previous page "
        "with the same sort and order",
        field="after",
        rule="cursor",
    )


def decode_cursor(search: DeviceSearch, text: str) -> Cursor:
    """The cursor ``encode_cursor`` made for the same sort and order. Anything else (not
    base64 JSON, another sort or order, a key of the wrong type, an ID that is not a UUID)
    is an InvalidInput on ``after``; a cursor only positions a page within the caller's
    own account, so it needs no signature, only this validation."""
    if search.sort == "id":
        if not is_uuid(text):
            raise InvalidInput("after must be a device ID (next_after)", field="after", rule="format=uuid")
        return Cursor(text.lower(), text.lower())
    if len(text) > CURSOR_MAX:
        raise _bad_cursor("too long")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        document = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise _bad_cursor("not readable") from exc
    if not isinstance(document, dict) or set(document) != {"s", "o", "k", "i"}:
        raise _bad_cursor("not readable")
    if document["s"] != search.sort or document["o"] != search.order:
        raise _bad_cursor("made for another sort or order")
    device_id, key = document["i"], document["k"]
    if not isinstance(device_id, str) or not is_uuid(device_id):
        raise _bad_cursor("no device ID")
    if search.sort in TIME_SORT_KEYS:
        if key is None and search.sort != "created_at":
            return Cursor(None, device_id.lower())
        if not isinstance(key, str):
            raise _bad_cursor("no time")
        try:
            return Cursor(parse_time(key, "after"), device_id.lower())
        except InvalidInput as exc:
            raise _bad_cursor("no time") from exc
    if not isinstance(key, str) or len(key) > PREFIX_MAX * 2 or not key.isprintable():
        raise _bad_cursor("no key")
    return Cursor(key, device_id.lower())


# ---------------------------------------------------------------- export


# A value a spreadsheet would read as a formula (or that hides one behind a tab or line
# feed) begins with one of these (OWASP, "CSV Injection").
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r", "\n")


def spreadsheet_safe(value: str) -> str:
    """``value`` as a CSV cell a spreadsheet shows as text: one that starts with ``=``,
    ``+``, ``-``, ``@``, a tab, CR or LF gets a leading apostrophe (``-1234`` ->
    ``'-1234``), as OWASP recommends; every other value is unchanged."""
    return "'" + value if value.startswith(FORMULA_TRIGGERS) else value
