"""People's passwords (shared/domain/passwords.py): the policy's edges, argon2id hashing,
rehashing on new parameters, and one path for an unknown user and a wrong password."""

from __future__ import annotations

import unicodedata

import pytest
from argon2 import PasswordHasher, extract_parameters
from argon2.profiles import CHEAPEST, RFC_9106_LOW_MEMORY
from hypothesis import given
from hypothesis import strategies as st

from shared.domain import passwords
from shared.domain.passwords import NO_MATCH, checked_password, hash_password, verify_password
from shared.errors import InvalidInput

GOOD = "tidal-copper-lantern"
# One example refused by each rule: the tests below read each rule's message from it.
EXAMPLES: dict[str, object] = {
    "type=string": 42,
    "charset=unicode": "tidal-copper-\udc80",
    "no-control-characters": "tidal\x00copper-lantern",
    "min_length=12": "short",
    "max_length=256": "x" * 300 + "y",
    "not-blank": " " * 12,
    "not-repetitive": "z" * 12,
    "not-context": "fleetreg2026!",
    "not-common": "qwertyuiop123",
}
RULES = set(EXAMPLES)


def full_width(ascii_text: str) -> str:
    """The text in Unicode's full-width forms (U+FF01 to U+FF5E), as East Asian keyboards type it."""
    return "".join(chr(ord(char) + 0xFEE0) for char in ascii_text)


def refusal(value: object, **kwargs: str) -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        checked_password(value, **kwargs)
    assert caught.value.field == "password"
    return caught.value


# --- the hasher's parameters and their sources ------------------------------------------------


def test_the_parameters_are_rfc_9106s_second_recommendation_and_above_owasps_minimum() -> None:
    stated = extract_parameters(hash_password(GOOD))
    assert stated == RFC_9106_LOW_MEMORY == passwords.RFC_9106_PROFILE
    assert (stated.time_cost, stated.memory_cost, stated.parallelism) == (3, 65536, 4)
    assert stated.type.name == "ID"
    # OWASP Password Storage Cheat Sheet, argon2id's minimum: 19 MiB, 2 iterations, 1 lane.
    assert stated.memory_cost >= 19 * 1024 and stated.time_cost >= 2 and stated.parallelism >= 1


def test_the_dummy_hash_is_made_with_the_hashers_own_parameters() -> None:
    assert extract_parameters(passwords.DUMMY_HASH) == RFC_9106_LOW_MEMORY
    assert not passwords.HASHER.check_needs_rehash(passwords.DUMMY_HASH)


# --- hashing and verifying -------------------------------------------------------------------


def test_a_hashed_password_verifies_and_another_does_not() -> None:
    stored = hash_password(GOOD)
    assert stored.startswith("$argon2id$v=19$m=65536,t=3,p=4$")
    assert GOOD not in stored
    assert verify_password(stored, GOOD) == passwords.PasswordCheck(matches=True, new_hash=None)
    assert verify_password(stored, GOOD + " ") == NO_MATCH
    assert verify_password(stored, GOOD.upper()) == NO_MATCH
    assert hash_password(GOOD) != stored  # a fresh salt each time


def test_one_password_in_two_unicode_forms_verifies() -> None:
    composed = "café-au-lait-à-minuit"
    decomposed = unicodedata.normalize("NFD", composed)
    assert decomposed != composed
    cheap = PasswordHasher.from_parameters(CHEAPEST)
    stored = hash_password(decomposed, hasher=cheap)
    assert verify_password(stored, composed, hasher=cheap).matches
    wide = full_width("tidal-copper")  # NFKC: the ASCII letters
    assert verify_password(hash_password("tidal-copper", hasher=cheap), wide, hasher=cheap).matches


def test_a_hash_made_with_older_parameters_is_replaced_at_the_next_sign_in() -> None:
    old = PasswordHasher.from_parameters(CHEAPEST).hash(GOOD)
    check = verify_password(old, GOOD)
    assert check.matches and check.new_hash is not None
    assert extract_parameters(check.new_hash) == RFC_9106_LOW_MEMORY
    assert verify_password(check.new_hash, GOOD) == passwords.PasswordCheck(matches=True, new_hash=None)
    assert verify_password(old, "another-password") == NO_MATCH  # no new hash without the password


