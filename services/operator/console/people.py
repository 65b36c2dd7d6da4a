"""What a person's sign-in and re-authentication share: the password check (argon2id in a
thread, a few at a time, never for a caller already refused), the second factor (a TOTP code
or a recovery code, each accepted once), and the half-signed-in state between the steps.

The half-signed-in state is no session row: it is a cookie sealed with FLEETREG_SECRET_KEY
(AES-256-GCM, :class:`shared.domain.webhooks.SecretBox` under a purpose of its own) and bound
to the sign-in form's double-submit token, holding the step reached, the e-mail address or
the user's ID, where to go afterwards, and an expiry (:data:`PENDING_SECONDS`). A session
row, and so a session, comes to be only once every factor passed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import time
import uuid
from typing import Any

from aiohttp import web
from aiohttp_session import get_session, new_session

from services.operator.console.auth import new_csrf_token, resources
from services.operator.console.sessions import end_session
from shared.db import people_sessions
from shared.db.people_sessions import PersonCredentials
from shared.domain import recovery_codes, totp
from shared.domain.passwords import hash_password, verify_password
from shared.domain.webhooks import SecretBox
from shared.throttle import THROTTLE, clear_refused, request_source

log = logging.getLogger(__name__)
PENDING_COOKIE = "fleetreg_console_pending"
PENDING_SECONDS = 300  # between two sign-in steps: long enough to open an authenticator app
PENDING_PURPOSE = b"fleetreg console pending sign-in v1"
# The sealed cookie's bound, written and read: under a browser's 4,096 bytes a cookie (name and
# attributes included), and above the state an e-mail address (254 characters) and an ASCII
# ``next`` (2,000) make, so a sign-in never refuses its own cookie as "took too long".
MAX_PENDING_CHARS = 3800
# argon2id takes 64 MiB and up to a second of CPU a run (shared/domain/passwords.py): at most
# this many at once per process; the others wait their turn on the event loop, not in RAM.
ARGON2_AT_ONCE = 2
_argon2 = asyncio.Semaphore(ARGON2_AT_ONCE)


def secret_field(form: Any, name: str, limit: int = 1024) -> str:
    """A password field as typed: never trimmed (spaces count), cut at ``limit`` (a longer
    text is no password the policy let in, and is checked as a wrong one)."""
    value = form.get(name, "")
    return value[:limit] if isinstance(value, str) else ""


def refuse_if_blocked(request: web.Request, target: str | None = None) -> None:
    """TooManyRequests (the 429 page) when the caller's address is blocked for its refusals:
    checked before any password is hashed, so a blocked guesser costs no argon2 run."""
    throttle = request.config_dict.get(THROTTLE)
    if throttle is not None:
        throttle.check_source(request_source(request), target)


async def password_matches(request: web.Request, person: PersonCredentials | None, password: str) -> bool:
    """Whether ``password`` is the person's; an unknown person (None) and one without a
    password take the same argon2 verify (``verify_password(None, ...)``). A match on a hash
    made with older parameters stores the new hash."""
    async with _argon2:
        check = await asyncio.to_thread(
            verify_password, person.password_hash if person is not None else None, password
        )
    if check.matches and check.new_hash is not None and person is not None:
        await people_sessions.set_password(resources(request).pool, person.id, check.new_hash)
    return check.matches and person is not None


async def second_factor_passes(request: web.Request, person: PersonCredentials, typed: str) -> bool:
    """Whether ``typed`` is a TOTP code not used before (6 digits) or one of the person's
    unused recovery codes; the code is taken (never accepted again) when it passes."""
    pool = resources(request).pool
    typed = typed.strip()[:64]
    if person.totp_sealed is None:
        return False
    if len(typed.replace(" ", "")) == totp.DIGITS:
        secret_key = resources(request).settings.secret_key.reveal().encode()
        try:
            secret = totp.open_secret(secret_key, person.id, bytes(person.totp_sealed))
        except ValueError:
            # Sealed under another FLEETREG_SECRET_KEY (rotated without re-enrolment): no
            # code can pass; a recovery code still can (docs/console.md).
            log.warning("a person's TOTP secret does not open with this FLEETREG_SECRET_KEY")
            return False
        step = totp.verify_code(secret, typed, at=time.time(), last_step=person.totp_last_step)
        return step is not None and await people_sessions.take_totp_step(pool, person.id, step)
    found = recovery_codes.matching(typed, await people_sessions.unused_recovery_codes(pool, person.id))
    return found is not None and await people_sessions.use_recovery_code(pool, person.id, found)


async def new_password_hash(password: str) -> str:
    """The argon2id hash of a new password (already checked by the policy), made in a thread."""
    async with _argon2:
        return await asyncio.to_thread(hash_password, password)


def _box(request: web.Request) -> SecretBox:
    return SecretBox(resources(request).settings.secret_key.reveal().encode(), PENDING_PURPOSE)


def set_pending(
    response: web.StreamResponse,
    request: web.Request,
    binding: str,
    state: dict[str, Any],
    *,
    cookie: str = PENDING_COOKIE,
    same_site: str = "Strict",
) -> None:
    """Keep the half-signed-in ``state`` in the browser, sealed and bound to ``binding`` (the
    sign-in form's token), for :data:`PENDING_SECONDS`, in ``cookie`` (single sign-on keeps
    its own, SameSite=Lax: the provider's redirect back is a cross-site navigation)."""
    box, expires = _box(request), time.time() + PENDING_SECONDS
    value = _sealed_state(box, binding, {**state, "exp": expires})
    if len(value) > MAX_PENDING_CHARS:
        # A long ``next`` of non-ASCII characters (up to 4 bytes each): the sign-in goes on,
        # to the console's home afterwards rather than to ``next``.
        value = _sealed_state(box, binding, {**state, "next": "/console/", "exp": expires})
    response.set_cookie(
        cookie,
        value,
        path="/console/",
        max_age=PENDING_SECONDS,
        httponly=True,
        samesite=same_site,
        secure=request.secure,
    )


def _sealed_state(box: SecretBox, binding: str, state: dict[str, Any]) -> str:
    # ensure_ascii=False: UTF-8, at most 4 bytes a character, where an escape takes 6 or 12.
    return base64.urlsafe_b64encode(box.seal(binding, json.dumps(state, ensure_ascii=False))).decode()


def pending(
    request: web.Request, binding: str, stage: str, *, cookie: str = PENDING_COOKIE
) -> dict[str, Any] | None:
    """The half-signed-in state at ``stage``, or None: none, another browser's, expired, or
    at another step."""
    raw = request.cookies.get(cookie, "")
    if not raw or len(raw) > MAX_PENDING_CHARS or not binding:
        return None
    try:
        state = json.loads(_box(request).open(binding, base64.urlsafe_b64decode(raw)))
    except (ValueError, binascii.Error):
        return None
    if not isinstance(state, dict) or state.get("stage") != stage:
        return None
    expires = state.get("exp")
    if not isinstance(expires, int | float) or expires < time.time():
        return None
    return state


def drop_pending(response: web.StreamResponse, cookie: str = PENDING_COOKIE) -> None:
    response.del_cookie(cookie, path="/console/")


async def start_session(request: web.Request, *, account_id: str, user_id: str) -> None:
    """Every factor passed (or an invitation just accepted): a new session of the person, a
    new identity (no fixation) holding the person's ID, a session ID and a fresh CSRF token;
    its row is written as the answer goes (console/sessions.py). A session the browser held
    before (a key's, another person's) ends."""
    # A lapsed session cookie sent along marked the call refused as it was read: it proved
    # who it is after all, and must neither count nor be answered 429.
    clear_refused(request)
    previous = await get_session(request)
    if previous.identity is not None:
        await end_session(resources(request).pool, str(previous.identity))
    session = await new_session(request)
    session.update(
        {
            "account_id": account_id,
            "user_id": user_id,
            "session_id": str(uuid.uuid4()),
            "csrf": new_csrf_token(),
        }
    )
