"""What the console tells the bulk API about a person's session (issue 28): a short-lived
assertion that the operator service forwards instead of an API key, which a person's
session does not hold.

An assertion names the account, the user, the role they had when it was made, the console
session and its expiry (:data:`LIFETIME_SECONDS`), sealed with a key derived from
FLEETREG_SECRET_KEY under a purpose of its own (:class:`shared.domain.webhooks.SecretBox`:
AES-256-GCM through ``cryptography``, authenticated encryption, so it is as unforgeable
as an HMAC and its fields are not readable on the way either), with :data:`AUDIENCE` as
associated data: a ciphertext sealed for another purpose or audience does not open. Only
a holder of FLEETREG_SECRET_KEY (the registry's own services) can make one; the bulk API
trusts it only together with a live session looked up in the registry (shared.http), so
ending the session or removing the person ends it at once, expiry or not. Pure functions:
the time is always passed in.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

from shared.domain.webhooks import SecretBox

HEADER = "X-Fleetreg-Console-Assertion"
PURPOSE = b"fleetreg console assertions v1"
AUDIENCE = "fleetreg bulk API"
LIFETIME_SECONDS = 60  # one forwarded call, with room for a slow upload's start
MAX_CHARS = 1024  # an assertion is about 300 characters; a longer header is not one


@dataclass(frozen=True)
class Assertion:
    account_id: str
    user_id: str
    role: str
    session_id: str
    expires_at: float


def issue(secret_key: bytes, *, account_id: str, user_id: str, role: str, session_id: str, now: float) -> str:
    """The assertion (URL-safe base64 text) for one forwarded call."""
    claims = {
        "account_id": account_id,
        "user_id": user_id,
        "role": role,
        "session_id": session_id,
        "expires_at": now + LIFETIME_SECONDS,
    }
    sealed = SecretBox(secret_key, PURPOSE).seal(AUDIENCE, json.dumps(claims))
    return base64.urlsafe_b64encode(sealed).decode()


def verify(secret_key: bytes, token: str, *, now: float) -> Assertion | None:
    """The assertion's claims when it was sealed with this FLEETREG_SECRET_KEY for the bulk
    API and has not expired; None otherwise (forged, altered, expired, or not one)."""
    if not token or len(token) > MAX_CHARS or not token.isascii():
        return None
    try:
        claims = json.loads(SecretBox(secret_key, PURPOSE).open(AUDIENCE, base64.urlsafe_b64decode(token)))
        found = Assertion(
            account_id=str(claims["account_id"]),
            user_id=str(claims["user_id"]),
            role=str(claims["role"]),
            session_id=str(claims["session_id"]),
            expires_at=float(claims["expires_at"]),
        )
    except (ValueError, binascii.Error, KeyError, TypeError):
        return None
    return found if found.expires_at > now else None
