"""A bulk registration's hook on its page (docs/registration-hook.md, "Operator surface"):
set or change it, remove it, and test it with a sample request, through the bulk API with
the session's key (console/bulk_api.py), as the console publishes and cancels: an admin's,
every form (docs/security.md, "Roles"). The forms
and what they show once are an auto registration's (console/hook_forms.py); each
redirects back to the registration's page (pages/bulk.py), which shows them above the
hook's recent calls."""

from __future__ import annotations

from aiohttp import web

from services.operator.console.auth import Operator, action, flash, resources
from services.operator.console.bulk_api import bulk_api, written
from services.operator.console.forms import Form
from services.operator.console.hook_forms import HOOK_REMOVED, hold_test, hook_change, hook_set, sample_body
from shared.domain.roles import Role
from shared.http import path_id


def _back(registration_id: str) -> str:
    return f"/console/bulk-registrations/{registration_id}#hook"


@action(role=Role.ADMIN)
async def set_hook(request: web.Request, operator: Operator, form: Form) -> str:
    """Set or change the hook: a new URL (or the same one with ``new_secret`` ticked) gets
    a new signing secret, shown once; the timeout and the policy alone keep the secret."""
    registration_id = path_id(request, "registration_id")
    api = bulk_api(resources(request), operator)
    current = await written(api.show(registration_id))
    changed = await written(api.update(registration_id, hook_change(form, current.get("hook_url"))))
    secret = changed.get("hook_secret")
    hook_set(request, operator, registration_id, secret if isinstance(secret, str) else "")
    return _back(registration_id)


@action(role=Role.ADMIN)
async def remove_hook(request: web.Request, operator: Operator, form: Form) -> str:
    registration_id = path_id(request, "registration_id")
    await written(bulk_api(resources(request), operator).update(registration_id, {"hook_url": None}))
    flash(operator, HOOK_REMOVED)
    return _back(registration_id)


@action(role=Role.ADMIN)
async def try_hook(request: web.Request, operator: Operator, form: Form) -> str:
    """One real call with a sample request (the ``hardware_id`` field, SAMPLE-0001 when
    empty), made by the bulk API; its result is shown once on the registration's page."""
    registration_id = path_id(request, "registration_id")
    api = bulk_api(resources(request), operator)
    tested = await written(api.test_hook(registration_id, sample_body(form)))
    hold_test(operator, registration_id, tested)
    return _back(registration_id)


ROUTES: list[web.RouteDef] = [
    web.post("/bulk-registrations/{registration_id}/hook", set_hook),
    web.post("/bulk-registrations/{registration_id}/hook/remove", remove_hook),
    web.post("/bulk-registrations/{registration_id}/hook/test", try_hook),
]
