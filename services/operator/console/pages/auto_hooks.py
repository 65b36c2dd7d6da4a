"""An auto registration's hook on its page (docs/registration-hook.md, "Operator surface"):
set or change it (URL, timeout, failure policy), remove it, and test it with a sample
request. Each form redirects back to the registration's page (pages/auto_registrations.py),
which shows a new signing secret once and the test's result once (console/shown_once.py)
above the hook's recent calls."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from services.operator.console.auth import Operator, action, flash, resources
from services.operator.console.forms import FIELD_MAX, Form, text
from services.operator.console.shown_once import HOOK_SECRET, HOOK_TEST, hold, hold_secret
from services.operator.handlers import hooks as handlers
from services.operator.handlers import products
from services.operator.views import hooks as views
from shared.http import path_id


def _back(registration_id: str) -> str:
    return f"/console/auto-registrations/{registration_id}#hook"


def _timeout(form: Form) -> int | str | None:
    """The timeout field as the API takes ``hook_timeout_ms``: empty keeps it; other text
    than digits is passed on for the API's validation to refuse."""
    raw = text(form, "hook_timeout_ms")[:FIELD_MAX].replace(",", "").replace("_", "")
    if not raw:
        return None
    return int(raw) if raw.isascii() and raw.isdigit() else raw


@action()
async def set_hook(request: web.Request, operator: Operator, form: Form) -> str:
    """Set or change the hook: a new URL (or the same one with ``new_secret`` ticked) gets
    a new signing secret, shown once; the timeout and the policy alone keep the secret."""
    registration_id = path_id(request, "registration_id")
    r = resources(request)
    current = await products.get_auto_registration(r.pool, operator.account, registration_id)
    body: dict[str, Any] = {}
    url = text(form, "hook_url")[: FIELD_MAX * 12]
    if url != current.hook_url or text(form, "new_secret") == "yes":
        body["hook_url"] = url
    timeout = _timeout(form)
    if timeout is not None:
        body["hook_timeout_ms"] = timeout
    failure = text(form, "hook_failure")[:FIELD_MAX]
    if failure:
        body["hook_failure"] = failure
    issued = await products.update_auto_registration(
        r.pool,
        operator.account,
        registration_id,
        body,
        secret_key=r.settings.secret_key,
        allow_private=r.settings.webhooks_allow_private_urls,
    )
    if issued.hook_secret:
        hold_secret(request, operator, HOOK_SECRET, registration_id, issued.hook_secret)
        flash(operator, "Hook set: copy its signing secret now, it is shown only once.")
    else:
        flash(operator, "Hook settings saved.")
    return _back(registration_id)


@action()
async def remove_hook(request: web.Request, operator: Operator, form: Form) -> str:
    registration_id = path_id(request, "registration_id")
    r = resources(request)
    await products.update_auto_registration(
        r.pool, operator.account, registration_id, {"hook_url": None}, secret_key=r.settings.secret_key
    )
    flash(operator, "Hook removed: registrations are decided without it.")
    return _back(registration_id)


@action()
async def try_hook(request: web.Request, operator: Operator, form: Form) -> str:
    """One real call with a sample request (the ``hardware_id`` field, SAMPLE-0001 when
    empty); its result is shown once on the registration's page."""
    registration_id = path_id(request, "registration_id")
    r = resources(request)
    hardware_id = text(form, "hardware_id")[:FIELD_MAX]
    tested = await handlers.sample_call(
        r.pool,
        operator.account,
        registration_id,
        {"hardware_id": hardware_id} if hardware_id else {},
        secret_key=r.settings.secret_key,
        caller=r.hook_caller,
    )
    hold(operator, HOOK_TEST, registration_id, views.hook_test(tested))
    return _back(registration_id)


ROUTES: list[web.RouteDef] = [
    web.post("/auto-registrations/{registration_id}/hook", set_hook),
    web.post("/auto-registrations/{registration_id}/hook/remove", remove_hook),
    web.post("/auto-registrations/{registration_id}/hook/test", try_hook),
]
