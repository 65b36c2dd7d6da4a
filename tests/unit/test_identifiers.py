"""Hardware IDs, device names and codes: docs "Names and limits" and "Auto registration"."""

from __future__ import annotations

import re
import secrets
import time
import uuid

import pytest

from shared.domain.identifiers import (
    DEVICE_NAME_MAX,
    HARDWARE_ID_MAX,
    family_stems,
    fingerprint_identifiers,
    hardware_id_stem,
    is_placeholder_identifier,
    is_uuid,
    new_code,
    new_request_id,
    next_free_index,
    normalize_code,
    request_id_age_seconds,
    validate_device_name,
    validate_hardware_id,
)
from shared.errors import InvalidInput

UPPER_UUID = re.compile(r"[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}")
CODE = "2513F28C-13AD-BEBE-7329-D70C2F5F34A6"
HARDWARE_CHARSET = "charset=[A-Za-z0-9._-]"
NAME_CHARSET = "charset=[A-Za-z0-9 _.-]"


# ---------------------------------------------------------------- hardware IDs


@pytest.mark.parametrize("value", ["b827eb8905e5", "B827EB8905E5", "dev_01.rack-7", "x", "a" * 64])
def test_a_valid_hardware_id_is_returned_unchanged(value: str) -> None:
    assert validate_hardware_id(value) == value


def test_the_hardware_id_limit_is_64_characters() -> None:
    assert HARDWARE_ID_MAX == 64
    assert validate_hardware_id("a" * 64) == "a" * 64
    with pytest.raises(InvalidInput) as refused:
        validate_hardware_id("a" * 65)
    assert (refused.value.field, refused.value.rule) == ("hardware_id", "max_length=64")
    assert "65" in refused.value.message and "64" in refused.value.message


@pytest.mark.parametrize("value", ["", None])
def test_a_missing_hardware_id_is_required(value: object) -> None:
    with pytest.raises(InvalidInput) as refused:
        validate_hardware_id(value)
    assert (refused.value.field, refused.value.rule) == ("hardware_id", "required")


