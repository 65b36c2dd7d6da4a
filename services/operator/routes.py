"""The operator API's HTTP routes: each authenticates, parses the request, calls one
handler and shapes its answer with a view. ``ROUTES`` lists them for the app."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from services.operator import exports, handlers, views
from services.operator.resources import RESOURCES, Resources
from shared.domain.accounts import Account
from shared.http import account_for, api_key, json_response, parse_json_body, path_id, query_params

OPENAPI = Path(__file__).with_name("openapi.yaml")
log = logging.getLogger(__name__)

AuthedRoute = Callable[[web.Request, Account], Awaitable[views.Json]]
Route = Callable[[web.Request], Awaitable[web.Response]]


def authed(status: int = 200) -> Callable[[AuthedRoute], Route]:
    """A route of an account: the request's API key names it (401 otherwise); a read-only
    key may call only GET routes (403 otherwise: every other method changes state); the
    view the route returns is answered as JSON with ``status``."""

    def decorate(route: AuthedRoute) -> Route:
        @functools.wraps(route)
        async def answer(request: web.Request) -> web.Response:
            key = api_key(request)  # first: a request without a key is refused before any I/O
            write = request.method not in ("GET", "HEAD")
            account = await account_for(key, request.app[RESOURCES].pool, write=write, request=request)
            return json_response(await route(request, account), status=status)

        return answer

    return decorate


def _resources(request: web.Request) -> Resources:
    return request.app[RESOURCES]


async def openapi(request: web.Request) -> web.Response:
    return web.Response(text=OPENAPI.read_text(encoding="utf-8"), content_type="application/yaml")


@authed()
async def whoami(request: web.Request, account: Account) -> views.Json:
    return views.account(account)


# ---------------------------------------------------------------- products


@authed(status=201)
async def create_product(request: web.Request, account: Account) -> views.Json:
    body = await parse_json_body(request)
    return views.product(
        await handlers.create_product(_resources(request).pool, account, body), masked=account.read_only
    )


@authed()
async def list_products(request: web.Request, account: Account) -> views.Json:
    return views.products(
        await handlers.list_products(_resources(request).pool, account), masked=account.read_only
    )


@authed()
async def get_product(request: web.Request, account: Account) -> views.Json:
    product_id = path_id(request, "product_id")
    return views.product(
        await handlers.get_product(_resources(request).pool, account, product_id), masked=account.read_only
    )


@authed(status=201)
async def add_service(request: web.Request, account: Account) -> views.Json:
    product_id = path_id(request, "product_id")
    body = await parse_json_body(request)
    return views.product(
        await handlers.add_service(_resources(request).pool, account, product_id, body),
        masked=account.read_only,
    )


@authed()
async def lock_product(request: web.Request, account: Account) -> views.Json:
    product_id = path_id(request, "product_id")
    return views.product(
        await handlers.lock_product(_resources(request).pool, account, product_id), masked=account.read_only
    )


@authed()
async def change_service(request: web.Request, account: Account) -> views.Json:
    product_id = path_id(request, "product_id")
    body = await parse_json_body(request)
    return views.product(
        await handlers.change_service(
            _resources(request).pool, account, product_id, path_id(request, "service_id"), body
        ),
        masked=account.read_only,
    )


@authed()
async def delete_product(request: web.Request, account: Account) -> views.Json:
    product_id = path_id(request, "product_id")
    return views.deleted_product(await handlers.delete_product(_resources(request).pool, account, product_id))


# ---------------------------------------------------------------- auto registrations


@authed(status=201)
async def create_auto(request: web.Request, account: Account) -> views.Json:
    body = await parse_json_body(request)
    return views.auto_registration(
        await handlers.create_auto_registration(_resources(request).pool, account, body),
        masked=account.read_only,
    )


@authed()
async def list_auto(request: web.Request, account: Account) -> views.Json:
    return views.auto_registrations(
        await handlers.list_auto_registrations(_resources(request).pool, account), masked=account.read_only
    )


@authed()
async def get_auto(request: web.Request, account: Account) -> views.Json:
    registration_id = path_id(request, "registration_id")
    return views.auto_registration(
        await handlers.get_auto_registration(_resources(request).pool, account, registration_id),
        masked=account.read_only,
    )


@authed()
async def update_auto(request: web.Request, account: Account) -> views.Json:
    registration_id = path_id(request, "registration_id")
    body = await parse_json_body(request)
    return views.auto_registration(
        await handlers.update_auto_registration(_resources(request).pool, account, registration_id, body),
        masked=account.read_only,
    )


async def _change_auto(request: web.Request, account: Account, action: handlers.AutoAction) -> views.Json:
    registration_id = path_id(request, "registration_id")
    return views.auto_registration(
        await handlers.change_auto_registration(_resources(request).pool, account, registration_id, action),
        masked=account.read_only,
    )


@authed()
async def pause_auto(request: web.Request, account: Account) -> views.Json:
    return await _change_auto(request, account, "pause")


@authed()
async def resume_auto(request: web.Request, account: Account) -> views.Json:
    return await _change_auto(request, account, "resume")


@authed()
async def rotate_auto_code(request: web.Request, account: Account) -> views.Json:
    return await _change_auto(request, account, "rotate-code")


# ---------------------------------------------------------------- devices


@authed()
async def list_devices(request: web.Request, account: Account) -> views.Json:
    resources = _resources(request)
    page = await handlers.list_devices(
        resources.pool,
        account,
        query_params(request),
        page_limit_max=resources.settings.page_limit_max,
        online_ttl_s=resources.settings.online_ttl_s,
        count_exact_max=resources.settings.count_exact_max,
    )
    return views.device_page(page)


async def export_devices(request: web.Request) -> web.StreamResponse:
    """Every matching device, streamed as CSV or JSON lines (services/operator/exports.py).
    The key and query are checked before the answer starts (401/403/400/429 as JSON)."""
    key = api_key(request)  # first: a request without a key is refused before any I/O
    resources = _resources(request)
    account = await account_for(key, resources.pool, write=False, request=request)
    query = query_params(request)
    chosen = handlers.export_format(query)
    with resources.export_slots.take(account.id):
        return await exports.stream(
            request,
            resources.pool,
            account,
            query,
            chosen,
            online_ttl_s=resources.settings.online_ttl_s,
            stall_seconds=resources.settings.export_stall_seconds,
        )


@authed()
async def get_device(request: web.Request, account: Account) -> views.Json:
    resources = _resources(request)
    device_id = path_id(request, "device_id")
    detail = await handlers.get_device(
        resources.pool, account, device_id, online_ttl_s=resources.settings.online_ttl_s
    )
    return views.device_detail(detail)


async def _change_device(request: web.Request, account: Account, action: handlers.DeviceAction) -> views.Json:
    resources = _resources(request)
    device_id = path_id(request, "device_id")
    detail = await handlers.change_device(
        resources.pool, account, device_id, action, online_ttl_s=resources.settings.online_ttl_s
    )
    return views.device_detail(detail)


@authed()
async def disable_device(request: web.Request, account: Account) -> views.Json:
    return await _change_device(request, account, "disable")


@authed()
async def enable_device(request: web.Request, account: Account) -> views.Json:
    return await _change_device(request, account, "enable")


@authed()
async def reset_device(request: web.Request, account: Account) -> views.Json:
    return await _change_device(request, account, "reset")


@authed()
async def move_device(request: web.Request, account: Account) -> views.Json:
    resources = _resources(request)
    device_id = path_id(request, "device_id")
    body = await parse_json_body(request)
    detail = await handlers.move_device(
        resources.pool, account, device_id, body, online_ttl_s=resources.settings.online_ttl_s
    )
    return views.device_detail(detail)


@authed()
async def rename_device(request: web.Request, account: Account) -> views.Json:
    resources = _resources(request)
    device_id = path_id(request, "device_id")
    body = await parse_json_body(request)
    detail = await handlers.rename_device(
        resources.pool,
        account,
        resources.keyring,
        device_id,
        body,
        online_ttl_s=resources.settings.online_ttl_s,
    )
    return views.device_detail(detail)


@authed()
async def delete_device(request: web.Request, account: Account) -> views.Json:
    resources = _resources(request)
    device_id = path_id(request, "device_id")
    gone = await handlers.delete_device(
        resources.pool, account, device_id, online_ttl_s=resources.settings.online_ttl_s
    )
    return views.deleted_device(gone)


async def _change_devices(
    request: web.Request, account: Account, action: handlers.DeviceAction
) -> views.Json:
    resources = _resources(request)
    body = await parse_json_body(request)
    changed = await handlers.change_devices(
        resources.pool, account, body, action, online_ttl_s=resources.settings.online_ttl_s
    )
    return views.device_changes(changed)


@authed()
async def disable_devices(request: web.Request, account: Account) -> views.Json:
    return await _change_devices(request, account, "disable")


@authed()
async def enable_devices(request: web.Request, account: Account) -> views.Json:
    return await _change_devices(request, account, "enable")


@authed()
async def reset_devices(request: web.Request, account: Account) -> views.Json:
    return await _change_devices(request, account, "reset")


@authed()
async def delete_devices(request: web.Request, account: Account) -> views.Json:
    return await _change_devices(request, account, "delete")


# ---------------------------------------------------------------- audit trail and alerts


@authed()
async def list_decisions(request: web.Request, account: Account) -> views.Json:
    resources = _resources(request)
    page = await handlers.list_decisions(
        resources.pool, account, query_params(request), page_limit_max=resources.settings.page_limit_max
    )
    return views.decision_page(page)


@authed()
async def list_audit_events(request: web.Request, account: Account) -> views.Json:
    resources = _resources(request)
    page = await handlers.list_audit_events(
        resources.pool, account, query_params(request), page_limit_max=resources.settings.page_limit_max
    )
    return views.audit_page(page)


@authed()
async def list_alerts(request: web.Request, account: Account) -> views.Json:
    resources = _resources(request)
    page = await handlers.list_security_alerts(
        resources.pool, account, query_params(request), page_limit_max=resources.settings.page_limit_max
    )
    return views.alert_page(page)


# ---------------------------------------------------------------- API keys


@authed()
async def list_keys(request: web.Request, account: Account) -> views.Json:
    return views.api_keys(await handlers.list_api_keys(_resources(request).pool, account))


@authed(status=201)
async def create_key(request: web.Request, account: Account) -> views.Json:
    body = await parse_json_body(request)
    resources = _resources(request)
    issued = await handlers.create_api_key(
        resources.pool, account, body, max_active=resources.settings.max_api_keys
    )
    return views.issued_api_key(issued)


@authed()
async def revoke_key(request: web.Request, account: Account) -> views.Json:
    key_id = path_id(request, "key_id")
    await handlers.revoke_api_key(_resources(request).pool, account, key_id)
    return views.revoked_api_key(key_id)


# ---------------------------------------------------------------- webhooks


@authed(status=201)
async def create_webhook(request: web.Request, account: Account) -> views.Json:
    resources = _resources(request)
    body = await parse_json_body(request)
    settings = resources.settings
    issued = await handlers.create_webhook(
        resources.pool,
        account,
        body,
        secret_key=settings.secret_key,
        allow_private=settings.webhooks_allow_private_urls,
        max_webhooks=settings.max_webhooks,
    )
    return views.issued_webhook(issued)


@authed()
async def list_webhooks(request: web.Request, account: Account) -> views.Json:
    found = await handlers.list_webhooks(_resources(request).pool, account)
    return views.webhooks(found, masked=account.read_only)


@authed()
async def get_webhook(request: web.Request, account: Account) -> views.Json:
    webhook_id = path_id(request, "webhook_id")
    found = await handlers.get_webhook(_resources(request).pool, account, webhook_id)
    return views.webhook(found, masked=account.read_only)


@authed()
async def delete_webhook(request: web.Request, account: Account) -> views.Json:
    webhook_id = path_id(request, "webhook_id")
    await handlers.delete_webhook(_resources(request).pool, account, webhook_id)
    return views.deleted_webhook(webhook_id)


@authed()
async def enable_webhook(request: web.Request, account: Account) -> views.Json:
    webhook_id = path_id(request, "webhook_id")
    found = await handlers.enable_webhook(_resources(request).pool, account, webhook_id)
    return views.webhook(found)


@authed()
async def list_webhook_deliveries(request: web.Request, account: Account) -> views.Json:
    resources = _resources(request)
    webhook_id = path_id(request, "webhook_id")
    page = await handlers.list_webhook_deliveries(
        resources.pool,
        account,
        webhook_id,
        query_params(request),
        page_limit_max=resources.settings.page_limit_max,
    )
    return views.delivery_page(page)


ROUTES: list[web.RouteDef] = [
    web.get("/openapi.yaml", openapi),
    web.get("/v1/account", whoami),
    web.post("/v1/products", create_product),
    web.get("/v1/products", list_products),
    web.get("/v1/products/{product_id}", get_product),
    web.post("/v1/products/{product_id}/services", add_service),
    web.post("/v1/products/{product_id}/lock", lock_product),
    web.patch("/v1/products/{product_id}/services/{service_id}", change_service),
    web.delete("/v1/products/{product_id}", delete_product),
    web.post("/v1/auto-registrations", create_auto),
    web.get("/v1/auto-registrations", list_auto),
    web.get("/v1/auto-registrations/{registration_id}", get_auto),
    web.patch("/v1/auto-registrations/{registration_id}", update_auto),
    web.post("/v1/auto-registrations/{registration_id}/pause", pause_auto),
    web.post("/v1/auto-registrations/{registration_id}/resume", resume_auto),
    web.post("/v1/auto-registrations/{registration_id}/rotate-code", rotate_auto_code),
    web.get("/v1/devices", list_devices),
    web.get("/v1/devices/export", export_devices),
    web.post("/v1/devices/disable", disable_devices),
    web.post("/v1/devices/reset", reset_devices),
    web.post("/v1/devices/enable", enable_devices),
    web.post("/v1/devices/delete", delete_devices),
    web.get("/v1/devices/{device_id}", get_device),
    web.post("/v1/devices/{device_id}/disable", disable_device),
    web.post("/v1/devices/{device_id}/reset", reset_device),
    web.post("/v1/devices/{device_id}/enable", enable_device),
    web.post("/v1/devices/{device_id}/move", move_device),
    web.post("/v1/devices/{device_id}/rename", rename_device),
    web.delete("/v1/devices/{device_id}", delete_device),
    web.get("/v1/registration-decisions", list_decisions),
    web.get("/v1/security-alerts", list_alerts),
    web.get("/v1/audit-events", list_audit_events),
    web.get("/v1/api-keys", list_keys),
    web.post("/v1/api-keys", create_key),
    web.delete("/v1/api-keys/{key_id}", revoke_key),
    web.post("/v1/webhooks", create_webhook),
    web.get("/v1/webhooks", list_webhooks),
    web.get("/v1/webhooks/{webhook_id}", get_webhook),
    web.delete("/v1/webhooks/{webhook_id}", delete_webhook),
    web.post("/v1/webhooks/{webhook_id}/enable", enable_webhook),
    web.get("/v1/webhooks/{webhook_id}/deliveries", list_webhook_deliveries),
]
