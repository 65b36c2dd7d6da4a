"""People's second factor: time-based one-time passwords (TOTP, RFC 6238) through ``pyotp``,
the enrolment's QR code through ``segno``, and the secret sealed at rest.

The parameters are the ones authenticator apps assume (and some ignore any others): a
30-second step, 6 digits, HMAC-SHA1 (RFC 6238's default; Google Authenticator's Key URI
Format). A secret is 32 base32 characters, 160 bits, the HMAC key length RFC 4226 section 4
recommends. A code is accepted for the step it was made in and one step either side (RFC
6238 section 5.2 allows for clock drift and a code typed late), and never twice: the
caller stores the step of the last accepted code, and a code of that step or an earlier
one is refused (RFC 6238 section 5.2: "the verifier MUST NOT accept the second attempt of
the OTP after the successful validation has been issued for the first OTP").

The secret is stored sealed with the deployment's key as webhook signing secrets are
(shared.domain.webhooks.SecretBox, AES-256-GCM), under a purpose of its own and with the
user's ID as associated data: a sealed secret copied to another user's row does not open.
Pure functions: no registry, broker or HTTP; the time is always passed in.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import pyotp
import segno

from shared.domain.webhooks import SecretBox

ISSUER = "fleetreg"
STEP_SECONDS = 30
DIGITS = 6
WINDOW_STEPS = 1  # steps accepted either side of the current one
SECRET_CHARS = 32  # base32: 160 bits
# The SecretBox purpose of TOTP secrets (its own derived AES key).
TOTP_SECRETS = b"fleetreg totp secrets v1"
QR_TITLE = "QR code to scan with an authenticator app"


def new_secret() -> str:
    """A fresh TOTP secret: 32 characters of base32 (A-Z, 2-7), 160 random bits from the
    operating system's generator (pyotp draws them with ``secrets.SystemRandom``)."""
    return pyotp.random_base32(length=SECRET_CHARS)


def _totp(secret: str) -> pyotp.TOTP:
    return pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS, issuer=ISSUER)


def provisioning_uri(secret: str, email: str) -> str:
    """The ``otpauth://totp/fleetreg:<email>?secret=...&issuer=fleetreg`` URI an
    authenticator app reads from the QR code (Key URI Format: issuer as label prefix and
    parameter, the e-mail address as the account name, percent-encoded)."""
    return _totp(secret).provisioning_uri(name=email)


def code_at(secret: str, at: float) -> str:
    """The code an authenticator shows at ``at`` (Unix seconds): for tests and the docs."""
    return _totp(secret).at(at)


def step_of(at: float) -> int:
    """The time step (RFC 6238's T: whole 30-second periods since the Unix epoch) of ``at``."""
    return int(at // STEP_SECONDS)


def verify_code(secret: str, code: str, *, at: float, last_step: int | None) -> int | None:
    """The time step of ``code`` when it is accepted at ``at`` (Unix seconds), for the caller
    to store as the user's new ``last_step``; None when refused.

    Accepted: 6 digits (spaces, as apps show ``123 456``, are ignored) that are the code of
    the current step or of one step either side, and of a step after ``last_step`` (the
    step of the last code accepted for this user, None when none was): a code seen once is
    refused for the rest of its window, and so is an older one once a newer one was used.
    Store the returned step in the same transaction that lets the person in, so two
    requests racing with one code cannot both pass. pyotp compares in constant time."""
    typed = code.replace(" ", "")
    if len(typed) != DIGITS or not typed.isascii() or not typed.isdigit():
        return None
    try:
        step = _totp(secret).verify_and_get_timecode(typed, for_time=at, valid_window=WINDOW_STEPS)
    except pyotp.OTPVerificationError:
        return None
    # Two steps of one window share a code once in a million: the earliest is found first,
    # and when it was used the code is refused (the person types the next one).
    if last_step is not None and step <= last_step:
        return None
    return step


def seal_secret(secret_key: bytes, user_id: str, secret: str) -> bytes:
    """The secret encrypted for storage (FLEETREG_SECRET_KEY's bytes, bound to the user)."""
    return SecretBox(secret_key, TOTP_SECRETS).seal(user_id, secret)


def open_secret(secret_key: bytes, user_id: str, sealed: bytes) -> str:
    """The secret back; ValueError when it was sealed with another FLEETREG_SECRET_KEY or for
    another user."""
    try:
        return SecretBox(secret_key, TOTP_SECRETS).open(user_id, sealed)
    except ValueError as exc:
        raise ValueError(
            "the TOTP secret does not decrypt with this FLEETREG_SECRET_KEY for this user"
        ) from exc


def manual_key(secret: str) -> str:
    """The secret as a person types it into an app that cannot scan: groups of four
    (``ABCD EFGH ...``); apps ignore the spaces."""
    return " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))


def qr_svg(uri: str) -> str:
    """The QR code of ``uri`` as an SVG element to place in an HTML page as it is (Jinja:
    ``{{ svg | safe }}``): drawn by segno, black modules on a white background (readable on
    a dark page too), error correction M (ISO/IEC 18004: about 15 %), the 4-module quiet
    zone, 4 pixels a module. It holds a ``<title>``, a background and one ``<path>``: no
    script, no link, no external reference, no text of the URI (the secret is only in the
    path's geometry). The SVG namespace is declared, so the same text is a valid SVG file."""
    qr = segno.make_qr(uri, error="m", boost_error=False)
    out = io.BytesIO()
    qr.save(
        out,
        kind="svg",
        xmldecl=False,
        svgns=True,
        nl=False,
        scale=4,
        border=4,
        dark="#000",
        light="#fff",
        title=QR_TITLE,
        svgclass="totp-qr",
        lineclass=None,
    )
    return out.getvalue().decode()


@dataclass(frozen=True)
class Enrolment:
    """What the console shows once when a person sets up TOTP: the QR code (``svg``), the
    secret for manual entry (``manual_key``) and the URI it encodes."""

    secret: str
    uri: str
    svg: str
    manual_key: str


def enrolment(secret: str, email: str) -> Enrolment:
    """The enrolment page's content for ``secret`` and the person's e-mail address."""
    uri = provisioning_uri(secret, email)
    return Enrolment(secret=secret, uri=uri, svg=qr_svg(uri), manual_key=manual_key(secret))
