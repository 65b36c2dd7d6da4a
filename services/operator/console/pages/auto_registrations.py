"""Auto registrations: list, create, a registration's page (pause, resume, quota, rotate the
code, rotate a group key, an x509 registration's CAs: their forms are attestation_cas.py's;
its hook with its recent calls: the hook's forms are auto_hooks.py's) and revealing its code.

A derived_key registration's group keys are shown once: the page answering its creation or
a key's rotation (a POST: never on a GET page, in a URL or in the session) carries them,
with the factory-image warning.

An auto registration's code is its product's Bulk Identification Code. As on a product's
page, it is shown only as the answer of a "Reveal" POST (CSRF, never to a read-only
session), never on a GET page or in a URL.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from services.operator.console.auth import Context, Operator, Route, action, flash, page, render, resources
from services.operator.console.forms import FIELD_MAX, Form, text
from services.operator.console.hook_forms import HOOK_CALLS_SHOWN, hook_section
from services.operator.handlers import attestation, hooks
from services.operator.handlers import products as handlers
from services.operator.views import attestation as attestation_views
from services.operator.views import hooks as hook_views
from services.operator.views import products as views
from shared.errors import Forbidden, InvalidInput
from shared.http import path_id


def max_devices(form: Form) -> int | str | None:
    """The quota field as the API takes ``max_devices``: empty is no quota (null); a number
    is a number; other text is passed on for the API's validation to refuse."""
    raw = text(form, "max_devices")[:FIELD_MAX].replace(",", "").replace("_", "")
    if not raw:
        return None
    if raw.isascii() and raw.isdigit():
        return int(raw)
    return raw


async def _product_names(request: web.Request, operator: Operator) -> dict[str, Any]:
    found = await handlers.list_products(resources(request).pool, operator.account)
    return {p.id: p for p in found}


@page("auto_registrations.html")
async def list_auto(request: web.Request, operator: Operator) -> Context:
    pool = resources(request).pool
    found = await handlers.list_auto_registrations(pool, operator.account)
    products = await _product_names(request, operator)
    # Products an auto registration may be created for: locked, serving no registration yet
    # (the registry says why any other is refused).
    choices = [p for p in products.values() if p.status == "locked" and p.registration_kind is None]
    return {
        # masked: the list never shows a code (each is revealed on its registration's page)
        "registrations": views.auto_registrations(found, masked=True)["auto_registrations"],
        "product_names": {pid: p.name for pid, p in products.items()},
        "choices": choices,
    }


@action()
async def create_auto(request: web.Request, operator: Operator, form: Form) -> str | web.StreamResponse:
    body: dict[str, Any] = {"product_id": text(form, "product_id")[:FIELD_MAX]}
    quota = max_devices(form)
    if quota is not None:
        body["max_devices"] = quota
    attestation_mode = text(form, "attestation")[:FIELD_MAX]
    if attestation_mode:
        body["attestation"] = attestation_mode
    hardware_id_from = text(form, "hardware_id_from")[:FIELD_MAX]
    if attestation_mode == "x509" and hardware_id_from:
        body["hardware_id_from"] = hardware_id_from
    r = resources(request)
    created = await handlers.create_auto_registration(
        r.pool, operator.account, body, secret_key=r.settings.secret_key
    )
    if created.group_keys:
        flash(operator, "Auto registration created: copy its group keys now, they are shown only once.")
        return await _with_keys(request, operator, created)
    if created.registration.attestation == "x509":
        flash(
            operator,
            "Auto registration created: upload and verify your CA certificate for devices to register.",
        )
    else:
        flash(operator, "Auto registration created: devices with the product's code register now.")
    return f"/console/auto-registrations/{created.registration.id}"


async def _with_keys(
    request: web.Request, operator: Operator, issued: handlers.IssuedAutoRegistration
) -> web.StreamResponse:
    """The registration's page with its new group keys shown, this once."""
    context = await _auto_context(request, operator, reveal=False, registration_id=issued.registration.id)
    context["group_keys"] = issued.group_keys
    return render("auto_registration.html", request, operator, context)


@action(reauth=True)
async def rotate_key(request: web.Request, operator: Operator, form: Form) -> web.StreamResponse:
    """Replace the primary or secondary group key (the ``key`` field; the ``confirm`` box
    ticked); the page shows the new key once."""
    registration_id = path_id(request, "registration_id")
    if text(form, "confirm") != "yes":
        raise InvalidInput(
            "tick “I understand device keys of the old group key stop registering” to rotate it",
            field="confirm",
            rule="required",
        )
    r = resources(request)
    issued = await handlers.rotate_group_key(
        r.pool,
        operator.account,
        registration_id,
        {"key": text(form, "key")[:FIELD_MAX]},
        secret_key=r.settings.secret_key,
    )
    flash(operator, "Group key rotated: copy the new key now, it is shown only once.")
    return await _with_keys(request, operator, issued)


