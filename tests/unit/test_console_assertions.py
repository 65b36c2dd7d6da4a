"""The console's assertion of a person's session to the bulk API: opens only with the key it
was sealed with, only before its expiry, and not once altered."""

from __future__ import annotations

import base64

from shared.domain import console_assertions

KEY = b"a deployment's secret key for the tests, long enough"
CLAIMS = {"account_id": "a", "user_id": "u", "role": "operator", "session_id": "s"}


def test_an_assertion_opens_with_its_key_until_it_expires() -> None:
    token = console_assertions.issue(KEY, **CLAIMS, now=1000.0)
    opened = console_assertions.verify(KEY, token, now=1000.0 + console_assertions.LIFETIME_SECONDS - 1)
    assert opened is not None and (opened.user_id, opened.role, opened.session_id) == ("u", "operator", "s")
    assert console_assertions.verify(KEY, token, now=1000.0 + console_assertions.LIFETIME_SECONDS) is None


def test_a_forged_altered_or_foreign_assertion_is_refused() -> None:
    token = console_assertions.issue(KEY, **CLAIMS, now=1000.0)
    raw = bytearray(base64.urlsafe_b64decode(token))
    raw[20] ^= 1
    altered = base64.urlsafe_b64encode(bytes(raw)).decode()
    for refused in (
        console_assertions.issue(b"another deployment's key, as long", **CLAIMS, now=1000.0),
        altered,
        "",
        "!!not base64!!",
        "A" * (console_assertions.MAX_CHARS + 1),
    ):
        assert console_assertions.verify(KEY, refused, now=1000.0) is None
