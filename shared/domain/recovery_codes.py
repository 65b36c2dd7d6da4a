"""People's recovery codes: ten one-time codes that stand in for the TOTP code when the
authenticator is lost. Shown once, when made; stored only as digests; each usable once.

A code is 16 characters of Crockford's base32 alphabet (digits and upper-case letters
without I, L, O and U: none of them can be read as another), shown as four groups of four,
``7KQ2-M9XD-3RTB-HW4P``. Typed back, case, spaces and hyphens do not matter, and the
letters Crockford's decoding maps (O to 0, I and L to 1) are read as those digits.

Each code carries 80 random bits, so its digest is plain SHA-256 and not a slow password
hash: a slow hash makes guessing a human-chosen secret expensive, but guessing one of ten
80-bit codes from its digest takes about 2**77 SHA-256 computations, out of reach with or
without argon2 (as operator API keys, shared.domain.credentials.api_key_digest). It also
keeps the check of a typed code against ten digests cheap, with no argon2 run per stored
code. Pure functions: no registry, broker or HTTP.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence

COUNT = 10
GROUPS = 4
GROUP_CHARS = 4
ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford's base32: 5 bits a character
# What Crockford's decoding reads as another symbol: the letters left out of the alphabet.
_READ_AS = str.maketrans({"O": "0", "I": "1", "L": "1"})
CODE_CHARS = GROUPS * GROUP_CHARS  # 16 characters, 80 bits


def new_codes() -> tuple[str, ...]:
    """Ten fresh recovery codes as they are shown (``XXXX-XXXX-XXXX-XXXX``), distinct."""
    codes: list[str] = []
    while len(codes) < COUNT:
        raw = "".join(secrets.choice(ALPHABET) for _ in range(CODE_CHARS))
        code = "-".join(raw[i : i + GROUP_CHARS] for i in range(0, CODE_CHARS, GROUP_CHARS))
        if code not in codes:
            codes.append(code)
    return tuple(codes)


def canonical(typed: str) -> str | None:
    """A typed code as it is digested: upper case, without spaces and hyphens, ``O``, ``I``
    and ``L`` read as ``0``, ``1`` and ``1``; None when it is not 16 characters of the
    alphabet (no digest is worth computing)."""
    text = typed.upper().replace("-", "").replace(" ", "").translate(_READ_AS)
    if len(text) != CODE_CHARS or any(char not in ALPHABET for char in text):
        return None
    return text


def digest(code: str) -> bytes:
    """The 32 bytes stored for a code (SHA-256 of its canonical form). ValueError for text
    that is no code."""
    text = canonical(code)
    if text is None:
        raise ValueError("not a recovery code")
    return hashlib.sha256(text.encode()).digest()


def digests(codes: Sequence[str]) -> tuple[bytes, ...]:
    """The stored form of a new set of codes, in their order."""
    return tuple(digest(code) for code in codes)


def matching(typed: str, unused: Sequence[bytes]) -> bytes | None:
    """The digest among ``unused`` (the person's codes not used yet) that ``typed`` is the
    code of, or None. Every digest is compared, each in constant time, so the answer's
    timing says nothing about which or how many codes are left. The caller marks the
    returned digest used in the same transaction that lets the person in, only if it was
    still unused then (``... WHERE used_at IS NULL``): a code is good once."""
    text = canonical(typed)
    presented = hashlib.sha256((text or "").encode()).digest()
    found: bytes | None = None
    for stored in unused:
        if hmac.compare_digest(stored, presented) and text is not None:
            found = stored
    return found
