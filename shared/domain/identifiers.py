"""Hardware IDs, device names, codes: validation and the duplicate-index rule."""

from __future__ import annotations

import hmac
import re
import secrets
import time
import uuid
from collections.abc import Callable, Container

from shared.errors import InvalidInput

HARDWARE_ID_MAX = 64
DEVICE_NAME_MAX = 100
_CANONICAL_UUID = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")
_HARDWARE_ID = re.compile(r"^[A-Za-z0-9._-]+$")
_DEVICE_NAME = re.compile(r"^[A-Za-z0-9 _.-]+$")
_INDEX_SUFFIX = re.compile(r"-[0-9]+$")
# Every index suffix at the end (H-1-1, H-01): mirrors ROOT_SQL (migration 0026).
_INDEX_SUFFIXES = re.compile(r"(-[0-9]+)+$")
_ASSIGNED_INDEX = re.compile(r"(.+)-([1-9][0-9]{0,8})")  # "H-N": what a clone is told to adopt
MAX_INDEX_LEVELS = 3  # H-1-1-1: a clone of a clone of a clone
_CODE = re.compile(r"^[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}$")


def _validate_text(
    value: object, field: str, limit: int, pattern: re.Pattern[str], allowed: str, rule: str
) -> str:
    """A required string of at most ``limit`` ASCII characters matching ``pattern``,
    surrounding whitespace trimmed (docs/domain.md#identity-rules: on
    every path, as the CSV reader does; a device reading its ID from a file sends
    ``"b827eb8905e5\\n"``)."""
    if isinstance(value, str):
        value = value.strip()
    if value is None or value == "":
        raise InvalidInput(f"{field} is required", field=field, rule="required")
    if not isinstance(value, str):
        raise InvalidInput(f"{field} must be a string", field=field, rule="type=string")
    if len(value) > limit:
        raise InvalidInput(
            f"{field} is {len(value)} characters; the limit is {limit}",
            field=field,
            rule=f"max_length={limit}",
        )
    if not value.isascii() or not pattern.fullmatch(value):
        raise InvalidInput(f"{field} may hold only {allowed}", field=field, rule=f"charset={rule}")
    return value


def validate_hardware_id(value: object, field: str = "hardware_id", *, assigned: bool = True) -> str:
    """A hardware ID: 1-64 ASCII letters, digits, '.', '_' or '-' (a MAC without colons
    fits). With ``assigned`` (the device and operator APIs), also an ID fleetreg may have
    assigned to a clone: a stem of at most 64 characters and up to MAX_INDEX_LEVELS
    index suffixes ``-N`` (a clone of a clone), so that every ID it assigns is accepted by
    every later call of that device, whatever the length of its stem
    (docs/domain.md#identity-rules). A CSV lists IDs and takes none beyond 64.
    """
    if assigned and isinstance(value, str) and len(value.strip()) > HARDWARE_ID_MAX:
        rest, suffixes = value.strip(), ""
        for _ in range(MAX_INDEX_LEVELS):
            indexed = _ASSIGNED_INDEX.fullmatch(rest)
            if indexed is None:
                break
            rest, suffixes = indexed.group(1), f"-{indexed.group(2)}{suffixes}"
            if len(rest) <= HARDWARE_ID_MAX:
                return _validate_hardware_id_text(rest, field) + suffixes
    return _validate_hardware_id_text(value, field)


def _validate_hardware_id_text(value: object, field: str) -> str:
    return _validate_text(
        value,
        field,
        HARDWARE_ID_MAX,
        _HARDWARE_ID,
        "ASCII letters, digits, '.', '_' and '-'",
        "[A-Za-z0-9._-]",
    )


def validate_device_name(value: object, field: str = "name") -> str:
    """A device name: 1-100 ASCII letters, digits, space, '_', '-' or '.'."""
    return _validate_text(
        value,
        field,
        DEVICE_NAME_MAX,
        _DEVICE_NAME,
        "ASCII letters, digits, space, '_', '-' and '.'",
        "[A-Za-z0-9 _.-]",
    )


