"""Who is using the console, and the checks every page and form goes through.

- A page (:func:`page`) needs a signed-in session; without one, the browser is sent to the
  sign-in page (a GET) or refused (anything else).
- A form (:func:`action`) also needs its CSRF token: the session's synchronizer token in the
  form field ``csrf_token`` or the header ``X-CSRF-Token`` (OWASP CSRF Prevention Cheat
  Sheet, "Synchronizer Token Pattern"), and, when the browser sends ``Origin``, our own host.
  A read-only session may submit no form that changes anything (403), as a read-only API
  key may call no such route.
- Both take a ``role``: the least role a page or form needs (docs/security.md, "Roles"), as
  the API's routes do (the webhook pages and the hook forms: admin); a session's role is its
  key's. By default a page is a viewer's and a form an operator's.
"""

from __future__ import annotations

import functools
import hmac
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp_jinja2
from aiohttp import web
from aiohttp.web_request import FileField
from aiohttp_session import Session, get_session
from multidict import MultiDictProxy

from services.operator.console.sessions import throttle_identity
from services.operator.resources import RESOURCES, Resources
from shared.db import accounts, people_sessions
from shared.domain.accounts import Account
from shared.domain.roles import Role, at_least
from shared.errors import DomainError, Forbidden, InvalidInput, Unauthorized
from shared.throttle import THROTTLE

CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
# The request was counted against its session's key (an error page asks who is signed in again).
KEY_COUNTED = web.RequestKey("console_key_counted", bool)
# The most sensitive actions need the person to have proved who they are this recently.
REAUTH_SECONDS = 300
# When the person of the request's session last proved who they are (None: a key's session).
AUTHENTICATED_AT = web.RequestKey("console_authenticated_at", datetime)


class SignInRequired(Unauthorized):
    """No signed-in session (never was, expired, signed out, or its key revoked)."""


@dataclass(frozen=True)
class Operator:
    """The signed-in operator: the account, the key the session was opened with, the
    session's CSRF token (every form carries it) and the session itself (flash messages)."""

    account: Account
    csrf: str
    session: Session

    @property
    def read_only(self) -> bool:
        return self.account.read_only

    @property
    def admin(self) -> bool:
        """Whether the session may see and change webhooks and registration hooks."""
        return at_least(self.account.role, Role.ADMIN)

    def require(self, role: str, *, write: bool = True) -> None:
        """Forbidden (403) unless the session's role is at least ``role``; a read-only
        session asked to change something (``write``) is told it is read-only, as the API
        tells a read-only key (shared.http.require_role)."""
        if at_least(self.account.role, role):
            return
        if self.read_only and write:
            raise Forbidden(
                "this session is read-only (a viewer's, or a read-only key's): it cannot change anything",
                rule="scope=read-only",
            )
        raise Forbidden(
            f"this needs the {role} role; this session's role is {self.account.role}", rule=f"role>={role}"
        )


def resources(request: web.Request) -> Resources:
    return request.config_dict[RESOURCES]


async def signed_in(request: web.Request) -> Operator:
    """The signed-in operator (SignInRequired otherwise). The session's credential, a key
    or a person, is checked on every request: revoking the key, removing the person or
    ending the session ends it at once, and a person acts with their current role; a key's
    session ends once its account has a person (its console is theirs then). Each
    call counts one request of the session's key (or person) against
    ``FLEETREG_LIMIT_REQUESTS_PER_KEY`` (TooManyRequests past it), as the key's own API
    calls do: a session is no way around its key's rate."""
    session = await get_session(request)
    identity = throttle_identity(session)
    if identity is None:
        raise SignInRequired("sign in first", field="session")
    throttle = request.config_dict.get(THROTTLE)
    if throttle is not None and not request.get(KEY_COUNTED):  # once a request, before more reads
        request[KEY_COUNTED] = True
        await throttle.check_console_key(identity)
    user_id, key_id = session.get("user_id"), session.get("key_id")
    account: Account | None
    if isinstance(user_id, str):
        found = await people_sessions.actor_for_session(
            resources(request).pool, str(session.get("session_id", "")), user_id
        )
        account = found[0] if found is not None else None
        if found is not None:
            request[AUTHENTICATED_AT] = found[1]
    else:
        # The session's credential is the key it was opened with, by its ID: looked up afresh.
        account = await accounts.account_for_key_id(resources(request).pool, str(key_id))
        if account is not None and await people_sessions.account_has_users(
            resources(request).pool, account.id
        ):
            account = None  # the account has people now: its console is theirs (issue 28)
    if account is None or account.id != session.get("account_id"):
        session.invalidate()
        raise SignInRequired("the session has ended (signed out or revoked); sign in again", field="session")
    return Operator(account, str(session.get("csrf", "")), session)


def flash(operator: Operator, text: str, level: str = "ok") -> None:
    """A message shown once, on the next page (after a form's redirect)."""
    operator.session["flash"] = [*operator.session.get("flash", []), {"level": level, "text": text}]


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def check_origin(request: web.Request) -> None:
    """A cross-site form post is refused even before its token is looked at."""
    origin = request.headers.get("Origin")
    if origin is not None and origin != "null" and urlsplit(origin).netloc != request.host:
        raise Forbidden("the form was sent from another site", field="Origin", rule="same-origin")
    if origin == "null":
        raise Forbidden("the form was sent from an opaque origin", field="Origin", rule="same-origin")


