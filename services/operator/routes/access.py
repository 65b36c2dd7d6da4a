"""Access: the account a key acts for, and the account's API keys."""

from __future__ import annotations

from aiohttp import web

from services.operator.handlers import access as handlers
from services.operator.routes.common import authed, resources
from services.operator.views import access as views
from services.operator.views.common import Json
from shared.domain.accounts import Account
from shared.domain.roles import Role
from shared.http import parse_json_body, path_id


@authed()
async def whoami(request: web.Request, account: Account) -> Json:
    return views.account(account)


@authed()
async def list_keys(request: web.Request, account: Account) -> Json:
    return views.api_keys(await handlers.list_api_keys(resources(request).pool, account))


@authed(status=201)
async def create_key(request: web.Request, account: Account) -> Json:
    body = await parse_json_body(request)
    r = resources(request)
    issued = await handlers.create_api_key(r.pool, account, body, max_active=r.settings.max_api_keys)
    return views.issued_api_key(issued)


# Any role revokes its own keys (a viewer too: a leaked dashboard key is ended by its
# holder); another's key needs the admin role, which the handler checks.
@authed(role=Role.VIEWER)
async def revoke_key(request: web.Request, account: Account) -> Json:
    key_id = path_id(request, "key_id")
    await handlers.revoke_api_key(resources(request).pool, account, key_id)
    return views.revoked_api_key(key_id)


@authed()
async def issuing_ca(request: web.Request, account: Account) -> Json:
    r = resources(request)
    return views.issuing_ca(await handlers.issuing_ca(r.pool, r.settings.secret_key, account))


@authed()
async def upload_issuing_ca(request: web.Request, account: Account) -> Json:
    body = await parse_json_body(request)
    r = resources(request)
    return views.issuing_ca(await handlers.upload_issuing_ca(r.pool, r.settings.secret_key, account, body))


ROUTES: list[web.RouteDef] = [
    web.get("/v1/account", whoami),
    web.get("/v1/account/issuing-ca", issuing_ca),
    web.put("/v1/account/issuing-ca", upload_issuing_ca),
    web.get("/v1/api-keys", list_keys),
    web.post("/v1/api-keys", create_key),
    web.delete("/v1/api-keys/{key_id}", revoke_key),
]
