"""Bulk registrations: the list, one registration's page with publish (live progress),
cancel and its registration hook (the hook's forms are :mod:`bulk_hooks`'); the upload and
a rejected file's report are in :mod:`bulk_upload`.

Everything goes through the bulk API (:mod:`services.operator.console.bulk_api`) with the
session's key: the browser posts to the console, its own origin.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from services.operator.console.auth import (
    Context,
    Operator,
    SignInRequired,
    action,
    flash,
    page,
    render,
    resources,
    signed_in,
)
from services.operator.console.bulk_api import BulkApi, BulkApiError, bulk_api, written
from services.operator.console.hook_forms import HOOK_CALLS_SHOWN, hook_section
from services.operator.handlers import products as handlers
from shared.domain.identifiers import is_uuid
from shared.errors import InvalidInput, NotFound

BASE = "/console/bulk-registrations"


def accepts_bulk(product: Any) -> bool:
    """A bulk upload takes a locked product not already serving an auto registration."""
    return bool(product.status == "locked" and product.registration_kind in (None, "bulk"))


@page("bulk.html")
async def list_bulk(request: web.Request, operator: Operator) -> Context:
    r = resources(request)
    found = await bulk_api(r, operator).list()
    products = await handlers.list_products(r.pool, operator.account)
    names = {p.id: p.name for p in products}
    return {
        "registrations": found,
        "product_names": names,
        "eligible": [{"id": p.id, "name": p.name} for p in products if accepts_bulk(p)],
    }


def _registration_id(request: web.Request) -> str:
    """The path's registration ID; anything but a UUID is no registration of anyone's."""
    found = request.match_info["registration_id"]
    if not is_uuid(found):
        raise NotFound("no such bulk registration in this account", field="registration_id")
    return found


async def _show(api: BulkApi, registration_id: str) -> dict[str, Any]:
    try:
        return await api.show(registration_id)
    except BulkApiError as exc:
        if exc.status == 404:
            raise NotFound("no such bulk registration in this account", field="registration_id") from None
        raise


@page("bulk_show.html")
async def show(request: web.Request, operator: Operator) -> Context:
    """The registration, its publishing, and, for an admin, its hook (console/hook_forms.py;
    the hook's forms are pages/bulk_hooks.py's) with its recent calls."""
    r = resources(request)
    api = bulk_api(r, operator)
    registration_id = _registration_id(request)
    found = await _show(api, registration_id)
    products = await handlers.list_products(r.pool, operator.account)
    hook = None  # the hook's section is an admin's (docs/security.md, "Roles")
    if operator.admin:
        calls = await api.hook_calls(registration_id, HOOK_CALLS_SHOWN)
        base = f"{BASE}/{registration_id}"
        hook = hook_section(
            request, operator, base=base, registration=found, calls=calls, cli="fleetreg bulk"
        )
    return {"b": found, "product_names": {p.id: p.name for p in products}, "hook": hook}


async def progress(request: web.Request) -> web.StreamResponse:
    """The publish progress fragment (htmx polls it every second while publishing). A lapsed
    session sends the whole tab to the sign-in page (``HX-Redirect``) and back to the
    registration, rather than swapping a sign-in page into the progress box."""
    try:
        operator = await signed_in(request)
    except SignInRequired:
        if request.headers.get("HX-Request") != "true":
            raise
        back = f"{BASE}/{_registration_id(request)}"
        return web.Response(status=204, headers={"HX-Redirect": f"/console/sign-in?next={back}"})
    found = await _show(bulk_api(resources(request), operator), _registration_id(request))
    return render("bulk_progress.html", request, None, {"b": found})


def _confirmed(form: Any, what: str) -> None:
    if form.get("confirm") != "yes":
        raise InvalidInput(f"Tick the box to confirm that you want to {what}.", field="confirm")


@action()
async def publish(request: web.Request, operator: Operator, form: Any) -> str:
    registration_id = _registration_id(request)
    _confirmed(form, "publish")
    done = await written(bulk_api(resources(request), operator).publish(registration_id))
    flash(operator, f"Publishing {done.get('rows', 0):,} devices.")
    return f"{BASE}/{registration_id}"


@action()
async def cancel(request: web.Request, operator: Operator, form: Any) -> str:
    registration_id = _registration_id(request)
    _confirmed(form, "cancel this upload")
    done = await written(bulk_api(resources(request), operator).cancel(registration_id))
    flash(
        operator,
        f"Cancelled {done.get('file_name') or 'the upload'} ({done.get('rows', 0):,} rows): "
        "no device was created.",
    )
    return BASE


ROUTES: list[web.RouteDef] = [
    web.get("/bulk-registrations", list_bulk),
    web.get("/bulk-registrations/{registration_id}", show),
    web.get("/bulk-registrations/{registration_id}/progress", progress),
    web.post("/bulk-registrations/{registration_id}/publish", publish),
    web.post("/bulk-registrations/{registration_id}/cancel", cancel),
]