def hardware_id_stem(hardware_id: str) -> str:
    """The hardware ID without an index suffix, in lower case (``B8-3`` -> ``b8``): hardware
    IDs are unique case-insensitively; mirrors the database column."""
    return _INDEX_SUFFIX.sub("", hardware_id).lower()


def hardware_id_root(hardware_id: str, *, lower: bool = True) -> str:
    """The hardware ID without any of its index suffixes, in lower case unless ``lower`` is
    False (``H-1-1`` -> ``h``, ``H-01`` -> ``h``): every suffixed spelling of a family head
    shares its root, so the creations a source made under a head are found by the root's
    index (migration 0026), then kept by :func:`is_spelling_of`. An ID made of index
    suffixes only (``-1``) has the root ``""``. Mirrors ``ROOT_SQL``."""
    root = _INDEX_SUFFIXES.sub("", hardware_id)
    return root.lower() if lower else root


def hardware_id_ancestors(hardware_id: str) -> list[str]:
    """The IDs one, two, ... index suffix levels up, nearest first, in lower case
    (``H-1-01`` -> ``["h-1", "h"]``; ``H`` -> ``[]``): the devices that may be a claim's
    family head (:meth:`shared.domain.dedup.Family.head`). An ID with no ``-N`` suffix has
    none, so a storm of such claims loads nothing for them."""
    ancestors = []
    rest = hardware_id.lower()
    while (parent := _INDEX_SUFFIX.sub("", rest)) != rest and parent:
        ancestors.append(parent)
        rest = parent
    return ancestors


def is_spelling_of(claimed: str, key: str) -> bool:
    """Whether the hardware ID ``claimed`` is ``key`` or ``key`` with index suffixes
    (``key-N``, ``key-N-M``), in any case: what one source created under a family head."""
    claimed, key = claimed.lower(), key.lower()
    if claimed == key:
        return True
    return claimed.startswith(key) and _INDEX_SUFFIXES.fullmatch(claimed[len(key) :]) is not None


# The same in SQL: immutable (lower and regexp_replace with a constant pattern), so that it
# can be indexed (devices_created_root, migration 0026); a query must spell it exactly so.
ROOT_SQL = "regexp_replace(lower(claimed_hardware_id), '(-[0-9]+)+$', '')"


def family_stems(hardware_id: str) -> tuple[str, str]:
    """The stems under which every ID that can collide with a claim of ``hardware_id`` is
    stored: the claim itself shares ``stem(H)``, its indexed variants ``H-N`` have stem ``H``."""
    return hardware_id_stem(hardware_id), hardware_id.lower()


def next_free_index(hardware_id: str, taken: Container[str]) -> str:
    """The smallest ``H-N`` (N >= 1) not taken; a literal ``H-1`` already taken is skipped.
    ``taken`` holds lower-case IDs (hardware IDs are unique case-insensitively)."""
    index = 1
    while f"{hardware_id}-{index}".lower() in taken:
        index += 1
    return f"{hardware_id}-{index}"


def new_code() -> str:
    """A Bulk Identification Code or product code: 128 random bits in upper-case UUID form."""
    return str(uuid.UUID(bytes=secrets.token_bytes(16))).upper()


def normalize_code(value: object, field: str = "bulk_identification_code") -> str:
    """A Bulk Identification Code in canonical (upper-case) form, whitespace trimmed."""
    if not isinstance(value, str) or value.strip() == "":
        raise InvalidInput(f"{field} is required", field=field, rule="required")
    code = value.strip().upper()
    if len(code) != 36 or not _CODE.fullmatch(code):
        raise InvalidInput(
            f"{field} must be 36 characters in UUID form (8-4-4-4-12 hex digits)",
            field=field,
            rule="format=uuid",
        )
    return code


# A request ID's last 4 bytes: a keyed tag of its first 12 (time and random bits), so
# that an ID this service never issued is told apart without a registry lookup.
RequestTag = Callable[[bytes], bytes]


