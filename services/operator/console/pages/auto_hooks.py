"""An auto registration's hook on its page (docs/registration-hook.md, "Operator surface"):
set or change it (URL, timeout, failure policy), remove it, and test it with a sample
request: an admin's, every form (docs/security.md, "Roles"). Each form redirects back to the
registration's page (pages/auto_registrations.py), which shows a new signing secret once and
the test's result once (console/shown_once.py) above the hook's recent calls. The forms are a
bulk registration's too (console/hook_forms.py; pages/bulk_hooks.py)."""

from __future__ import annotations

from aiohttp import web

from services.operator.console.auth import Operator, action, flash, resources
from services.operator.console.forms import Form
from services.operator.console.hook_forms import HOOK_REMOVED, hold_test, hook_change, hook_set, sample_body
from services.operator.handlers import hooks as handlers
from services.operator.handlers import products
from services.operator.views import hooks as views
from shared.domain.roles import Role
from shared.http import path_id


def _back(registration_id: str) -> str:
    return f"/console/auto-registrations/{registration_id}#hook"


@action(role=Role.ADMIN)
async def set_hook(request: web.Request, operator: Operator, form: Form) -> str:
    """Set or change the hook: a new URL (or the same one with ``new_secret`` ticked) gets
    a new signing secret, shown once; the timeout and the policy alone keep the secret."""
    registration_id = path_id(request, "registration_id")
    r = resources(request)
    current = await products.get_auto_registration(r.pool, operator.account, registration_id)
    issued = await products.update_auto_registration(
        r.pool,
        operator.account,
        registration_id,
        hook_change(form, current.hook_url),
        secret_key=r.settings.secret_key,
        allow_private=r.settings.webhooks_allow_private_urls,
    )
    hook_set(request, operator, registration_id, issued.hook_secret)
    return _back(registration_id)


@action(role=Role.ADMIN)
async def remove_hook(request: web.Request, operator: Operator, form: Form) -> str:
    registration_id = path_id(request, "registration_id")
    r = resources(request)
    await products.update_auto_registration(
        r.pool, operator.account, registration_id, {"hook_url": None}, secret_key=r.settings.secret_key
    )
    flash(operator, HOOK_REMOVED)
    return _back(registration_id)


@action(role=Role.ADMIN)
async def try_hook(request: web.Request, operator: Operator, form: Form) -> str:
    """One real call with a sample request (the ``hardware_id`` field, SAMPLE-0001 when
    empty); its result is shown once on the registration's page."""
    registration_id = path_id(request, "registration_id")
    r = resources(request)
    tested = await handlers.sample_call(
        r.pool,
        operator.account,
        registration_id,
        sample_body(form),
        secret_key=r.settings.secret_key,
        caller=r.hook_caller,
    )
    hold_test(operator, registration_id, views.hook_test(tested))
    return _back(registration_id)


ROUTES: list[web.RouteDef] = [
    web.post("/auto-registrations/{registration_id}/hook", set_hook),
    web.post("/auto-registrations/{registration_id}/hook/remove", remove_hook),
    web.post("/auto-registrations/{registration_id}/hook/test", try_hook),
]
