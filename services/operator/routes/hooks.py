"""An auto registration's hook: a test call with a sample request, and its recent calls.
Setting the hook is the registration's own update (routes/products.py)."""

from __future__ import annotations

from aiohttp import web

from services.operator.handlers import hooks as handlers
from services.operator.routes.common import authed, resources
from services.operator.views import hooks as views
from services.operator.views.common import Json
from shared.domain.accounts import Account
from shared.domain.roles import Role
from shared.http import parse_json_body, path_id, query_params


# A hook is an admin's, its calls too (docs/security.md, "Roles"): the test is a signed
# request to its URL, and the calls show what the hook was asked and answered.
@authed(role=Role.ADMIN)
async def try_auto_hook(request: web.Request, account: Account) -> Json:
    r = resources(request)
    registration_id = path_id(request, "registration_id")
    body = await parse_json_body(request)
    tested = await handlers.sample_call(
        r.pool, account, registration_id, body, secret_key=r.settings.secret_key, caller=r.hook_caller
    )
    return views.hook_test(tested)


@authed(role=Role.ADMIN)
async def list_auto_hook_calls(request: web.Request, account: Account) -> Json:
    registration_id = path_id(request, "registration_id")
    found = await handlers.recent_calls(
        resources(request).pool, account, registration_id, query_params(request)
    )
    return views.hook_calls(found)


ROUTES: list[web.RouteDef] = [
    web.post("/v1/auto-registrations/{registration_id}/hook/test", try_auto_hook),
    web.get("/v1/auto-registrations/{registration_id}/hook/calls", list_auto_hook_calls),
]