def new_request_id(tag: RequestTag | None = None) -> str:
    """A time-ordered UUID (version 7 layout): its first 48 bits are the issue time in ms,
    so a lookup of an old unknown request can answer 'unknown' instead of 'pending'.
    With ``tag`` (``Keyring.request_tag``), its last 32 bits are that tag of the first
    96 (42 random bits remain beside the time)."""
    millis = int(time.time() * 1000)
    raw = bytearray(millis.to_bytes(6, "big") + secrets.token_bytes(10))
    raw[6] = (raw[6] & 0x0F) | 0x70
    raw[8] = (raw[8] & 0x3F) | 0x80
    if tag is not None:
        raw[12:16] = tag(bytes(raw[:12]))[:4]
    return str(uuid.UUID(bytes=bytes(raw)))


def request_id_is_issued(request_id: str, tag: RequestTag) -> bool:
    """Whether ``request_id`` carries this deployment's tag (see :func:`new_request_id`)."""
    if not is_uuid(request_id):
        return False
    raw = uuid.UUID(request_id).bytes
    return hmac.compare_digest(raw[12:16], tag(raw[:12])[:4])


def request_id_age_seconds(request_id: str) -> float | None:
    if not is_uuid(request_id):  # canonical form only: it goes to Postgres as it is
        return None
    parsed = uuid.UUID(request_id)
    if parsed.version != 7:
        return None
    millis = int.from_bytes(parsed.bytes[:6], "big")
    return time.time() - millis / 1000


def is_uuid(value: object) -> bool:
    """``value`` is a UUID in its canonical 8-4-4-4-12 hex form (either case).

    Stricter than ``uuid.UUID``, which also takes braces, ``urn:uuid:`` and stray
    hyphens: Postgres refuses those spellings, so an ID that passes here never makes
    a query fail (a 500, and the caller's text in the database's log)."""
    return isinstance(value, str) and _CANONICAL_UUID.fullmatch(value) is not None


# Values a board reports when its identifier was never programmed or cannot be read: an
# unprogrammed MAC or eFuse (all zeros, all ones), Android's MAC for apps (02:00:00:00:00:00),
# a firmware's filler text. Compared lower-case with separators removed.
_PLACEHOLDER_WORDS = frozenset(
    {
        "0",
        "unknown",
        "none",
        "null",
        "nil",
        "n/a",
        "na",
        "undefined",
        "default",
        "defaultstring",
        "notavailable",
        "notspecified",
        "notapplicable",
        "tobefilledbyoem",
        "020000000000",
    }
)
_SEPARATORS = re.compile(r"[\s:\-._]")


def is_placeholder_identifier(value: str) -> bool:
    """Whether a reported system identifier (CPU ID, MAC) is a well-known placeholder rather
    than the board's own: empty, only zeros or only Fs in any separator form
    (``00:00:00:00:00:00``, ``FF-FF-FF-FF-FF-FF``, ``0000000000000000``), Android's
    ``02:00:00:00:00:00``, or a filler word (``unknown``, ``none``, ``n/a``, ...). Every
    board of one image reports it alike, so it tells no board from another."""
    text = value.strip().lower()
    compact = _SEPARATORS.sub("", text)
    if not compact:
        return True
    if set(compact) <= {"0"} or set(compact) <= {"f"}:
        return True
    return compact in _PLACEHOLDER_WORDS or text in _PLACEHOLDER_WORDS


def fingerprint_identifiers(*identifiers: str) -> tuple[str, ...]:
    """The identifiers a fingerprint is made of, trimmed and lower-case: none when every one
    is a placeholder (:func:`is_placeholder_identifier`), so that boards of one image with
    unprogrammed identifiers have NO fingerprint (each is then recognised before "ready"
    only by its Idempotency-Key: clones ``H-1``, ``H-2``, ... rather than one device). With
    at least one real identifier, every non-empty one counts, placeholders included (the
    digest of such a device stays what it was)."""
    present = tuple(i.strip().lower() for i in identifiers if i and i.strip())
    if all(is_placeholder_identifier(i) for i in present):
        return ()
    return present
