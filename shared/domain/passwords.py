"""People's passwords: the policy a new password must meet, and argon2id hashing.

Nothing here is about devices or API keys (shared.domain.credentials is). Pure functions
and one hasher: no registry, broker or HTTP.

**Policy** (NIST SP 800-63B: rev. 3 section 5.1.1.2, "Memorized Secret Verifiers"; rev. 4
section 3.1.1.2, "Password Verifiers"): length, not composition. At least :data:`MIN_LENGTH`
(12: above the 8 NIST requires, below the 15 rev. 4 asks of a password that is the only
factor) and at most :data:`MAX_LENGTH` (256; NIST: permit at least 64) characters, counted
as Unicode code points after NFKC normalisation; any Unicode character but control
characters (NUL, tab, line breaks: none is typed into a password field, and a NUL cuts C
strings short); no rule about upper case, digits or symbols; spaces count and stay where
they are (a password is never trimmed, nor truncated). Refused besides, as NIST's
blocklist: a password of spaces only or of one character repeated; the person's e-mail
address, its local part or the service's name, alone or with only digits and symbols
added; and the entries of the common-password and dictionary lists that the ``zxcvbn``
package ships (:func:`is_common`). A refusal is :class:`InvalidInput` with
``field="password"`` and ``rule`` naming the rule; its message never quotes the password.

**Hashing**: argon2id through ``argon2-cffi``'s ``PasswordHasher`` with the parameters of
RFC 9106's second recommended option (section 4): time cost 3, 64 MiB of memory, 4 lanes,
a 16-byte salt, a 32-byte tag. They exceed the OWASP Password Storage Cheat Sheet's
minimum for argon2id (19 MiB, 2 iterations, 1 lane). They are stated here rather than taken
from the library's defaults, so that a release changing its defaults changes nothing until
this module does; when it does, :func:`verify_password` hands back a new hash made with
them at the next sign-in (argon2's ``check_needs_rehash``). One hash or verify takes 64 MiB
and a fraction of a second to a second of CPU on a 2-core machine (0.3 to 1.3 s measured
while other work shared it): callers on an event loop run it in a thread
(``asyncio.to_thread``; argon2-cffi releases the GIL while it computes) and bound how many
run at once.
"""

from __future__ import annotations

import contextlib
import functools
import secrets
import unicodedata
from dataclasses import dataclass

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from argon2.profiles import RFC_9106_LOW_MEMORY
from zxcvbn.frequency_lists import FREQUENCY_LISTS

from shared.errors import InvalidInput

MIN_LENGTH = 12
MAX_LENGTH = 256
FIELD = "password"
SERVICE_NAMES = ("fleetreg",)  # context-specific words NIST asks verifiers to refuse

# RFC 9106 section 4, second recommended option; spelled out so a glance shows them.
TIME_COST = 3
MEMORY_COST_KIB = 64 * 1024
PARALLELISM = 4
SALT_BYTES = 16
HASH_BYTES = 32
HASHER = PasswordHasher(
    time_cost=TIME_COST,
    memory_cost=MEMORY_COST_KIB,
    parallelism=PARALLELISM,
    hash_len=HASH_BYTES,
    salt_len=SALT_BYTES,
    type=Type.ID,
)
# argon2-cffi names the same option RFC_9106_LOW_MEMORY: the unit tests check the two agree.
RFC_9106_PROFILE = RFC_9106_LOW_MEMORY

# The zxcvbn lists used: "passwords" (the 30,000 most frequent in Mark Burnett's ten million
# leaked passwords) and two of English words and phrases (Wikipedia, TV and film): NIST's
# "passwords obtained from previous breach corpuses" and "dictionary words".
COMMON_LISTS = ("passwords", "english_wikipedia", "us_tv_and_film")


@dataclass(frozen=True)
class PasswordCheck:
    """What a sign-in's password check found. ``matches``: the password is the one hashed.
    ``new_hash``: when it matches and the stored hash was made with other parameters than
    :data:`HASHER`'s, the password hashed anew, for the caller to store in its place."""

    matches: bool
    new_hash: str | None = None


NO_MATCH = PasswordCheck(matches=False)


def normalised(password: str) -> str:
    """The password as it is hashed and compared: Unicode NFKC (NIST SP 800-63B asks for it),
    so that one password typed on two keyboards (a precomposed ``é`` or ``e`` and a
    combining accent, a full-width or an ASCII ``A``) is one password."""
    return unicodedata.normalize("NFKC", password)


@functools.cache
def _common() -> frozenset[str]:
    # Only entries as long as the minimum can match a password that passed the length rule.
    return frozenset(
        word for name in COMMON_LISTS for word in FREQUENCY_LISTS[name] if len(word) >= MIN_LENGTH
    )


def is_common(password: str) -> bool:
    """Whether the password, normalised and case-folded, is on one of the zxcvbn package's
    lists (:data:`COMMON_LISTS`; the lists are lower case)."""
    return normalised(password).casefold() in _common()


