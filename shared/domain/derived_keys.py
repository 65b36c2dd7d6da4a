"""Derived-key attestation (issue 25, docs/device-identity.md): the rules, pure.

An auto registration in ``derived_key`` mode holds two 256-bit group keys (primary and
secondary, for rollover). A factory derives each device's key from one of them as Azure
DPS's symmetric-key enrollment groups do (``az iot dps enrollment-group
compute-device-key``)::

    device key = base64(HMAC-SHA256(base64decode(group key), UTF-8(hardware ID)))

over the hardware ID as the device sends it, surrounding whitespace trimmed, case kept. The
device never sends its key: it proves it with a MAC over a fixed text,

    proof mac = hex(HMAC-SHA256(base64decode(device key),
                                "fleetreg-proof-v1\\n" + hardware ID + "\\n" + expires + "\\n" + nonce))

(``expires`` in Unix seconds as decimal digits, ``nonce`` 16-64 hex digits, no newline at
the end), computable in POSIX sh with ``openssl dgst -sha256 -mac HMAC``. A proof is valid
until ``expires``, which may lie at most :data:`PROOF_MAX_LIFETIME_SECONDS` (plus
:data:`CLOCK_SKEW_SECONDS`) ahead of the server's clock, and its nonce is accepted once
(the intake remembers it until it expires: shared/db/proofs.py).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from dataclasses import dataclass
from typing import Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

Attestation = Literal["code", "derived_key", "x509"]
ATTESTATIONS: tuple[Attestation, ...] = ("code", "derived_key", "x509")
# Built and accepted today (every one of them: kept for a mode added later, refused until it exists).
AVAILABLE_ATTESTATIONS: tuple[Attestation, ...] = ("code", "derived_key", "x509")
KeySlot = Literal["primary", "secondary"]
KEY_SLOTS: tuple[KeySlot, ...] = ("primary", "secondary")

GROUP_KEY_BYTES = 32  # 256 bits, as DPS's generated keys
PROOF_PREFIX = "fleetreg-proof-v1"
# How far ahead of the server's clock a proof may expire: its replay window. Ten minutes
# cover a slow boot; a device sets expires = its clock + 300 (docs/device-identity.md).
PROOF_MAX_LIFETIME_SECONDS = 600
# A device clock a little ahead of the server's is not refused for it.
CLOCK_SKEW_SECONDS = 60
NONCE_PATTERN = re.compile(r"[0-9a-fA-F]{16,64}")
# The longest mac taken (a SHA-256 MAC is 64 hex digits; longer is garbage, refused as input).
MAC_MAX_LENGTH = 128
EXPIRES_MAX = 10**11  # year 5138: a larger number is no time

REASON_NO_PROOF = (
    "this auto registration takes derived keys: send proof (expires, nonce, mac) of the device key "
    "(docs/device-identity.md)"
)
REASON_WRONG_PROOF = "wrong proof of the device key"
REASON_REPLAYED_PROOF = "proof replayed: its nonce was accepted already; make a new proof"
REASON_PROOF_TIME = (
    "proof expired or dated too far ahead: the device's clock is wrong; "
    "make a new proof with expires after server_time"
)
PROOF_REASONS_COUNTED = frozenset({REASON_NO_PROOF, REASON_WRONG_PROOF, REASON_REPLAYED_PROOF})
# The reference protocol (apv/v27) carries no proof: its devices are answered false with it.
# Without commas: the reference client's answers cannot carry one (compat/answers.py).
REASON_REFERENCE_PROTOCOL = (
    "this auto registration takes derived keys which the reference protocol cannot carry: "
    "use the native device API (/v1/registrations)"
)

GROUP_KEYS_PURPOSE = b"fleetreg derived-key group keys v1"


def new_group_key() -> str:
    """A fresh 256-bit group key, base64 (44 characters)."""
    return base64.b64encode(os.urandom(GROUP_KEY_BYTES)).decode()


def derive_device_key(group_key: str, hardware_id: str) -> str:
    """The device key of ``hardware_id`` (trimmed, case kept) under ``group_key`` (base64):
    base64(HMAC-SHA256(base64decode(group key), UTF-8 hardware ID)), Azure DPS's formula.
    ValueError for a group key that is not base64."""
    try:
        raw = base64.b64decode(group_key, validate=True)
    except binascii.Error as exc:
        raise ValueError("the group key is not base64") from exc
    return base64.b64encode(hmac.digest(raw, hardware_id.strip().encode(), hashlib.sha256)).decode()


def proof_text(hardware_id: str, expires: int, nonce: str) -> bytes:
    """The exact bytes a proof's MAC covers (no trailing newline)."""
    return f"{PROOF_PREFIX}\n{hardware_id.strip()}\n{expires}\n{nonce}".encode()


def proof_mac(device_key: str, hardware_id: str, expires: int, nonce: str) -> str:
    """hex(HMAC-SHA256(base64decode(device key), :func:`proof_text`)), 64 lower-case digits."""
    key = base64.b64decode(device_key)
    return hmac.new(key, proof_text(hardware_id, expires, nonce), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Proof:
    """A device's proof of its derived key, as sent: ``expires`` (Unix seconds), ``nonce``
    (16-64 hex digits) and ``mac`` (hex, lower-cased)."""

    expires: int
    nonce: str
    mac: str


def proof_matches(group_keys: tuple[str, ...], hardware_id: str, proof: Proof) -> bool:
    """Whether ``proof`` was made with the device key of ``hardware_id`` under one of
    ``group_keys`` (base64; primary and secondary). Every key is tried (no early exit), each
    comparison in constant time."""
    matched = False
    for group_key in group_keys:
        expected = proof_mac(
            derive_device_key(group_key, hardware_id), hardware_id, proof.expires, proof.nonce
        )
        matched |= hmac.compare_digest(expected.encode(), proof.mac.encode())
    return matched


def proof_time_ok(expires: int, now: float) -> bool:
    """Whether a proof expiring at ``expires`` is within its window at the server's ``now``:
    not yet expired, and not further ahead than the longest lifetime (plus clock skew)."""
    return now < expires <= now + PROOF_MAX_LIFETIME_SECONDS + CLOCK_SKEW_SECONDS


class GroupKeyBox:
    """Seals group keys at rest: AES-256-GCM with a key derived (HMAC-SHA256) from
    FLEETREG_SECRET_KEY for this purpose (as webhook secrets are sealed), the registration's
    ID and the key's slot as associated data (a sealed key copied to another registration or
    slot does not open). Stored as 12-byte nonce + ciphertext and tag."""

    def __init__(self, secret_key: bytes) -> None:
        self._aead = AESGCM(hmac.digest(secret_key, GROUP_KEYS_PURPOSE, hashlib.sha256))

    def seal(self, registration_id: str, slot: KeySlot, group_key: str) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, group_key.encode(), f"{registration_id}/{slot}".encode())

    def open(self, registration_id: str, slot: KeySlot, sealed: bytes) -> str:
        """The group key; ValueError when it was sealed with another FLEETREG_SECRET_KEY or
        for another registration or slot."""
        try:
            return self._aead.decrypt(sealed[:12], sealed[12:], f"{registration_id}/{slot}".encode()).decode()
        except InvalidTag as exc:
            raise ValueError("the group key does not decrypt with this FLEETREG_SECRET_KEY") from exc