@pytest.mark.parametrize("value", [123, b"b827eb8905e5", ["b827eb8905e5"]])
def test_a_hardware_id_that_is_not_a_string_is_refused_as_such(value: object) -> None:
    with pytest.raises(InvalidInput) as refused:
        validate_hardware_id(value)
    assert (refused.value.field, refused.value.rule) == ("hardware_id", "type=string")


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("b827eb8905é5", id="non-ascii"),
        pytest.param("b8:27:eb:89:05:e5", id="colon"),
        pytest.param("b827 eb8905e5", id="space"),
        pytest.param("b827eb8905e5/", id="slash"),
        pytest.param("b827eb8905e5,", id="comma"),
        pytest.param("b827eb\t8905e5", id="inner-tab"),
    ],
)
def test_a_hardware_id_outside_the_charset_is_refused(value: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        validate_hardware_id(value)
    assert (refused.value.field, refused.value.rule) == ("hardware_id", HARDWARE_CHARSET)


@pytest.mark.parametrize("value", ["b827eb8905e5\n", "\tb827eb8905e5", "b827eb8905e5\r\n", " b827eb8905e5 "])
def test_surrounding_whitespace_of_a_hardware_id_is_trimmed(value: str) -> None:
    """docs/domain.md#identity-rules: trimmed on every path, as the CSV reader
    does, so a device that read its ID from a file ("H\\n") is the device "H"."""
    assert validate_hardware_id(value) == "b827eb8905e5"


def test_hardware_id_errors_name_the_callers_field() -> None:
    with pytest.raises(InvalidInput) as refused:
        validate_hardware_id("b8:27", field="rows[3].hardware_id")
    assert refused.value.field == "rows[3].hardware_id"


# ---------------------------------------------------------------- device names


def test_a_device_name_of_100_characters_is_accepted_and_101_refused() -> None:
    assert DEVICE_NAME_MAX == 100
    assert validate_device_name("n" * 100) == "n" * 100
    with pytest.raises(InvalidInput) as refused:
        validate_device_name("n" * 101)
    assert (refused.value.field, refused.value.rule) == ("name", "max_length=100")


@pytest.mark.parametrize("value", ["Example Device", "pump_7.rack-2", "ABC xyz 019", "a"])
def test_a_device_name_of_letters_digits_space_underscore_dash_dot_is_accepted(value: str) -> None:
    assert validate_device_name(value) == value


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("Pumpe Süd", id="non-ascii"),
        pytest.param("pump/7", id="slash"),
        pytest.param("pump,7", id="comma"),
        pytest.param("pump:7", id="colon"),
        pytest.param("pump\t7", id="tab"),
    ],
)
def test_a_device_name_outside_the_charset_is_refused(value: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        validate_device_name(value)
    assert (refused.value.field, refused.value.rule) == ("name", NAME_CHARSET)


def test_surrounding_whitespace_of_a_device_name_is_trimmed() -> None:
    assert validate_device_name("pump 7\n") == "pump 7"
    with pytest.raises(InvalidInput) as refused:
        validate_device_name("   ")
    assert refused.value.rule == "required"


@pytest.mark.parametrize(("value", "rule"), [("", "required"), (None, "required"), (7, "type=string")])
def test_a_missing_or_non_string_device_name_is_refused(value: object, rule: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        validate_device_name(value)
    assert (refused.value.field, refused.value.rule) == ("name", rule)


# ---------------------------------------------------------------- stems and indexes


@pytest.mark.parametrize(
    ("hardware_id", "stem"),
    [
        ("abc-5", "abc"),
        ("abc", "abc"),
        ("a-b-12", "a-b"),
        ("abc-", "abc-"),
        ("abc-x", "abc-x"),
        ("abc-5-1", "abc-5"),
    ],
)
def test_hardware_id_stem_strips_one_index_suffix(hardware_id: str, stem: str) -> None:
    assert hardware_id_stem(hardware_id) == stem


def test_family_stems_of_an_indexed_id() -> None:
    assert family_stems("abc-5") == ("abc", "abc-5")
    assert family_stems("abc") == ("abc", "abc")


@pytest.mark.parametrize("claimed", ["abc", "abc-5", "b827eb8905e5"])
def test_family_stems_cover_the_claim_and_every_indexed_variant(claimed: str) -> None:
    stems = family_stems(claimed)
    colliding = [claimed, *(f"{claimed}-{n}" for n in (1, 2, 10, 199))]
    assert all(hardware_id_stem(hardware_id) in stems for hardware_id in colliding)


def test_next_free_index_starts_at_1() -> None:
    assert next_free_index("H", set()) == "H-1"
    assert next_free_index("H", {"H"}) == "H-1"


def test_next_free_index_is_the_smallest_free_one() -> None:
    # ``taken`` holds lower-case IDs: hardware IDs are unique case-insensitively.
    assert next_free_index("H", {"h", "h-1", "h-3"}) == "H-2"
    assert next_free_index("H", {"h", "h-1", "h-2"}) == "H-3"


def test_next_free_index_of_an_indexed_looking_id_appends_another_index() -> None:
    # A device whose own hardware ID is "H-1" has clones "H-1-1", "H-1-2", ...
    assert next_free_index("H-1", {"h", "h-1", "h-1-1"}) == "H-1-2"


def test_stems_are_lower_case_so_cases_of_one_id_meet() -> None:
    assert hardware_id_stem("B827EB8905E5-2") == hardware_id_stem("b827eb8905e5") == "b827eb8905e5"
    assert family_stems("B827EB8905E5") == ("b827eb8905e5", "b827eb8905e5")


# ---------------------------------------------------------------- codes


def test_a_new_code_is_an_upper_case_uuid_of_36_characters() -> None:
    code = new_code()
    assert len(code) == 36
    assert UPPER_UUID.fullmatch(code)
    assert str(uuid.UUID(code)).upper() == code


def test_new_codes_are_distinct() -> None:
    assert len({new_code() for _ in range(1000)}) == 1000


def test_a_new_code_passes_its_own_normalization() -> None:
    code = new_code()
    assert normalize_code(code) == code


@pytest.mark.parametrize("value", [CODE, CODE.lower(), "2513f28c-13AD-bebe-7329-D70C2F5F34a6"])
def test_normalize_code_accepts_any_case_and_upper_cases(value: str) -> None:
    assert normalize_code(value) == CODE


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(CODE[:-1], id="35-chars"),
        pytest.param(CODE + "0", id="37-chars"),
        pytest.param(CODE.replace("-", ""), id="no-dashes"),
        pytest.param("{" + CODE + "}", id="braces"),
        pytest.param("G" + CODE[1:], id="non-hex"),
        pytest.param(CODE.replace("-", "_"), id="wrong-separator"),
        pytest.param(" " + CODE[1:], id="leading-space"),
    ],
)
def test_normalize_code_refuses_anything_but_the_uuid_form(value: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        normalize_code(value)
    assert (refused.value.field, refused.value.rule) == ("bulk_identification_code", "format=uuid")


@pytest.mark.parametrize("value", ["", None, 42])
def test_normalize_code_requires_a_string(value: object) -> None:
    with pytest.raises(InvalidInput) as refused:
        normalize_code(value, field="product_code")
    assert (refused.value.field, refused.value.rule) == ("product_code", "required")


# ---------------------------------------------------------------- request IDs


def test_a_new_request_id_is_a_version_7_uuid() -> None:
    parsed = uuid.UUID(new_request_id())
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122


def test_a_new_request_id_is_about_0_seconds_old() -> None:
    age = request_id_age_seconds(new_request_id())
    assert age is not None
    assert abs(age) < 2


def test_request_id_age_reads_the_issue_time() -> None:
    millis = int(time.time() * 1000) - 3_600_000  # issued an hour ago
    raw = bytearray(millis.to_bytes(6, "big") + secrets.token_bytes(10))
    raw[6] = (raw[6] & 0x0F) | 0x70
    raw[8] = (raw[8] & 0x3F) | 0x80
    age = request_id_age_seconds(str(uuid.UUID(bytes=bytes(raw))))
    assert age is not None
    assert 3599 < age < 3610


def test_request_ids_are_distinct() -> None:
    assert len({new_request_id() for _ in range(1000)}) == 1000


@pytest.mark.parametrize("value", [str(uuid.uuid4()), "garbage", "", CODE])
def test_request_id_age_is_unknown_for_anything_but_version_7(value: str) -> None:
    assert request_id_age_seconds(value) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (CODE, True),
        (CODE.lower(), True),
        ("not-a-uuid", False),
        ("", False),
        # Spellings Python's uuid.UUID takes but Postgres refuses: never an ID here.
        ("{" + CODE + "}", False),
        ("urn:uuid:" + CODE, False),
        (CODE + "-", False),
        (CODE.replace("-", ""), False),
        ("-" * 36, False),
        ("f" * 36, False),
        (CODE + "\n", False),
    ],
)
def test_is_uuid(value: str, expected: bool) -> None:
    assert is_uuid(value) is expected


