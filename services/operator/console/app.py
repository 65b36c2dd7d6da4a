"""The console's sub-application, mounted at /console/ by the operator's app.

Templates are Jinja2 through aiohttp-jinja2 (autoescaping on: every value an operator or a
device sent is escaped); sessions are aiohttp-session's, kept in the registry
(:mod:`sessions`). Static files (the stylesheet, the console's own script and the vendored
htmx with its licence) are served from ``static/``; nothing is fetched from elsewhere.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp_jinja2
import aiohttp_session
import jinja2
from aiohttp import web
from aiohttp.typedefs import Handler

from services.operator.console import filters
from services.operator.console.auth import Operator, SignInRequired, render, sign_in_location, signed_in
from services.operator.console.health import health_context
from services.operator.console.pages import (
    account,
    attestation_cas,
    auto_hooks,
    auto_registrations,
    bulk,
    bulk_hooks,
    bulk_upload,
    devices,
    invitations,
    live,
    people_signin,
    products,
    reauth,
    signin,
    sso_signin,
    webhooks,
)
from services.operator.console.sessions import COOKIE, PATH, STALE_SESSION, RegistryStorage
from services.operator.resources import RESOURCES
from services.operator.settings import ConsoleSettings
from shared.db.pool import TRANSIENT_ERRORS
from shared.errors import DomainError, TooManyRequests
from shared.logging import exception_summary
from shared.throttle import THROTTLE, blocked_refusal

SESSIONS = web.AppKey("console_sessions", RegistryStorage)
STATIC = Path(__file__).with_name("static")
TEMPLATES = Path(__file__).with_name("templates")
log = logging.getLogger(__name__)

# Every page forbids framing (clickjacking) and loads scripts, styles and images from the
# console itself only.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
# Every 401 carries a challenge (RFC 9110 section 15.5.2). The console proves who is signed in
# with a session cookie obtained from its sign-in form, not with an Authorization header, so
# its challenge names the form (the "Cookie" scheme of draft-broyer-http-cookie-auth): no
# Bearer challenge a client could answer would be honest here.
CONSOLE_CHALLENGE = f'Cookie realm="fleetreg console", form-action="/console/sign-in", cookie-name="{COOKIE}"'


@web.middleware
async def html_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Errors as pages, not JSON: no session sends a browser to the sign-in page; a domain
    error (403, 404, 409, 429, ...) or an HTTP error is a page saying what and why, with the
    console's navigation when the browser is signed in."""
    throttle = request.config_dict.get(THROTTLE)
    try:
        if throttle is not None:
            # A session whose key is already past its rate (auth.signed_in counted it): refused
            # before its row is read again, so a session's flood costs no registry read either.
            key_id = request.config_dict[SESSIONS].known_key(request)
            wait = throttle.console_key_wait(key_id) if key_id is not None else None
            if wait is not None:
                raise TooManyRequests(
                    "too many requests for this session's API key: slow down",
                    retry_after=wait,
                    rule="requests_per_key",
                )
    except TooManyRequests as exc:
        # Before any session or registry read: a flood costs nothing but this page.
        refused = render("error.html", request, None, {"status": 429, "message": exc.message}, status=429)
        refused.headers.update({**exc.headers(), **SECURITY_HEADERS})
        return refused
    response: web.StreamResponse
    try:
        response = await handler(request)
    except SignInRequired as exc:
        if request.method in ("GET", "HEAD"):
            response = web.HTTPSeeOther(sign_in_location(request))
        else:
            response = await _error_page(request, 401, exc.message)
    except TooManyRequests as exc:
        # A session past its key's rate: the page without asking who is signed in (that
        # would be one more request over the limit, and more registry reads).
        response = render("error.html", request, None, {"status": 429, "message": exc.message}, status=429)
        response.headers.update(exc.headers())
    except DomainError as exc:
        response = await _error_page(request, exc.status, exc.message)
        response.headers.update(exc.headers())
    except web.HTTPException as exc:
        response = exc if exc.status < 400 else await _error_page(request, exc.status, exc.reason)
    except TRANSIENT_ERRORS as exc:
        # The registry restarting: a page that says so (the API answers the same 503 as JSON).
        log.warning("registry unreachable", extra={"path": request.path, "error": exception_summary(exc)})
        response = render(
            "error.html",
            request,
            None,
            {
                "status": 503,
                "message": "The registry is unreachable for a moment; try again in a few seconds.",
            },
            status=503,
        )
        response.headers["Retry-After"] = "5"
    if (blocked := blocked_refusal(request)) is not None:
        # A call that proved nothing (a made-up session cookie, a wrong key at sign-in)
        # from a source past its refusal limit: the 429 page instead of its answer. One
        # that proves something (a session, the right key) was answered above.
        response = render(
            "error.html", request, None, {"status": 429, "message": blocked.message}, status=429
        )
        response.headers.update(blocked.headers())
    if not response.prepared:
        response.headers.update(SECURITY_HEADERS)
        if response.status == 401:
            response.headers.setdefault("WWW-Authenticate", CONSOLE_CHALLENGE)
        if request.get(STALE_SESSION) and COOKIE not in response.cookies:
            # A cookie naming no session (lapsed, or made up) was read and counted: the
            # browser drops it, so a lapsed session is read and counted once, not per call.
            response.del_cookie(COOKIE, path=PATH)
    return response