def check_csrf(expected: str, presented: str | None) -> None:
    if not expected or not presented or not hmac.compare_digest(expected.encode(), presented.encode()):
        raise Forbidden(
            "the form's CSRF token is missing or wrong; reload the page and try again",
            field=CSRF_FIELD,
            rule="csrf",
        )


async def parsed_form(request: web.Request) -> MultiDictProxy[str | bytes | bytearray | FileField]:
    """The posted form; a body that is no well-formed form (a multipart body without its
    boundary, cut short, ...) is a 400, never the parser's exception as a 500. A body past
    the size limit stays aiohttp's 413."""
    try:
        return await request.post()
    except web.HTTPException:
        raise
    except Exception:  # the multipart and urlencoded parsers raise ValueError, AssertionError, ...
        raise InvalidInput(
            "the form could not be read: the body is not a well-formed form", field="body", rule="form"
        ) from None


Context = dict[str, Any]
PageHandler = Callable[[web.Request, Operator], Awaitable[Context]]
ActionHandler = Callable[[web.Request, Operator, Any], Awaitable[str | web.StreamResponse]]
Route = Callable[[web.Request], Awaitable[web.StreamResponse]]


def render(
    template: str, request: web.Request, operator: Operator | None, context: Context, status: int = 200
) -> web.Response:
    """A page rendered with the layout's context: who is signed in, the CSRF token, and the
    flash messages (shown once)."""
    shown: Context = {"operator": operator, "csrf": operator.csrf if operator else "", "flash": []}
    if operator is not None:
        shown["flash"] = operator.session.pop("flash", [])
    response = aiohttp_jinja2.render_template(template, request, {**shown, **context}, status=status)
    response.headers["Cache-Control"] = "no-store"
    return response


def page(template: str, *, role: str = Role.VIEWER, reauth: bool = False) -> Callable[[PageHandler], Route]:
    """A GET page of a signed-in operator whose role is at least ``role`` (403 otherwise):
    the handler returns the template's context. With ``reauth``, a person who has not proved
    who they are within :data:`REAUTH_SECONDS` is sent to re-authenticate first, and back
    here after."""

    def decorate(handler: PageHandler) -> Route:
        @functools.wraps(handler)
        async def answer(request: web.Request) -> web.StreamResponse:
            operator = await signed_in(request)
            operator.require(role, write=False)
            if reauth:
                check_recent_authentication(request, operator, request.path_qs)
            return render(template, request, operator, await handler(request, operator))

        return answer

    return decorate


def action(
    *, write: bool = True, read_form: bool = True, role: str | None = None, reauth: bool = False
) -> Callable[[ActionHandler], Route]:
    """A form post of a signed-in operator. Checks origin and CSRF token (from the form, or
    the ``X-CSRF-Token`` header when ``read_form`` is False: a streamed upload) and the
    session's role: at least ``role``, by default operator for a ``write`` (a read-only
    session changes nothing) and viewer otherwise. With ``reauth`` (revealing or rotating a
    code, creating keys, changing roles), a person who has not proved who they are within
    :data:`REAUTH_SECONDS` is sent to re-authenticate, then back to the form's page; a key's
    session is not asked (it has no password). The handler gets the parsed form (or
    None) and returns where to go next (303 See Other), or a response of its own. A
    domain error (invalid input, not found, conflict) is flashed on the page the form came
    from."""

    def decorate(handler: ActionHandler) -> Route:
        @functools.wraps(handler)
        async def answer(request: web.Request) -> web.StreamResponse:
            check_origin(request)
            operator = await signed_in(request)
            form = await parsed_form(request) if read_form else None
            presented = form.get(CSRF_FIELD) if form is not None else request.headers.get(CSRF_HEADER)
            check_csrf(operator.csrf, presented if isinstance(presented, str) else None)
            operator.require(role or (Role.OPERATOR if write else Role.VIEWER), write=write)
            if reauth:
                back = _same_site_path(request, request.headers.get("Referer", ""))
                check_recent_authentication(request, operator, back)
            try:
                outcome = await handler(request, operator, form)
            except (Forbidden, Unauthorized):
                raise
            except DomainError as exc:
                flash(operator, exc.message, "error")
                back = request.headers.get("Referer", "")
                raise web.HTTPSeeOther(_same_site_path(request, back)) from None
            if isinstance(outcome, web.StreamResponse):
                return outcome
            raise web.HTTPSeeOther(outcome)

        return answer

    return decorate


def check_recent_authentication(request: web.Request, operator: Operator, back: str) -> None:
    """Send a person whose last proof of identity is older than :data:`REAUTH_SECONDS` to
    the re-authentication page (coming back to ``back``); a key's session passes."""
    if operator.account.user_id is None:
        return
    proved = request.get(AUTHENTICATED_AT)
    if proved is not None and (datetime.now(UTC) - proved).total_seconds() < REAUTH_SECONDS:
        return
    raise web.HTTPSeeOther("/console/re-auth?next=" + quote(back, safe="/"))


def _same_site_path(request: web.Request, referer: str) -> str:
    """Where to go back to after a refused form: the referring console page, or the home."""
    parts = urlsplit(referer)
    if parts.netloc == request.host and parts.path.startswith("/console/"):
        return parts.path + (f"?{parts.query}" if parts.query else "")
    return "/console/"


def sign_in_location(request: web.Request) -> str:
    """The sign-in page, coming back to this page afterwards."""
    return "/console/sign-in?next=" + quote(request.path_qs, safe="/")