def _is_context(password: str, email: str | None) -> bool:
    # NIST's "context-specific words": the service's name, the person's e-mail address and
    # its local part (of 3 characters or more), refused alone and with only digits and
    # symbols around them ("fleetreg2026!"); with other words around them they may stay.
    folded = password.casefold()
    words = set(SERVICE_NAMES)
    if email:
        address = normalised(email).casefold()
        words.add(address)
        local = address.rpartition("@")[0]
        if len(local) >= 3:
            words.add(local)
    for word in words:
        rest = folded.replace(word, "", 1)
        if rest != folded and not any(char.isalpha() for char in rest):
            return True
    return False


def _refused(message: str, rule: str) -> InvalidInput:
    return InvalidInput(message, field=FIELD, rule=rule)


def checked_password(value: object, *, email: str | None = None) -> str:
    """A new password as the policy above accepts it, returned normalised (NFKC), the form
    :func:`hash_password` hashes. ``email``: the person's address, refused as a password
    (and so is its local part). InvalidInput (``field="password"``, ``rule``) otherwise:
    type=string, charset=unicode (a lone surrogate), no-control-characters,
    min_length=12, max_length=256, not-blank, not-repetitive, not-context, not-common."""
    if not isinstance(value, str):
        raise _refused("password must be a string", "type=string")
    try:
        value.encode()
    except UnicodeEncodeError as exc:
        raise _refused("password must be valid Unicode text", "charset=unicode") from exc
    password = normalised(value)
    if any(unicodedata.category(char) == "Cc" for char in password):
        raise _refused(
            "password may not contain control characters (such as NUL, a tab or a line break)",
            "no-control-characters",
        )
    if len(password) < MIN_LENGTH:
        raise _refused(f"password must be at least {MIN_LENGTH} characters long", f"min_length={MIN_LENGTH}")
    if len(password) > MAX_LENGTH:
        raise _refused(f"password may be at most {MAX_LENGTH} characters long", f"max_length={MAX_LENGTH}")
    if not password.strip():
        raise _refused("password may not be only spaces", "not-blank")
    if len(set(password)) == 1:
        raise _refused("password may not be one character repeated", "not-repetitive")
    if _is_context(password, email):
        raise _refused(
            "password may not be your e-mail address, its name part or the service's name "
            "(alone or with only digits and symbols added)",
            "not-context",
        )
    if is_common(password):
        raise _refused(
            "password is on a list of common or leaked passwords and words: choose another",
            "not-common",
        )
    return password


def hash_password(password: str, *, hasher: PasswordHasher = HASHER) -> str:
    """The argon2id hash (PHC string format, ``$argon2id$v=19$m=65536,t=3,p=4$...``) of a
    password that :func:`checked_password` accepted (normalised again here, so a caller
    cannot hash another form). The policy is not applied here: check first."""
    return hasher.hash(normalised(password))


# The hash of a random password that was thrown away, made with HASHER's parameters (a unit
# test checks they agree): written out, so no process pays for making it, and the first
# unknown user of a process costs what every later one does.
DUMMY_HASH = (
    "$argon2id$v=19$m=65536,t=3,p=4$aS6w6KyxSLE6NwHQXJAKNQ$/AXeKsjUS4NRhShnSRguo+hN/1X2YvtVeltD85nAEVU"
)


@functools.cache
def _dummy_hash(hasher: PasswordHasher) -> str:
    if not hasher.check_needs_rehash(DUMMY_HASH):
        return DUMMY_HASH
    return hasher.hash(secrets.token_urlsafe(24))  # another hasher's parameters (tests)


def verify_password(
    stored_hash: str | None, password: str, *, hasher: PasswordHasher = HASHER
) -> PasswordCheck:
    """Whether ``password`` is the one ``stored_hash`` was made from (both normalised).

    ``stored_hash`` None (no such user, or one without a password) takes the same path: an
    argon2 verify against a dummy hash made with the same parameters, then no match. The
    cost of argon2 depends on its parameters, not on the password or on whether it matches,
    so an unknown user and a wrong password take the same time by construction; the caller
    looks the user up with one query either way. A password that could never have been set
    (longer than :data:`MAX_LENGTH`, not encodable) is checked against the dummy too.

    On a match whose stored hash used other parameters than ``hasher``'s, ``new_hash`` is
    the password hashed with them (store it). ValueError when ``stored_hash`` is not an
    argon2 hash (a corrupt row: an operational fault, not a wrong password)."""
    candidate = normalised(password)
    try:
        candidate.encode()
    except UnicodeEncodeError:
        candidate = ""
        stored_hash = None
    if stored_hash is None or len(candidate) > MAX_LENGTH:
        # The dummy matches no password: the mismatch is the expected outcome.
        with contextlib.suppress(VerifyMismatchError):
            hasher.verify(_dummy_hash(hasher), candidate)
        return NO_MATCH
    try:
        hasher.verify(stored_hash, candidate)
    except VerifyMismatchError:
        return NO_MATCH
    except (InvalidHashError, VerificationError) as exc:
        raise ValueError("the stored password hash is not a valid argon2 hash") from exc
    new_hash = hasher.hash(candidate) if hasher.check_needs_rehash(stored_hash) else None
    return PasswordCheck(matches=True, new_hash=new_hash)
