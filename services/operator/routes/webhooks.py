"""Webhooks and their deliveries: an admin's, every operation, reads too (docs/security.md,
"Roles"): a webhook's URL often carries the receiver's token, and it sends the account's events
out."""

from __future__ import annotations

from aiohttp import web

from services.operator.handlers import webhooks as handlers
from services.operator.routes.common import authed, resources
from services.operator.views import webhooks as views
from services.operator.views.common import Json, page
from shared.domain.accounts import Account
from shared.domain.roles import Role
from shared.http import parse_json_body, path_id, query_params


@authed(status=201, role=Role.ADMIN)
async def create_webhook(request: web.Request, account: Account) -> Json:
    r = resources(request)
    body = await parse_json_body(request)
    settings = r.settings
    issued = await handlers.create_webhook(
        r.pool,
        account,
        body,
        secret_key=settings.secret_key,
        allow_private=settings.webhooks_allow_private_urls,
        max_webhooks=settings.max_webhooks,
    )
    return views.issued_webhook(issued)


@authed(role=Role.ADMIN)
async def list_webhooks(request: web.Request, account: Account) -> Json:
    found = await handlers.list_webhooks(resources(request).pool, account)
    return views.webhooks(found, masked=account.read_only)


@authed(role=Role.ADMIN)
async def get_webhook(request: web.Request, account: Account) -> Json:
    webhook_id = path_id(request, "webhook_id")
    found = await handlers.get_webhook(resources(request).pool, account, webhook_id)
    return views.webhook(found, masked=account.read_only)


@authed(role=Role.ADMIN)
async def delete_webhook(request: web.Request, account: Account) -> Json:
    webhook_id = path_id(request, "webhook_id")
    await handlers.delete_webhook(resources(request).pool, account, webhook_id)
    return views.deleted_webhook(webhook_id)


@authed(role=Role.ADMIN)
async def enable_webhook(request: web.Request, account: Account) -> Json:
    webhook_id = path_id(request, "webhook_id")
    found = await handlers.enable_webhook(resources(request).pool, account, webhook_id)
    return views.webhook(found)


@authed(role=Role.ADMIN)
async def list_webhook_deliveries(request: web.Request, account: Account) -> Json:
    r = resources(request)
    webhook_id = path_id(request, "webhook_id")
    found = await handlers.list_webhook_deliveries(
        r.pool, account, webhook_id, query_params(request), page_limit_max=r.settings.page_limit_max
    )
    return page("deliveries", found, views.webhook_delivery)


ROUTES: list[web.RouteDef] = [
    web.post("/v1/webhooks", create_webhook),
    web.get("/v1/webhooks", list_webhooks),
    web.get("/v1/webhooks/{webhook_id}", get_webhook),
    web.delete("/v1/webhooks/{webhook_id}", delete_webhook),
    web.post("/v1/webhooks/{webhook_id}/enable", enable_webhook),
    web.get("/v1/webhooks/{webhook_id}/deliveries", list_webhook_deliveries),
]