async def _auto_context(
    request: web.Request, operator: Operator, reveal: bool, registration_id: str | None = None
) -> Context:
    registration_id = registration_id or path_id(request, "registration_id")
    pool = resources(request).pool
    found = await handlers.get_auto_registration(pool, operator.account, registration_id)
    product = await handlers.get_product(pool, operator.account, found.product_id)
    shown = reveal and not operator.read_only
    cas = (
        await attestation.list_cas(pool, operator.account, registration_id)
        if found.attestation == "x509"
        else []
    )
    return {
        "cas": attestation_views.cas(cas)["cas"],
        "registration": views.auto_registration(found, masked=not shown),
        "hook": await _hook(request, operator, views.auto_registration(found)) if operator.admin else None,
        "product": views.product(product, masked=True),
        "revealed": shown and found.bulk_identification_code is not None,
        "group_keys": {},  # only in the answer of a creation or a key's rotation (_with_keys)
    }


async def _hook(request: web.Request, operator: Operator, shown: dict[str, Any]) -> dict[str, Any]:
    """The hook's section of the registration ``shown`` unmasked (its ID and hook settings),
    an admin's only (docs/security.md, "Roles"), with its recent calls."""
    calls = await hooks.recent_calls(
        resources(request).pool, operator.account, shown["id"], {"limit": str(HOOK_CALLS_SHOWN)}
    )
    return hook_section(
        request,
        operator,
        base=f"/console/auto-registrations/{shown['id']}",
        registration=shown,
        calls=hook_views.hook_calls(calls)["calls"],
        cli="fleetreg auto",
    )


@page("auto_registration.html")
async def show_auto(request: web.Request, operator: Operator) -> Context:
    return await _auto_context(request, operator, reveal=False)


@action(write=False, reauth=True)
async def reveal_code(request: web.Request, operator: Operator, form: Form) -> web.StreamResponse:
    """The registration's page with its code shown (the answer of a POST: not cached, not in
    a URL); refused to a read-only session (403)."""
    if operator.read_only:
        raise Forbidden(
            "this session's API key is read-only: it may not see a registration's code",
            rule="scope=read-only",
        )
    context = await _auto_context(request, operator, reveal=True)
    return render("auto_registration.html", request, operator, context)


async def reveal_link(request: web.Request) -> web.StreamResponse:
    """A GET of the reveal URL (reload, or a refused form's way back): the page, code hidden."""
    raise web.HTTPSeeOther(f"/console/auto-registrations/{path_id(request, 'registration_id')}")


@action()
async def set_quota(request: web.Request, operator: Operator, form: Form) -> str:
    registration_id = path_id(request, "registration_id")
    quota = max_devices(form)
    r = resources(request)
    await handlers.update_auto_registration(
        r.pool, operator.account, registration_id, {"max_devices": quota}, secret_key=r.settings.secret_key
    )
    done = "Quota removed: no device limit." if quota is None else f"Quota set to {quota:,} devices."
    flash(operator, done)
    return f"/console/auto-registrations/{registration_id}"


def _change(action_name: handlers.AutoAction, done: str) -> Route:
    """The form of one state change (pause, resume, rotate-code): it 303s back to the
    registration's page with ``done`` flashed; rotating needs the ``confirm`` box ticked."""

    @action(reauth=action_name == "rotate-code")
    async def change(request: web.Request, operator: Operator, form: Form) -> str:
        registration_id = path_id(request, "registration_id")
        if action_name == "rotate-code" and text(form, "confirm") != "yes":
            raise InvalidInput(
                "tick “I understand the old code stops working” to rotate the code",
                field="confirm",
                rule="required",
            )
        await handlers.change_auto_registration(
            resources(request).pool, operator.account, registration_id, action_name
        )
        flash(operator, done)
        return f"/console/auto-registrations/{registration_id}"

    change.__name__ = change.__qualname__ = action_name.replace("-", "_")
    return change


ROUTES: list[web.RouteDef] = [
    web.get("/auto-registrations", list_auto),
    web.post("/auto-registrations", create_auto),
    web.get("/auto-registrations/{registration_id}", show_auto),
    web.post("/auto-registrations/{registration_id}/reveal", reveal_code),
    web.get("/auto-registrations/{registration_id}/reveal", reveal_link),
    web.post("/auto-registrations/{registration_id}/quota", set_quota),
    web.post("/auto-registrations/{registration_id}/rotate-key", rotate_key),
    web.post(
        "/auto-registrations/{registration_id}/pause",
        _change("pause", "Paused: devices presenting the code are refused until it is resumed."),
    ),
    web.post(
        "/auto-registrations/{registration_id}/resume",
        _change("resume", "Resumed: devices presenting the code register again."),
    ),
    web.post(
        "/auto-registrations/{registration_id}/rotate-code",
        _change(
            "rotate-code",
            "Code rotated: the old code no longer registers devices. "
            "Reveal the new one for the factory image.",
        ),
    ),
]
