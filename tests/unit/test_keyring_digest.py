"""The bulk upload's per-row digest is the keyed digest every other path computes."""

from __future__ import annotations

import hashlib
import hmac

from hypothesis import given
from hypothesis import strategies as st

from shared.domain.credentials import Keyring

KEYRING = Keyring(b"s" * 32)


@given(st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=128))
def test_digest_bytes_is_the_stored_form_of_digest(key: str) -> None:
    expected = hmac.new(b"s" * 32, f"digest\x1f{key}".encode(), hashlib.sha256).digest()
    assert KEYRING.digest_bytes(key) == expected == bytes.fromhex(KEYRING.digest(key))
    assert KEYRING.digest_bytes(key) == expected  # the cached keyed state is not consumed