class RecordingHasher(PasswordHasher):
    """The real hasher, noting each hash it verifies against."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=8, parallelism=1, hash_len=16, salt_len=8)
        self.verified: list[str] = []

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:  # type: ignore[override]
        self.verified.append(hash if isinstance(hash, str) else hash.decode())
        return super().verify(hash, password)


def test_an_unknown_user_and_a_wrong_password_take_the_same_path() -> None:
    hasher = RecordingHasher()
    stored = hash_password(GOOD, hasher=hasher)
    assert verify_password(stored, "wrong-password-here", hasher=hasher) == NO_MATCH
    assert verify_password(None, "wrong-password-here", hasher=hasher) == NO_MATCH
    assert verify_password(None, GOOD, hasher=hasher) == NO_MATCH
    # One argon2 verify each, against hashes of the same parameters: the same work.
    assert len(hasher.verified) == 3
    assert {str(extract_parameters(h)) for h in hasher.verified} == {str(extract_parameters(stored))}


@pytest.mark.parametrize("presented", ["x" * 257 + "y", "bad-\ud800-surrogate"])
def test_a_password_that_could_never_be_set_is_checked_against_the_dummy(presented: str) -> None:
    hasher = RecordingHasher()
    stored = hash_password(GOOD, hasher=hasher)
    assert verify_password(stored, presented, hasher=hasher) == NO_MATCH
    assert len(hasher.verified) == 1 and hasher.verified[0] != stored


def test_a_corrupt_stored_hash_is_an_error_not_a_wrong_password() -> None:
    with pytest.raises(ValueError, match="not a valid argon2 hash"):
        verify_password("$2b$12$not-argon2", GOOD)


# --- the policy ------------------------------------------------------------------------------


def test_eleven_characters_are_refused_and_twelve_accepted() -> None:
    assert refusal("tidal-coppe").rule == "min_length=12"
    assert checked_password("tidal-copper") == "tidal-copper"


def test_256_characters_are_accepted_and_257_refused() -> None:
    phrase = ("tidal copper lantern " * 13)[:256]
    assert len(phrase) == 256
    assert checked_password(phrase) == phrase
    assert refusal(phrase + "x").rule == "max_length=256"


def test_length_is_counted_in_code_points_after_nfkc() -> None:
    # 12 letters with a combining accent are 24 code points, 12 once composed.
    twelve = "".join(c + "\u0301" for c in "aeiouyaeiouy")
    assert len(twelve) == 24
    assert checked_password(twelve) == unicodedata.normalize("NFKC", twelve)
    eleven = "".join(c + "\u0301" for c in "aeiouyaeiou")
    assert refusal(eleven).rule == "min_length=12"
    # A ligature expands: 4 code points typed, 12 after NFKC ("ffi" each).
    assert checked_password("\ufb03\ufb03\ufb03\ufb03") == "ffiffiffiffi"


@pytest.mark.parametrize(
    "password",
    ["пароль-надёжный", "密码很长很安全的一句话吧", "🔑🚚🔑🚚🔑🚚🔑🚚🔑🚚🔑🚛", "Ελληνικά-κλειδιά"],
)
def test_any_unicode_is_accepted(password: str) -> None:
    assert checked_password(password) == unicodedata.normalize("NFKC", password)


@pytest.mark.parametrize("control", ["\x00", "\t", "\n", "\r", "\x7f", "\x1b"])
def test_control_characters_are_refused_without_echoing_the_password(control: str) -> None:
    secret = f"tidal{control}copper-lantern"
    refused = refusal(secret)
    assert refused.rule == "no-control-characters"
    assert "tidal" not in refused.message and "copper" not in str(refused.to_dict())


def test_a_lone_surrogate_is_refused() -> None:
    assert refusal("tidal-copper-\udc80").rule == "charset=unicode"


def test_spaces_count_and_are_kept_where_they_are() -> None:
    assert checked_password("  tidal copper  ") == "  tidal copper  "
    assert checked_password(" tidal copper") != checked_password("tidal copper ")
    # NFKC makes a no-break space and an ideographic space plain spaces.
    assert checked_password("tidal\u00a0copper\u3000x") == "tidal copper x"
    assert refusal(" " * 12).rule == "not-blank"
    assert refusal("\u00a0" * 6 + "\u3000" * 6).rule == "not-blank"
    assert checked_password(" tidal copp ") == " tidal copp "  # 12 with its spaces
    assert refusal(" tidal cop ").rule == "min_length=12"


def test_one_character_repeated_is_refused() -> None:
    assert refusal("a" * 12).rule == "not-repetitive"
    assert refusal("7" * 40).rule == "not-repetitive"


@pytest.mark.parametrize(
    "common",
    [
        "qwertyuiop123",  # zxcvbn's "passwords" list (leaked passwords)
        "QwErTyUiOp123",  # case does not matter
        full_width("1qaz2wsx3edc"),  # nor full-width forms (NFKC)
        "1qaz2wsx3edc",
        "123456789987654321",
        "contortionist",  # a dictionary word
    ],
)
def test_a_listed_common_password_is_refused(common: str) -> None:
    assert passwords.is_common(common)
    refused = refusal(common)
    assert refused.rule == "not-common"
    assert common.casefold() not in refused.message.casefold()


@pytest.mark.parametrize(
    "password",
    [
        "ann.lee@example.com",
        "ANN.LEE@EXAMPLE.COM",
        "ann.lee2026!!!",
        "1234-ann.lee",
        "fleetreg2026!",
        "Fleetreg-1234",
    ],
)
def test_the_email_its_name_part_and_the_service_name_are_refused(password: str) -> None:
    assert refusal(password, email="Ann.Lee@example.com").rule == "not-context"


def test_context_words_among_other_words_are_accepted() -> None:
    assert checked_password("ann.lee loves fleetreg", email="ann.lee@example.com")
    # A local part shorter than 3 characters is no context word.
    assert checked_password("al1234567890", email="al@example.com") == "al1234567890"


def test_a_password_that_is_not_text_is_refused() -> None:
    assert refusal(123456789012).rule == "type=string"
    assert refusal(None).rule == "type=string"


@given(st.text(max_size=300))
def test_every_text_is_accepted_normalised_or_refused_by_a_named_rule(text: str) -> None:
    try:
        accepted = checked_password(text)
    except InvalidInput as refused:
        assert refused.field == "password" and refused.rule in RULES
        # The message is the rule's own, whatever the password: it cannot quote it.
        assert refused.message == refusal(EXAMPLES[refused.rule]).message
        return
    assert accepted == unicodedata.normalize("NFKC", text)
    assert passwords.MIN_LENGTH <= len(accepted) <= passwords.MAX_LENGTH
    assert checked_password(accepted) == accepted  # NFKC is stable: a second pass changes nothing


@given(st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), max_size=300))
def test_length_alone_decides_at_the_bounds(text: str) -> None:
    length = len(unicodedata.normalize("NFKC", text))
    try:
        checked_password(text)
    except InvalidInput as refused:
        if length < passwords.MIN_LENGTH:
            assert refused.rule == "min_length=12"
        elif length > passwords.MAX_LENGTH:
            assert refused.rule == "max_length=256"
        else:
            assert refused.rule in {"not-blank", "not-repetitive", "not-context", "not-common"}
        return
    assert passwords.MIN_LENGTH <= length <= passwords.MAX_LENGTH


@pytest.mark.parametrize(("rule", "example"), EXAMPLES.items())
def test_each_rule_refuses_its_example_without_quoting_it(rule: str, example: object) -> None:
    refused = refusal(example)
    assert refused.rule == rule
    if isinstance(example, str) and example.strip():
        assert example not in str(refused.to_dict())
