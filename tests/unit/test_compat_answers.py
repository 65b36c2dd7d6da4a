"""Every answer of the reference-compatible API satisfies the reference client's parsing
limits, whatever the reasons and values put in it (property tests)."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from services.intake.compat.answers import KEY_WORDS, answer, refused, safe_value
from tests.support.reference_client import read_answer

FORBIDDEN = set(',{}"[]')
texts = st.text(max_size=300)
key_word_soup = st.lists(
    st.sampled_from([*KEY_WORDS, "STATUS", "Secret", ",", '"', "{", "]", " ", "x"]), max_size=30
).map("".join)
values = st.one_of(texts, key_word_soup)


def _has_key_word(value: str) -> bool:
    return any(re.search(rf"\b{re.escape(k)}\b", value, re.IGNORECASE) for k in KEY_WORDS)


@given(values)
def test_a_safe_value_has_no_forbidden_character_and_no_key_word(value: str) -> None:
    safe = safe_value(value)
    assert not FORBIDDEN & set(safe)
    assert not _has_key_word(safe)
    assert safe.isascii() and safe == safe.strip()
    assert len(safe) <= 200


@given(values)
def test_a_refusal_reads_back_as_false_with_its_reason(reason: str) -> None:
    text = refused(reason)
    assert ": " not in text.replace(safe_value(reason), "") and ", " not in text.replace(
        safe_value(reason), ""
    )
    read = read_answer(text)
    assert read == {"status": "false", "reason": safe_value(reason)}


@given(st.lists(values, min_size=1, max_size=4), values)
def test_fields_and_projects_read_back_exactly(fields: list[str], hardware_id: str) -> None:
    projects = ["2513F28C-13AD-BEBE-7329-D70C2F5F34A6", "D8179AB6-803A-493C-B123-0FA5BC10F058"]
    text = answer("true", ("HardwareId", hardware_id), ("uid", "80:00:00:00:00:00:00:02"), projects=projects)
    read = read_answer(text)
    assert read["status"] == "true"
    assert read["HardwareId"] == safe_value(hardware_id)
    assert read["uid"] == "80:00:00:00:00:00:00:02"  # colons survive
    assert read["projects"].split(",") == projects
    assert text.startswith('{"status":"true",') and text.endswith('"}')


def test_plain_reasons_pass_unchanged() -> None:
    for reason in (
        "unknown bulk identification code",
        "auto registration paused by the operator",
        "bulk identification code revoked: the operator rotated it",
    ):
        assert safe_value(reason) == reason
