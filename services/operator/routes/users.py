"""People: the account's users and invitations, and its service accounts with their keys.
Every route here needs the admin role (URLs with tokens and keys live here); what an admin
may not do to an owner is the handlers' (shared.domain.people)."""

from __future__ import annotations

from aiohttp import web

from services.operator.handlers import users as handlers
from services.operator.routes.common import authed, resources
from services.operator.views import users as views
from services.operator.views.common import Json
from shared.domain.accounts import Account
from shared.domain.roles import Role
from shared.http import parse_json_body, path_id


def _console_base(request: web.Request) -> str:
    """Where invitation links point: FLEETREG_CONSOLE_URL, else the address this request came to."""
    return resources(request).settings.console.console_url or str(request.url.origin())


@authed(status=201, role=Role.ADMIN)
async def invite_user(request: web.Request, account: Account) -> Json:
    body = await parse_json_body(request)
    issued = await handlers.invite(resources(request).pool, account, body)
    return views.issued_invitation(issued, handlers.invitation_url(_console_base(request), issued.token))


@authed(role=Role.ADMIN)
async def list_users(request: web.Request, account: Account) -> Json:
    found = await handlers.list_people(resources(request).pool, account)
    return views.people(found.users, found.invitations)


@authed(role=Role.ADMIN)
async def update_user(request: web.Request, account: Account) -> Json:
    user_id = path_id(request, "user_id")
    body = await parse_json_body(request)
    return views.user(await handlers.change_role(resources(request).pool, account, user_id, body))


@authed(role=Role.ADMIN)
async def remove_user(request: web.Request, account: Account) -> Json:
    user_id = path_id(request, "user_id")
    return views.removed_user(await handlers.remove_user(resources(request).pool, account, user_id))


@authed(role=Role.ADMIN)
async def revoke_invitation(request: web.Request, account: Account) -> Json:
    invitation_id = path_id(request, "invitation_id")
    await handlers.revoke_invitation(resources(request).pool, account, invitation_id)
    return views.revoked_invitation(invitation_id)


@authed(role=Role.ADMIN)
async def list_service_accounts(request: web.Request, account: Account) -> Json:
    return views.service_accounts(await handlers.list_service_accounts(resources(request).pool, account))


@authed(status=201, role=Role.ADMIN)
async def create_service_account(request: web.Request, account: Account) -> Json:
    body = await parse_json_body(request)
    created = await handlers.create_service_account(resources(request).pool, account, body)
    return views.service_account(created)


@authed(role=Role.ADMIN)
async def remove_service_account(request: web.Request, account: Account) -> Json:
    service_account_id = path_id(request, "service_account_id")
    revoked = await handlers.remove_service_account(resources(request).pool, account, service_account_id)
    return views.removed_service_account(service_account_id, revoked)


@authed(status=201, role=Role.ADMIN)
async def create_service_account_key(request: web.Request, account: Account) -> Json:
    service_account_id = path_id(request, "service_account_id")
    body = await parse_json_body(request)
    r = resources(request)
    issued, name = await handlers.create_service_account_key(
        r.pool, account, service_account_id, body, max_active=r.settings.max_api_keys
    )
    return views.issued_service_account_key(issued, name)


ROUTES: list[web.RouteDef] = [
    web.post("/v1/users", invite_user),
    web.get("/v1/users", list_users),
    web.patch("/v1/users/{user_id}", update_user),
    web.delete("/v1/users/{user_id}", remove_user),
    web.delete("/v1/invitations/{invitation_id}", revoke_invitation),
    web.get("/v1/service-accounts", list_service_accounts),
    web.post("/v1/service-accounts", create_service_account),
    web.delete("/v1/service-accounts/{service_account_id}", remove_service_account),
    web.post("/v1/service-accounts/{service_account_id}/api-keys", create_service_account_key),
]