async def _error_page(request: web.Request, status: int, message: str) -> web.Response:
    try:
        operator: Operator | None = await signed_in(request)
    except DomainError:
        operator = None
    return render("error.html", request, operator, {"status": status, "message": message}, status=status)


def strict_transport(max_age_s: int) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    """A response-prepare hook adding ``Strict-Transport-Security`` to every console answer
    (pages, error pages, redirects, static files, downloads). Sent over http too: browsers
    ignore it there (RFC 6797 section 8.1), and behind a TLS-terminating proxy the service
    cannot always tell the browser's scheme. No ``includeSubDomains``: the console's host
    name tells nothing of what else runs under the parent domain."""
    value = f"max-age={max_age_s}"

    async def add(request: web.Request, response: web.StreamResponse) -> None:
        response.headers["Strict-Transport-Security"] = value

    return add


def create_console(settings: ConsoleSettings) -> web.Application:
    """The console app; ``/console/...`` paths of the operator service."""
    console = web.Application(middlewares=[html_errors])
    if settings.hsts_seconds > 0:
        console.on_response_prepare.append(strict_transport(settings.hsts_seconds))
    static = console.router.add_static("/static/", STATIC, append_version=True, name="static")
    environment = aiohttp_jinja2.setup(
        console,
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=jinja2.select_autoescape(default_for_string=True, default=True),
        undefined=jinja2.StrictUndefined,
        filters=filters.FILTERS,
        context_processors=[aiohttp_jinja2.request_processor],
    )
    # A static file's URL carries a hash of its content (?v=...): cached, never stale.
    environment.globals["static"] = lambda name: str(static.url_for(filename=name))
    storage = RegistryStorage(
        lambda request: request.config_dict[RESOURCES].pool,
        lambda request: request.config_dict[RESOURCES].keyring,
        max_age=settings.session_seconds,
        always_secure=settings.secure_cookie == "always",
    )
    console[SESSIONS] = storage
    console.cleanup_ctx.append(health_context(settings.pipeline_health_urls))
    aiohttp_session.setup(console, storage)
    # The upload's routes first: ``rejections/...`` is no registration ID.
    for pages in (
        signin,
        people_signin,
        sso_signin,
        invitations,
        reauth,
        account,
        products,
        auto_registrations,
        auto_hooks,
        attestation_cas,
        bulk_upload,
        bulk,
        bulk_hooks,
        devices,
        webhooks,
        live,
    ):
        console.add_routes(pages.ROUTES)
    return console
