"""People's recovery codes (shared/domain/recovery_codes.py): ten readable codes, stored as
digests, each good once, typed loosely."""

from __future__ import annotations

import hashlib
import math
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.domain import recovery_codes as rc

SHAPE = re.compile(r"[0-9A-HJKMNP-TV-Z]{4}(-[0-9A-HJKMNP-TV-Z]{4}){3}")


def test_ten_distinct_codes_in_four_groups_of_four() -> None:
    codes = rc.new_codes()
    assert len(codes) == 10 == len(set(codes))
    assert all(SHAPE.fullmatch(code) for code in codes), codes
    assert rc.new_codes() != codes


def test_the_alphabet_is_unambiguous_and_a_code_holds_80_bits() -> None:
    assert len(set(rc.ALPHABET)) == 32
    assert not set("ILOU") & set(rc.ALPHABET)
    assert rc.CODE_CHARS * math.log2(len(rc.ALPHABET)) == 80


def test_a_code_is_stored_as_its_sha256_digest_only() -> None:
    code = rc.new_codes()[0]
    stored = rc.digest(code)
    assert stored == hashlib.sha256(code.replace("-", "").encode()).digest()
    assert len(stored) == 32 and code.encode() not in stored
    with pytest.raises(ValueError, match="not a recovery code"):
        rc.digest("not-a-code")


def test_each_code_is_good_once() -> None:
    codes = rc.new_codes()
    unused = list(rc.digests(codes))
    used = rc.matching(codes[3], unused)
    assert used == unused[3]
    unused.remove(used)  # what the caller's "mark used" does
    assert rc.matching(codes[3], unused) is None
    # The other nine still work, each once.
    for code in codes[:3] + codes[4:]:
        found = rc.matching(code, unused)
        assert found is not None
        unused.remove(found)
    assert unused == []


def test_a_code_is_read_however_it_is_typed() -> None:
    code = "7KQ2-M9XD-30TB-HW1P"
    stored = [rc.digest(code)]
    for typed in (
        "7kq2-m9xd-30tb-hw1p",
        "7KQ2 M9XD 30TB HW1P",
        "7KQ2M9XD30TBHW1P",
        "7KQ2-M9XD-3OTB-HWIP",
        "7kq2m9xd3otbhwlp",
    ):
        assert rc.matching(typed, stored) == stored[0], typed


@pytest.mark.parametrize(
    "typed", ["", "7KQ2-M9XD-30TB-HW1", "7KQ2-M9XD-30TB-HW1PX", "7KQ2-M9XD-30TB-HWUP", "💥" * 16]
)
def test_anything_else_matches_nothing(typed: str) -> None:
    assert rc.canonical(typed) is None
    assert rc.matching(typed, rc.digests(rc.new_codes())) is None


def test_a_code_of_another_set_matches_nothing() -> None:
    assert rc.matching(rc.new_codes()[0], rc.digests(rc.new_codes())) is None
    assert rc.matching(rc.new_codes()[0], ()) is None


@given(st.text(max_size=40))
def test_matching_never_finds_a_code_for_text_that_is_none(typed: str) -> None:
    codes = rc.new_codes()
    found = rc.matching(typed, rc.digests(codes))
    if found is not None:
        assert rc.canonical(typed) in {rc.canonical(code) for code in codes}
