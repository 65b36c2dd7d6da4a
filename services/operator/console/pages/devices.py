"""Devices: the operator API's device search as a page, a device's page with its
registration decisions and operator audit trail, enable / disable / reset, move to another
product (a confirmation page with the product to choose), rename, and the export.

The list's query string is exactly ``GET /v1/devices``'s (shared.domain.device_search):
the filter form is a GET form whose fields carry the API's parameter names, so a search
is a bookmarkable URL and works without JavaScript; the export link carries the same
filters to ``/console/devices/export`` (the API's export, streamed with the session's
account)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from services.operator import exports
from services.operator.console.auth import (
    Context,
    Operator,
    action,
    flash,
    page,
    render,
    resources,
    signed_in,
)
from services.operator.console.forms import FIELD_MAX, Form, text
from services.operator.handlers import devices as handlers
from services.operator.handlers.products import list_products
from services.operator.views import devices as views
from shared.domain.device_search import DEVICE_STATES, LIFECYCLES, SEARCH_PARAMETERS, SORT_KEYS
from shared.errors import Forbidden, InvalidInput, NotFound
from shared.http import path_id, query_params

PAGE_SIZE = 50
SORT_LABELS = {
    "id": "Device ID",
    "hardware_id": "Hardware ID",
    "name": "Name",
    "created_at": "Created",
    "registered_at": "Registered",
    "last_seen_at": "Last seen",
}
ACTIONS: dict[str, handlers.DeviceAction] = {"disable": "disable", "enable": "enable", "reset": "reset"}
DONE = {"disable": "disabled", "enable": "enabled", "reset": "reset"}


def _search_query(request: web.Request) -> dict[str, str]:
    """The search of the page's query string, as ``GET /v1/devices`` takes it (a repeated
    parameter is InvalidInput, as on the API), empty values dropped (the API treats them
    as not given, and a form sends every field), the console's page size unless one is
    asked for."""
    query = {name: value for name, value in query_params(request).items() if value}
    query.setdefault("limit", str(min(PAGE_SIZE, resources(request).settings.page_limit_max)))
    return query


def _about(total: int) -> str:
    """An estimate as an operator reads it: "about 1.2 million", "about 25 million",
    "about 45,000" (two or three significant figures: it is an estimate)."""
    if total >= 1_000_000:
        millions = total / 1_000_000
        return f"about {millions:.1f} million" if millions < 10 else f"about {millions:,.0f} million"
    if total >= 10_000:
        return f"about {round(total, -3):,}"
    return f"about {total:,}"


async def list_devices(request: web.Request) -> web.StreamResponse:
    """``GET /console/devices``: the form, the total, a page of devices and the next link.
    A bad filter is shown above the form with status 400 (the API's message)."""
    operator = await signed_in(request)
    settings = resources(request).settings
    context: Context = {
        # what the form shows again, whether or not the search is valid
        "query": {name: request.query[name] for name in request.query},
        "states": DEVICE_STATES,
        "lifecycles": LIFECYCLES,
        "sorts": [(key, SORT_LABELS[key]) for key in SORT_KEYS],
        "problem": None,
        "devices": [],
        "products": {},
        "total": None,
        "next_url": None,
        "export_csv": None,
        "export_jsonl": None,
        "first_url": None,
    }
    try:
        query = _search_query(request)
        found = await handlers.list_devices(
            _fleet(request, operator),
            query,
            page_limit_max=settings.page_limit_max,
            count_exact_max=settings.count_exact_max,
        )
    except InvalidInput as exc:
        context["problem"] = exc.message
        return render("devices.html", request, operator, context, status=400)
    shown = views.device_page(found)
    # Products by name, as the operator named them (an account has a handful: one read).
    products = {p.id: p.name for p in await list_products(resources(request).pool, operator.account)}
    search = {k: v for k, v in query.items() if k in SEARCH_PARAMETERS}
    paged = {**search, **({"limit": query["limit"]} if "limit" in request.query else {})}
    context.update(
        devices=shown["devices"],
        products=products,
        total=_about(found.total) if not found.total_exact else f"{found.total:,}",
        total_exact=found.total_exact,
        total_count=found.total,
        next_url=f"/console/devices?{urlencode({**paged, 'after': found.next_after})}"
        if found.next_after
        else None,
        first_url=f"/console/devices?{urlencode(paged)}" if "after" in query else None,
        export_csv=f"/console/devices/export?{urlencode({**search, 'format': 'csv'})}",
        export_jsonl=f"/console/devices/export?{urlencode({**search, 'format': 'jsonl'})}",
    )
    return render("devices.html", request, operator, context)


async def export_devices(request: web.Request) -> web.StreamResponse:
    """``GET /console/devices/export``: the API's export (CSV or JSON lines, an attachment)
    of the session's account, with the list's filters, under the same limits as the API's
    (one export per account, ``exports_max`` per instance: a 429 page beyond them). A bad
    filter is the 400 page."""
    operator = await signed_in(request)
    query = {name: value for name, value in query_params(request).items() if value}
    chosen = handlers.export_format(query)
    found = resources(request)
    with found.export_slots.take(operator.account.id):
        return await exports.stream(
            request,
            _fleet(request, operator),
            query,
            chosen,
            stall_seconds=found.settings.export_stall_seconds,
        )


def _fleet(request: web.Request, operator: Operator) -> handlers.Fleet:
    """The session's account's devices, shown by the service's online TTL."""
    r = resources(request)
    return handlers.Fleet(r.pool, operator.account, r.settings.online_ttl_s)


async def _detail(request: web.Request, operator: Operator) -> dict[str, Any]:
    detail = await handlers.get_device(_fleet(request, operator), path_id(request, "device_id"))
    return views.device_detail(detail)


@page("device.html")
async def show_device(request: web.Request, operator: Operator) -> Context:
    """``GET /console/devices/{id}``: facts, registration decisions, lifecycle events and
    the newest operator actions on the device (another account's device: 404)."""
    device = await _detail(request, operator)
    history = device["history"]
    products = await list_products(resources(request).pool, operator.account)
    return {
        "device": device,
        "product_name": next((p.name for p in products if p.id == device["product_id"]), None),
        "decisions": [h for h in history if h["kind"] == "registration"],
        "events": [h for h in history if h["kind"] != "registration"],
        "audit_events": device["audit_events"],
    }


def _refuse_read_only(operator: Operator) -> None:
    if operator.read_only:
        raise Forbidden(
            "this session is read-only (a viewer's, or a read-only key's): it cannot change anything",
            rule="scope=read-only",
        )


@page("device_reset.html")
async def confirm_reset(request: web.Request, operator: Operator) -> Context:
    """``GET /console/devices/{id}/reset``: the confirmation step of a reset (a page of its
    own, so it works without JavaScript)."""
    _refuse_read_only(operator)
    return {"device": await _detail(request, operator)}


@action(write=True)
async def change_device(request: web.Request, operator: Operator, form: Any) -> str:
    """``POST /console/devices/{id}/{disable|enable|reset}``: the API's single-device
    action; back to the device's page with what was done (or why not)."""
    chosen = ACTIONS.get(request.match_info["action"])
    if chosen is None:
        raise web.HTTPNotFound(reason="no such device action")
    try:
        device_id = path_id(request, "device_id")
        changed = await handlers.change_device(_fleet(request, operator), device_id, chosen)
    except NotFound:
        # Not a flash back to the page it came from: another account's device is the
        # 404 page, as on a GET.
        raise web.HTTPNotFound(reason="no such device in this account") from None
    flash(operator, f"Device {changed.device.device.hardware_id} {DONE[chosen]}.")
    return f"/console/devices/{device_id}"


@page("device_move.html")
async def confirm_move(request: web.Request, operator: Operator) -> Context:
    """``GET /console/devices/{id}/move``: the confirmation step of a move, with the products
    it may go to (locked, serving a registration, not its own; the API says why any other
    is refused)."""
    _refuse_read_only(operator)
    device = await _detail(request, operator)
    products = await list_products(resources(request).pool, operator.account)
    return {
        "device": device,
        "product_name": next((p.name for p in products if p.id == device["product_id"]), None),
        "choices": [
            p
            for p in products
            if p.id != device["product_id"] and p.status == "locked" and p.registration_kind is not None
        ],
    }


@action(write=True)
async def move_device(request: web.Request, operator: Operator, form: Form) -> str:
    """``POST /console/devices/{id}/move`` (``product_id``): the API's move; to the device's
    page with what was done, or back to the form with why not (409: its reason)."""
    try:
        device_id = path_id(request, "device_id")
        moved = await handlers.move_device(
            _fleet(request, operator), device_id, {"product_id": text(form, "product_id")[:FIELD_MAX]}
        )
    except NotFound as exc:
        if exc.field == "product_id":
            raise  # the form's product: flashed on the form
        raise web.HTTPNotFound(reason="no such device in this account") from None
    products = await list_products(resources(request).pool, operator.account)
    name = next((p.name for p in products if p.id == moved.device.device.product_id), "")
    flash(
        operator,
        f"Device {moved.device.device.hardware_id} moved to product {name}: its next claim with that "
        "product's code takes it over.",
    )
    return f"/console/devices/{device_id}"


@action(write=True)
async def rename_device(request: web.Request, operator: Operator, form: Form) -> str:
    """``POST /console/devices/{id}/rename`` (``name``): the API's rename; back to the
    device's page with what was done (or the API's reason a name is refused)."""
    try:
        device_id = path_id(request, "device_id")
        renamed = await handlers.rename_device(
            _fleet(request, operator),
            resources(request).keyring,
            device_id,
            {"name": text(form, "name")[:FIELD_MAX]},
        )
    except NotFound:
        raise web.HTTPNotFound(reason="no such device in this account") from None
    shown = renamed.device.device
    flash(operator, f"Device {shown.hardware_id} renamed to {shown.name}.")
    return f"/console/devices/{device_id}"


ROUTES: list[web.RouteDef] = [
    web.get("/devices", list_devices),
    web.get("/devices/export", export_devices),
    web.get("/devices/{device_id}", show_device),
    web.get("/devices/{device_id}/reset", confirm_reset),
    web.get("/devices/{device_id}/move", confirm_move),
    # Before the generic action route: the first route that matches a path answers it.
    web.post("/devices/{device_id}/move", move_device),
    web.post("/devices/{device_id}/rename", rename_device),
    web.post("/devices/{device_id}/{action}", change_device),
]
