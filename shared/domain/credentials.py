"""Secrets without storing secrets.

* Operator API keys are random; only their SHA-256 digest is stored.
* Device secrets and service passwords are derived with HMAC-SHA256 from the
  server's secret key, the device ID (or service UID) and the device's credential
  generation. Nothing secret is stored per device; a retry gets the same secret
  back; an operator reset bumps the generation and so invalidates the old one.
* A presented device secret or registration key travels through Kafka and is
  stored only as a keyed digest (HMAC) and is compared in constant time.
* A console session token carries a keyed tag of its random part, so that a made-up
  session cookie is refused without a registry read; the registry stores only the
  token's SHA-256 digest.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

API_KEY_PREFIX = "frk_"
# How long a device secret the operator replaced (reset, delete) is recognised as stale,
# not as a guess (FLEETREG_STALE_CREDENTIAL_SECONDS): a week, so that a board powered off
# over a long weekend or a holiday still learns what happened.
DEFAULT_STALE_CREDENTIAL_SECONDS = 7 * 24 * 3600.0
# How many generations back an old secret is tried (one HMAC each, on a refusal only):
# a device reset several times in a row still presents one of its recent secrets.
STALE_GENERATIONS = 8


@dataclass(frozen=True)
class Keyring:
    """Everything derived from the deployment's secret key (FLEETREG_SECRET_KEY)."""

    secret_key: bytes

    def _mac(self, purpose: str, *parts: str) -> bytes:
        message = "\x1f".join((purpose, *parts)).encode()
        return hmac.digest(self.secret_key, message, "sha256")  # one-shot HMAC-SHA256 in C

    def device_secret(self, device_id: str, generation: int) -> str:
        return self._mac("device-secret", device_id, str(generation)).hex()

    def service_password(self, service_uid: str, generation: int) -> str:
        return self._mac("service-password", service_uid, str(generation)).hex()[:32]

    def request_tag(self, prefix: bytes) -> bytes:
        """4 bytes that only this deployment can compute for a request ID's first 12
        (shared.domain.identifiers.new_request_id)."""
        return self._mac("request-id", prefix.hex())[:4]

    def digest(self, value: str) -> str:
        """Keyed digest of a presented secret or key: what travels and what is stored."""
        return self._mac("digest", value).hex() if value else ""

    @functools.cached_property
    def _digest_base(self) -> hmac.HMAC:
        return hmac.new(self.secret_key, b"digest\x1f", hashlib.sha256)

    def digest_bytes(self, value: str) -> bytes:
        """The keyed digest of a non-empty key as the 32 bytes stored (bulk rows: one
        per row of files of millions, so without the hex round trip, and from a copy
        of the keyed state rather than keying HMAC again per row)."""
        mac = self._digest_base.copy()
        mac.update(value.encode())
        return mac.digest()

    def device_secret_matches(self, device_id: str, generation: int, presented_digest: str) -> bool:
        if not presented_digest:
            return False
        expected = self.digest(self.device_secret(device_id, generation))
        return hmac.compare_digest(expected, presented_digest)

    def older_generation(self, device_id: str, below: int, presented: str) -> int | None:
        """The credential generation below ``below`` (at most :data:`STALE_GENERATIONS`
        back) whose device secret is ``presented``, or None: a secret the operator
        replaced, not a guess."""
        for generation in range(below - 1, max(0, below - 1 - STALE_GENERATIONS), -1):
            expected = self.device_secret(device_id, generation)
            if hmac.compare_digest(expected.encode(), presented.encode()):
                return generation
        return None

    def session_tag(self, body: str) -> str:
        """16 URL-safe characters (96 bits) that only this deployment can compute for a
        console session token's random part (:func:`new_session_token`)."""
        return base64.urlsafe_b64encode(self._mac("console-session", body)[:12]).decode()

    def fingerprint(self, *identifiers: str) -> str:
        """A device's fingerprint from its system identifiers; "" when it sent none (the
        native API drops placeholders first: :func:`shared.domain.identifiers.fingerprint_identifiers`)."""
        present = [i.strip().lower() for i in identifiers if i and i.strip()]
        return self._mac("fingerprint", *present).hex()[:32] if present else ""


def new_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


# A console session token: 32 random bytes (43 URL-safe characters), a dot, and the keyed
# tag of those 43 (Keyring.session_tag), so that a cookie this deployment never issued is
# refused from memory, without the registry read that finding its session costs.
SESSION_BODY_CHARS = 43
SESSION_TAG_CHARS = 16
SessionTag = Callable[[str], str]


def new_session_token(tag: SessionTag) -> str:
    """A new console session token (59 ASCII characters) carrying ``tag`` of its random part."""
    body = secrets.token_urlsafe(32)
    return f"{body}.{tag(body)}"


def session_token_is_issued(token: str, tag: SessionTag) -> bool:
    """Whether ``token`` carries this deployment's tag (:func:`new_session_token`): False
    for anything else, including tokens issued before sessions carried one. A pure check,
    no I/O; it proves the token was issued, not that its session still exists."""
    body, dot, presented = token.rpartition(".")
    if not dot or len(body) != SESSION_BODY_CHARS or len(presented) != SESSION_TAG_CHARS:
        return False
    if not token.isascii():
        return False
    return hmac.compare_digest(presented.encode(), tag(body).encode())


def api_key_digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def stale(replaced_at: datetime | None, now: datetime, window_seconds: float) -> bool:
    """Whether a credential replaced at ``replaced_at`` (None: never replaced) is still
    recognised as stale at ``now``: within ``window_seconds`` of its replacement."""
    return replaced_at is not None and (now - replaced_at).total_seconds() <= window_seconds
