"""Single sign-on: the account's OpenID Connect provider (an admin's: who signs in, and as
what, is decided here)."""

from __future__ import annotations

from aiohttp import web

from services.operator.handlers import sso as handlers
from services.operator.routes.common import authed, resources
from services.operator.views import sso as views
from services.operator.views.common import Json
from shared.domain.accounts import Account
from shared.domain.roles import Role
from shared.http import json_response, parse_json_body

# Where the provider sends the browser back (the console's callback), registered there.
CALLBACK_PATH = "/console/sso/callback"


def _redirect_uri(request: web.Request) -> str:
    # FLEETREG_CONSOLE_URL, as invitation links; else the address the request came to.
    base = resources(request).settings.console.console_url or str(request.url.origin())
    return base + CALLBACK_PATH


@authed(role=Role.ADMIN)
async def show_sso(request: web.Request, account: Account) -> Json:
    found = await handlers.find_sso(resources(request).pool, account)
    return views.sso(found, redirect_uri=_redirect_uri(request))


@authed(role=Role.ADMIN)
async def configure_sso(request: web.Request, account: Account) -> web.Response:
    body = await parse_json_body(request)
    r = resources(request)
    found, created = await handlers.configure_sso(r.pool, r.settings.secret_key, account, body)
    return json_response(
        views.sso(found, redirect_uri=_redirect_uri(request)), status=201 if created else 200
    )


@authed(role=Role.ADMIN)
async def remove_sso(request: web.Request, account: Account) -> Json:
    await handlers.remove_sso(resources(request).pool, account)
    return views.removed()


ROUTES: list[web.RouteDef] = [
    web.get("/v1/sso", show_sso),
    web.put("/v1/sso", configure_sso),
    web.delete("/v1/sso", remove_sso),
]
