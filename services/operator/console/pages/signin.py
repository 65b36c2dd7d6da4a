"""Sign in with an API key, sign out, and the console's home page.

Before sign-in there is no session: the sign-in form's CSRF token is a double-submit
cookie (HttpOnly, SameSite=Strict) compared with the form's field, so an anonymous visitor
costs no registry row. Signing in opens a new session (a new identity: no session fixation)
holding the key's ID, a fresh CSRF token and the key itself sealed with FLEETREG_SECRET_KEY
(the console forwards bulk uploads to the bulk API with it, services/operator/console/bulk_api.py).
"""

from __future__ import annotations

import base64
from typing import Any

from aiohttp import web
from aiohttp_session import get_session, new_session
from multidict import MultiDictProxy

from services.operator.console.auth import (
    CSRF_FIELD,
    Operator,
    action,
    check_csrf,
    check_origin,
    new_csrf_token,
    page,
    parsed_form,
    render,
    resources,
)
from services.operator.console.sessions import end_session
from services.operator.handlers import access
from services.operator.handlers import people as people_sessions
from services.operator.views import access as access_views
from shared.domain.webhooks import CONSOLE_SESSION_KEYS, SecretBox
from shared.errors import Unauthorized
from shared.http import account_for
from shared.throttle import THROTTLE, clear_refused, mark_refused

SIGN_IN_COOKIE = "fleetreg_console_sign_in"
MAX_KEY_CHARS = 200  # keys are 40-odd characters; a longer text is not a key


def safe_next(value: str | None) -> str:
    """Where to go after sign-in: a console path only (never another site: no open redirect)."""
    if (
        value
        and value.startswith("/console/")
        and "//" not in value
        and "\\" not in value
        and value.isprintable()  # a tab or line break a browser drops could make "//" of "/\t/"
    ):
        return value
    return "/console/"


def sign_in_page(
    request: web.Request,
    error: str = "",
    status: int = 200,
    *,
    template: str = "sign_in.html",
    context: dict[str, object] | None = None,
) -> web.Response:
    """A page of the sign-in steps (before any session), with the form's double-submit token
    (:data:`SIGN_IN_COOKIE`) set again."""
    token = sign_in_token(request)
    response = render(
        template,
        request,
        None,
        {
            "sign_in_csrf": token,
            "next": safe_next(request.query.get("next")),
            "error": error,
            **(context or {}),
        },
        status=status,
    )
    response.set_cookie(
        SIGN_IN_COOKIE, token, path="/console/", httponly=True, samesite="Strict", secure=request.secure
    )
    return response


def sign_in_token(request: web.Request) -> str:
    """The browser's sign-in form token (double-submit cookie), or a new one."""
    token = request.cookies.get(SIGN_IN_COOKIE)
    return token if token and len(token) <= 64 else new_csrf_token()


def check_sign_in_csrf(request: web.Request, form: MultiDictProxy[Any]) -> None:
    """A sign-in step's form: same origin, and its token is the browser's cookie."""
    check_origin(request)
    presented = form.get(CSRF_FIELD)
    check_csrf(request.cookies.get(SIGN_IN_COOKIE, ""), presented if isinstance(presented, str) else None)


async def sign_in_form(request: web.Request) -> web.StreamResponse:
    return sign_in_page(request)


async def sign_in(request: web.Request) -> web.StreamResponse:
    check_origin(request)
    form = await parsed_form(request)
    check_sign_in_csrf(request, form)
    key = form.get("api_key")
    key = key.strip() if isinstance(key, str) else ""
    if not key:
        # No credential at all: 400, not counted (as a call without Authorization on the APIs).
        return sign_in_page(request, "Enter an account API key.", status=400)
    if len(key) > MAX_KEY_CHARS:
        mark_refused(request)
        return sign_in_page(request, "Enter an account API key.", status=401)
    r = resources(request)
    try:
        # The key is checked as every API checks one (its per-request rate is the console's:
        # counted just below, so no request is given here).
        account = await account_for(key, r.pool)
    except Unauthorized:
        mark_refused(request)  # counts against the source, as a wrong key on the API does
        return sign_in_page(request, "That API key is unknown or revoked.", status=401)
    assert account.key_id is not None
    if await people_sessions.account_has_users(r.pool, account.id):
        # Once the account has people, they sign in as themselves (issue 28); automation
        # keeps its keys for the APIs and the CLI. The key was right: nothing is counted.
        return sign_in_page(
            request,
            "This account's console is signed in to by its people: sign in with your e-mail "
            "address. API keys still work for the APIs and the CLI.",
            status=403,
        )
    throttle = request.config_dict.get(THROTTLE)
    if throttle is not None:
        # A sign-in is one console request of its key (TooManyRequests, the 429 page, past
        # the key's rate) and writes a session row: unlimited, one key opened 1,500
        # sessions in 4.2 s, each a row kept for FLEETREG_CONSOLE_SESSION_SECONDS.
        await throttle.check_console_key(account.key_id)
    previous = await get_session(request)
    # The right key proved the call: a lapsed or made-up session cookie sent with the form
    # marked it refused as it was read (sessions.py), and it must neither count nor have
    # this answer (and the session written for it) replaced by the 429 page (console/app.py).
    clear_refused(request)
    if previous.identity is not None:  # signing in again (another key, say): the old session ends
        await end_session(r.pool, str(previous.identity))
    session = await new_session(request)
    box = SecretBox(r.settings.secret_key.reveal().encode(), CONSOLE_SESSION_KEYS)
    session.update(
        {
            "account_id": account.id,
            "key_id": account.key_id,
            "csrf": new_csrf_token(),
            "sealed_key": base64.b64encode(box.seal(account.key_id, key)).decode(),
        }
    )
    target = form.get("next")
    response = web.HTTPSeeOther(safe_next(target if isinstance(target, str) else None))
    response.del_cookie(SIGN_IN_COOKIE, path="/console/")
    raise response


@action(write=False)
async def sign_out(request: web.Request, operator: Operator, form: object) -> str:
    operator.session.invalidate()
    return "/console/sign-in"


@page("home.html")
async def home(request: web.Request, operator: Operator) -> dict[str, object]:
    """The account's areas, and its CA of device certificates (to download)."""
    r = resources(request)
    return {
        "issuing_ca": access_views.issuing_ca(
            await access.issuing_ca(r.pool, r.settings.secret_key, operator.account)
        )
    }


ROUTES: list[web.RouteDef] = [
    web.get("/", home),
    web.get("/sign-in", sign_in_form),
    web.post("/sign-in", sign_in),
    web.post("/sign-out", sign_out),
]