def test_new_codes_and_request_ids_are_uuids() -> None:
    assert is_uuid(new_code())
    assert is_uuid(new_request_id())


def test_a_code_s_surrounding_whitespace_is_trimmed() -> None:
    assert normalize_code(" " + CODE.lower() + "\n") == CODE


def test_a_request_id_carries_a_tag_only_its_deployment_can_make() -> None:
    """docs/device-api.md: a never-issued request ID is 'unknown' at once, with no
    registry write per request to remember the issued ones."""
    from shared.domain.credentials import Keyring
    from shared.domain.identifiers import request_id_is_issued

    keyring = Keyring(b"k" * 32)
    other = Keyring(b"o" * 32)
    issued = new_request_id(keyring.request_tag)
    assert uuid.UUID(issued).version == 7
    assert request_id_is_issued(issued, keyring.request_tag)
    assert not request_id_is_issued(issued, other.request_tag)
    assert not request_id_is_issued("01ffffff-ffff-7fff-bfff-ffffffffffff", keyring.request_tag)
    tampered = issued[:-1] + ("0" if issued[-1] != "0" else "1")
    assert not request_id_is_issued(tampered, keyring.request_tag)
    assert not request_id_is_issued("not-an-id", keyring.request_tag)
    assert len({new_request_id(keyring.request_tag) for _ in range(1000)}) == 1000


def test_an_assigned_index_is_accepted_whatever_the_stem_s_length() -> None:
    """A clone of a 64-character hardware ID is told to adopt H-1 (66 characters): every
    later call of that device must accept it (docs/domain.md#identity-rules)."""
    stem = "a" * HARDWARE_ID_MAX
    assert validate_hardware_id(f"{stem}-1") == f"{stem}-1"
    assert validate_hardware_id(f"{stem}-1-2") == f"{stem}-1-2"
    for refused in (
        "a" * (HARDWARE_ID_MAX + 1),
        f"{stem}a-1",
        f"{stem}-0",
        f"{stem}-x",
        f"{stem}-1234567890",
    ):
        with pytest.raises(InvalidInput):
            validate_hardware_id(refused)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "00:00:00:00:00:00",
        "00-00-00-00-00-00",
        "000000000000",
        "0000.0000.0000",
        "FF:FF:FF:FF:FF:FF",
        "ff-ff-ff-ff-ff-ff",
        "ffffffffffff",
        "0000000000000000",
        "02:00:00:00:00:00",
        "Unknown",
        "N/A",
        "To Be Filled By O.E.M.",
    ],
)
def test_well_known_placeholder_identifiers_tell_no_board_from_another(value: str) -> None:
    assert is_placeholder_identifier(value)


@pytest.mark.parametrize("value", ["00000000a3b1c2d4", "b8:27:eb:89:05:e5", "02:00:00:00:00:01", "cpu-1"])
def test_real_identifiers_are_not_placeholders(value: str) -> None:
    assert not is_placeholder_identifier(value)


def test_a_fingerprint_made_only_of_placeholders_is_no_fingerprint() -> None:
    assert fingerprint_identifiers("0000000000000000", "00:00:00:00:00:00") == ()
    assert fingerprint_identifiers("", "FF-FF-FF-FF-FF-FF") == ()
    # One real identifier: every sent one counts, as before (stored digests stay valid).
    assert fingerprint_identifiers("0000000000000000", "B8:27:EB:89:05:E5 ") == (
        "0000000000000000",
        "b8:27:eb:89:05:e5",
    )
