"""Devices: the search, the export, one device and the changes to one or many."""

from __future__ import annotations

from aiohttp import web

from services.operator import exports
from services.operator.handlers import devices as handlers
from services.operator.routes.common import authed, resources
from services.operator.views import devices as views
from services.operator.views.common import Json
from shared.domain.accounts import Account
from shared.http import parse_json_body, path_id, query_params


def fleet(request: web.Request, account: Account) -> handlers.Fleet:
    """The account's devices, shown by the service's online TTL."""
    r = resources(request)
    return handlers.Fleet(r.pool, account, r.settings.online_ttl_s)


@authed()
async def list_devices(request: web.Request, account: Account) -> Json:
    settings = resources(request).settings
    page = await handlers.list_devices(
        fleet(request, account),
        query_params(request),
        page_limit_max=settings.page_limit_max,
        count_exact_max=settings.count_exact_max,
    )
    return views.device_page(page)


@authed(write=False)
async def export_devices(request: web.Request, account: Account) -> web.StreamResponse:
    """Every matching device, streamed as CSV or JSON lines (services/operator/exports.py).
    The key and query are checked before the answer starts (401/403/400/429 as JSON)."""
    r = resources(request)
    query = query_params(request)
    chosen = handlers.export_format(query)
    with r.export_slots.take(account.id):
        return await exports.stream(
            request, fleet(request, account), query, chosen, stall_seconds=r.settings.export_stall_seconds
        )


@authed()
async def get_device(request: web.Request, account: Account) -> Json:
    device_id = path_id(request, "device_id")
    return views.device_detail(await handlers.get_device(fleet(request, account), device_id))


async def _change_device(request: web.Request, account: Account, action: handlers.DeviceAction) -> Json:
    device_id = path_id(request, "device_id")
    return views.device_detail(await handlers.change_device(fleet(request, account), device_id, action))


@authed()
async def disable_device(request: web.Request, account: Account) -> Json:
    return await _change_device(request, account, "disable")


@authed()
async def enable_device(request: web.Request, account: Account) -> Json:
    return await _change_device(request, account, "enable")


@authed()
async def reset_device(request: web.Request, account: Account) -> Json:
    return await _change_device(request, account, "reset")


@authed()
async def move_device(request: web.Request, account: Account) -> Json:
    device_id = path_id(request, "device_id")
    body = await parse_json_body(request)
    return views.device_detail(await handlers.move_device(fleet(request, account), device_id, body))


@authed()
async def rename_device(request: web.Request, account: Account) -> Json:
    device_id = path_id(request, "device_id")
    body = await parse_json_body(request)
    keyring = resources(request).keyring
    return views.device_detail(
        await handlers.rename_device(fleet(request, account), keyring, device_id, body)
    )


@authed()
async def delete_device(request: web.Request, account: Account) -> Json:
    device_id = path_id(request, "device_id")
    return views.deleted_device(await handlers.delete_device(fleet(request, account), device_id))


async def _change_devices(request: web.Request, account: Account, action: handlers.DeviceAction) -> Json:
    body = await parse_json_body(request)
    return views.device_changes(await handlers.change_devices(fleet(request, account), body, action))


@authed()
async def disable_devices(request: web.Request, account: Account) -> Json:
    return await _change_devices(request, account, "disable")


@authed()
async def enable_devices(request: web.Request, account: Account) -> Json:
    return await _change_devices(request, account, "enable")


@authed()
async def reset_devices(request: web.Request, account: Account) -> Json:
    return await _change_devices(request, account, "reset")


@authed()
async def delete_devices(request: web.Request, account: Account) -> Json:
    return await _change_devices(request, account, "delete")


ROUTES: list[web.RouteDef] = [
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
]
