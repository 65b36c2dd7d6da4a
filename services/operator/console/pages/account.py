"""A person's own security (``/console/account``, issue 28): TOTP enrolment (the QR code
drawn here as inline SVG, the key to type by hand, confirmed with a code before it is
stored sealed), recovery codes (shown once, made again on demand), the password (the
current one needed, the policy's refusals shown), and their console sessions, each
revocable, or every one but this one. A key's session has no person: the page says so.

Setting up an app and making new recovery codes need a recent sign-in (re-authentication,
console/auth.py), as revealing a code does: a session taken over must not move the second
factor. An enrolment under way keeps its secret in the session (sealed for the user, as the stored
one is) until a code confirms it; nothing is stored for the user before."""

from __future__ import annotations

import base64
import binascii
import time

from aiohttp import web

from services.operator.console import people
from services.operator.console.auth import Context, Operator, action, flash, page, render, resources
from services.operator.console.forms import Form, text
from services.operator.handlers import people as people_sessions
from shared.domain import recovery_codes, totp
from shared.domain.passwords import checked_password
from shared.errors import InvalidInput, NotFound
from shared.throttle import mark_refused

PENDING_TOTP = "totp_pending"  # the session's field of an enrolment under way (sealed secret)


def _person(operator: Operator) -> tuple[str, str]:
    user_id, session_id = operator.account.user_id, operator.account.session_id
    if user_id is None or session_id is None:
        raise NotFound("this session was opened with an API key: it has no person's account page")
    return user_id, session_id


def _secret_key(request: web.Request) -> bytes:
    return resources(request).settings.secret_key.reveal().encode()


def _pending_secret(request: web.Request, operator: Operator, user_id: str) -> str | None:
    sealed = operator.session.get(PENDING_TOTP)
    if not isinstance(sealed, str):
        return None
    try:
        return totp.open_secret(_secret_key(request), user_id, base64.b64decode(sealed, validate=True))
    except (ValueError, binascii.Error):
        return None


async def _context(request: web.Request, operator: Operator) -> Context:
    user_id, session_id = _person(operator)
    pool = resources(request).pool
    person = await people_sessions.person_by_id(pool, user_id)
    if person is None:
        raise NotFound("no such person")
    secret = _pending_secret(request, operator, user_id)
    return {
        "person": person,
        "totp_enrolled": person.totp_sealed is not None,
        "enrolment": totp.enrolment(secret, person.email) if secret else None,
        "codes_left": len(await people_sessions.unused_recovery_codes(pool, user_id)),
        "sessions": await people_sessions.sessions_of(pool, user_id),
        "this_session": session_id,
        "recovery_codes": (),
    }


@page("account.html")
async def show(request: web.Request, operator: Operator) -> Context:
    return await _context(request, operator)


@action(write=False, reauth=True)  # a stolen session must not move the second factor
async def start_totp(request: web.Request, operator: Operator, form: Form) -> str:
    """A new secret to enrol (the page shows its QR code and key until confirmed)."""
    user_id, _ = _person(operator)
    sealed = totp.seal_secret(_secret_key(request), user_id, totp.new_secret())
    operator.session[PENDING_TOTP] = base64.b64encode(sealed).decode()
    return "/console/account#totp"


@action(write=False)
async def confirm_totp(request: web.Request, operator: Operator, form: Form) -> web.StreamResponse:
    """A code of the new secret confirms it: stored sealed, and ten recovery codes shown once."""
    user_id, _ = _person(operator)
    secret = _pending_secret(request, operator, user_id)
    if secret is None:
        raise InvalidInput("start the set-up again: no authenticator is being set up", field="code")
    step = totp.verify_code(secret, text(form, "code"), at=time.time(), last_step=None)
    if step is None:
        raise InvalidInput("that code is not the one the app shows now: try the next one", field="code")
    pool = resources(request).pool
    await people_sessions.set_totp(
        pool, user_id, totp.seal_secret(_secret_key(request), user_id, secret), step
    )
    del operator.session[PENDING_TOTP]
    return await _with_new_codes(request, operator, "Two-step sign-in is on.")


@action(write=False, reauth=True)
async def new_recovery_codes(request: web.Request, operator: Operator, form: Form) -> web.StreamResponse:
    """A new set of recovery codes (the old ones stop working), shown once."""
    return await _with_new_codes(request, operator, "New recovery codes made: the old ones no longer work.")


async def _with_new_codes(request: web.Request, operator: Operator, done: str) -> web.StreamResponse:
    user_id, _ = _person(operator)
    codes = recovery_codes.new_codes()
    await people_sessions.replace_recovery_codes(
        resources(request).pool, user_id, recovery_codes.digests(codes)
    )
    flash(operator, done + " Keep the recovery codes below somewhere safe: they are shown only once.")
    context = await _context(request, operator)
    context["recovery_codes"] = codes
    return render("account.html", request, operator, context)


@action(write=False)
async def change_password(request: web.Request, operator: Operator, form: Form) -> str:
    user_id, session_id = _person(operator)
    pool = resources(request).pool
    person = await people_sessions.person_by_id(pool, user_id)
    if person is None:
        raise NotFound("no such person")
    new = people.secret_field(form, "new_password")
    if new != people.secret_field(form, "repeat_password"):
        raise InvalidInput("the new password and its repetition differ", field="repeat_password")
    checked = checked_password(new, email=person.email)  # the policy's refusal is flashed
    people.refuse_if_blocked(request)
    if not await people.password_matches(request, person, people.secret_field(form, "current_password")):
        mark_refused(request)
        raise InvalidInput("the current password is wrong", field="current_password")
    # Whoever opened a session with the old password is signed out with it (OWASP ASVS 3.3.3).
    ended = await people_sessions.change_password(
        pool, user_id, await people.new_password_hash(checked), session_id
    )
    elsewhere = (
        f" Signed out everywhere else ({ended} session{'s' if ended != 1 else ''} ended)." if ended else ""
    )
    flash(operator, "Password changed." + elsewhere)
    return "/console/account"


@action(write=False)
async def end_session(request: web.Request, operator: Operator, form: Form) -> str:
    user_id, session_id = _person(operator)
    ended = request.match_info["session_id"]
    if not await people_sessions.end_session(resources(request).pool, user_id, ended):
        raise NotFound("no such session of yours (it may have ended already)")
    if ended == session_id:
        operator.session.invalidate()
        return "/console/sign-in"
    flash(operator, "Session ended: that browser is signed out.")
    return "/console/account#sessions"


@action(write=False)
async def end_other_sessions(request: web.Request, operator: Operator, form: Form) -> str:
    user_id, session_id = _person(operator)
    count = await people_sessions.end_other_sessions(resources(request).pool, user_id, session_id)
    flash(operator, f"Signed out everywhere else ({count} session{'s' if count != 1 else ''} ended).")
    return "/console/account#sessions"


ROUTES: list[web.RouteDef] = [
    web.get("/account", show),
    web.post("/account/totp", start_totp),
    web.post("/account/totp/confirm", confirm_totp),
    web.post("/account/recovery-codes", new_recovery_codes),
    web.post("/account/password", change_password),
    web.post("/account/sessions/others/end", end_other_sessions),
    web.post("/account/sessions/{session_id}/end", end_session),
]
