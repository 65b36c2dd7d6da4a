"""A person signs in (issue 28), e-mail first: the address, then the password, then (when
TOTP is enrolled) a code from the authenticator app or a recovery code.

- The address's domain may pick the account's single sign-on (console/sso.py sends the
  browser to the account's OpenID Connect provider; pages/sso_signin.py is its callback);
  otherwise the password form follows. ``with=password`` skips single sign-on: an owner's
  way in when the provider is down; an account whose single sign-on is ``required`` lets
  no one but its owners past the password.
- A wrong password and an unknown address answer the same page and status, after the same
  one argon2 verify; each refusal counts against the caller's address and the address tried
  (shared.throttle), and a caller already blocked is answered 429 before any hashing.
- Between the steps nothing is stored in the registry (console/people.py: a sealed cookie
  living :data:`people.PENDING_SECONDS`); the session, a new one (no fixation), is made
  only once every factor passed, with the person's ID, a session ID and a fresh CSRF token.
"""

from __future__ import annotations

from aiohttp import web

from services.operator.console import people, sso
from services.operator.console.auth import parsed_form, resources
from services.operator.console.pages.signin import (
    SIGN_IN_COOKIE,
    check_sign_in_csrf,
    safe_next,
    sign_in_page,
    sign_in_token,
)
from services.operator.handlers import people as people_sessions
from services.operator.handlers import sso as sso_handlers
from services.operator.handlers.people import PersonCredentials
from shared.domain.roles import Role
from shared.throttle import mark_refused, target_of

MAX_EMAIL_CHARS = 254  # RFC 5321's path limit
WRONG_PASSWORD = "The e-mail address or the password is wrong."  # noqa: S105 (a message, no password)
SSO_REQUIRED = (
    "Your account signs its people in through its identity provider: sign in through your "
    "identity provider (start again with your e-mail address, without choosing a password)."
)
WRONG_CODE = "That code is wrong, or was used already. Type the code your app shows now, or a recovery code."


def _field(form: object, name: str, limit: int) -> str:
    value = form.get(name) if hasattr(form, "get") else None
    return value[:limit] if isinstance(value, str) else ""


def _person_target(email: str) -> str:
    # The refusal's (source, target) bucket: the address tried, however it is spelled.
    return target_of("person", email.casefold())


def _to_step(request: web.Request, location: str, state: dict[str, object]) -> web.HTTPSeeOther:
    response = web.HTTPSeeOther(location)
    people.set_pending(response, request, sign_in_token(request), state)
    response.set_cookie(
        SIGN_IN_COOKIE,
        sign_in_token(request),
        path="/console/",
        httponly=True,
        samesite="Strict",
        secure=request.secure,
    )
    return response


async def email_step(request: web.Request) -> web.StreamResponse:
    """The address: on to single sign-on (when its domain has one) or to the password form."""
    form = await parsed_form(request)
    check_sign_in_csrf(request, form)
    email = _field(form, "email", MAX_EMAIL_CHARS + 1).strip()
    # Control characters (NUL, which Postgres's text refuses, line breaks): no address has them.
    if not email or "@" not in email or len(email) > MAX_EMAIL_CHARS or not email.isprintable():
        return sign_in_page(request, "Enter your e-mail address (name@example.com).", status=400)
    next_path = safe_next(_field(form, "next", 2000))
    if _field(form, "with", 20) != "password":
        to_provider = await sso.single_sign_on_for(request, email, next_path)
        if to_provider is not None:
            return to_provider
    raise _to_step(
        request, "/console/sign-in/password", {"stage": "password", "email": email, "next": next_path}
    )


def _step_page(
    request: web.Request, template: str, state: dict[str, object], error: str = "", status: int = 200
) -> web.Response:
    return sign_in_page(request, error, status, template=template, context={"email": state.get("email", "")})


async def password_form(request: web.Request) -> web.StreamResponse:
    state = people.pending(request, sign_in_token(request), "password")
    if state is None:
        raise web.HTTPSeeOther("/console/sign-in")
    return _step_page(request, "sign_in_password.html", state)


async def password_step(request: web.Request) -> web.StreamResponse:
    form = await parsed_form(request)
    check_sign_in_csrf(request, form)
    state = people.pending(request, sign_in_token(request), "password")
    if state is None:
        return sign_in_page(request, "The sign-in took too long: start again.", status=400)
    email = str(state["email"])
    password = people.secret_field(form, "password")
    if not password:
        return _step_page(request, "sign_in_password.html", state, "Enter your password.", status=400)
    people.refuse_if_blocked(request, _person_target(email))
    person = await people_sessions.person_by_email(resources(request).pool, email)
    if not await people.password_matches(request, person, password):
        mark_refused(request, _person_target(email))
        return _step_page(request, "sign_in_password.html", state, WRONG_PASSWORD, status=401)
    assert person is not None
    pool = resources(request).pool
    if person.role != Role.OWNER and await sso_handlers.sso_required(pool, person.account_id):
        # The password was right (so this says nothing of an address not yet proved), and
        # nothing is counted: the person is sent where their account wants them to sign in.
        return _step_page(request, "sign_in_password.html", state, SSO_REQUIRED, status=403)
    if person.totp_sealed is not None:
        raise _to_step(
            request,
            "/console/sign-in/code",
            {"stage": "code", "user_id": person.id, "email": person.email, "next": state.get("next")},
        )
    return await _signed_in(request, person, str(state.get("next", "")))


async def code_form(request: web.Request) -> web.StreamResponse:
    state = people.pending(request, sign_in_token(request), "code")
    if state is None:
        raise web.HTTPSeeOther("/console/sign-in")
    return _step_page(request, "sign_in_code.html", state)


async def code_step(request: web.Request) -> web.StreamResponse:
    form = await parsed_form(request)
    check_sign_in_csrf(request, form)
    state = people.pending(request, sign_in_token(request), "code")
    if state is None:
        return sign_in_page(request, "The sign-in took too long: start again.", status=400)
    target = _person_target(str(state.get("email", "")))
    people.refuse_if_blocked(request, target)
    person = await people_sessions.person_by_id(resources(request).pool, str(state.get("user_id")))
    code = _field(form, "code", 64)
    if person is None or not code or not await people.second_factor_passes(request, person, code):
        mark_refused(request, target)
        return _step_page(request, "sign_in_code.html", state, WRONG_CODE, status=401)
    return await _signed_in(request, person, str(state.get("next", "")))


async def _signed_in(request: web.Request, person: PersonCredentials, next_path: str) -> web.StreamResponse:
    """Every factor passed: a new session of the person, and on to where they were going."""
    await people.start_session(request, account_id=person.account_id, user_id=person.id)
    response = web.HTTPSeeOther(safe_next(next_path))
    people.drop_pending(response)
    response.del_cookie(SIGN_IN_COOKIE, path="/console/")
    raise response


ROUTES: list[web.RouteDef] = [
    web.post("/sign-in/email", email_step),
    web.get("/sign-in/password", password_form),
    web.post("/sign-in/password", password_step),
    web.get("/sign-in/code", code_form),
    web.post("/sign-in/code", code_step),
]
