"""Webhooks: list, create (the signing secret shown once), delete (with a confirmation
step), enable one the notifier disabled, and a webhook's recent deliveries: an admin's, every
page and form (docs/security.md, "Roles"), as the API's webhook routes are.

The secret exists in clear only in the create call's answer (handlers.create_webhook).
The console redirects after the form (so a reload never creates a second webhook) and
shows the secret on the next page only: it crosses that redirect in the session sealed
(AES-256-GCM under FLEETREG_SECRET_KEY, the webhook's ID as associated data) and is
removed from the session by the page that shows it, so a reload no longer has it."""

from __future__ import annotations

import base64
from typing import Any

from aiohttp import web

from services.operator.console.auth import Context, Operator, action, flash, page, resources
from services.operator.handlers import webhooks as handlers
from services.operator.views import webhooks as views
from shared.domain.roles import Role
from shared.domain.webhooks import EVENT_TYPES, SecretBox
from shared.errors import InvalidInput, NotFound
from shared.http import path_id

# What the session holds between creating a webhook and showing its secret.
SHOWN_ONCE = "webhook_secret"
CONSOLE_WEBHOOK_SECRETS = b"fleetreg console webhook secret shown once v1"
DELIVERIES_SHOWN = 50


def _box(request: web.Request) -> SecretBox:
    key = resources(request).settings.secret_key.reveal().encode()
    return SecretBox(key, CONSOLE_WEBHOOK_SECRETS)


@page("webhooks.html", role=Role.ADMIN)
async def list_webhooks(request: web.Request, operator: Operator) -> Context:
    """``GET /console/webhooks``: the account's webhooks and, for a writer, the form. A
    read-only session sees each URL's scheme and host only, as the API shows it (a path
    or query often carries the receiver's own token)."""
    found = await handlers.list_webhooks(resources(request).pool, operator.account)
    shown = views.webhooks(found, masked=operator.read_only)
    return {"webhooks": shown["webhooks"], "event_types": EVENT_TYPES}


@action(role=Role.ADMIN)
async def create_webhook(request: web.Request, operator: Operator, form: Any) -> str:
    """``POST /console/webhooks``: ``url`` and ``events`` (checkboxes) as the API takes
    them; a refusal is flashed on the list. Off to the new webhook's page, which shows
    the secret once."""
    url = form.get("url", "")
    events = form.getall("events", [])
    if not isinstance(url, str) or not all(isinstance(e, str) for e in events):
        raise InvalidInput("url and events are text fields", field="url", rule="type=string")
    if not events:
        raise InvalidInput("choose at least one event", field="events", rule="min_items=1")
    settings = resources(request).settings
    issued = await handlers.create_webhook(
        resources(request).pool,
        operator.account,
        {"url": url.strip(), "events": list(events)},
        secret_key=settings.secret_key,
        allow_private=settings.webhooks_allow_private_urls,
        max_webhooks=settings.max_webhooks,
    )
    webhook_id = issued.webhook.id
    sealed = _box(request).seal(webhook_id, issued.secret)
    operator.session[SHOWN_ONCE] = {"id": webhook_id, "sealed": base64.b64encode(sealed).decode()}
    flash(operator, f"Webhook to {issued.webhook.url} created.")
    return f"/console/webhooks/{webhook_id}"


def _secret_once(request: web.Request, operator: Operator, webhook_id: str) -> str | None:
    """The new webhook's secret, if this session just created it; gone from the session
    once read. Never for a read-only session (it cannot create one anyway)."""
    held = operator.session.get(SHOWN_ONCE)
    if not isinstance(held, dict) or held.get("id") != webhook_id:
        return None
    del operator.session[SHOWN_ONCE]
    if operator.read_only:
        return None
    try:
        return _box(request).open(webhook_id, base64.b64decode(held["sealed"]))
    except (ValueError, KeyError, TypeError):
        return None  # sealed under a rotated FLEETREG_SECRET_KEY: the secret is lost, as documented


@page("webhook.html", role=Role.ADMIN)
async def show_webhook(request: web.Request, operator: Operator) -> Context:
    """``GET /console/webhooks/{id}``: the webhook and its newest deliveries (another
    account's webhook: 404)."""
    pool = resources(request).pool
    webhook_id = path_id(request, "webhook_id")
    found = await handlers.get_webhook(pool, operator.account, webhook_id)
    deliveries = await handlers.list_webhook_deliveries(
        pool,
        operator.account,
        webhook_id,
        {"limit": str(min(DELIVERIES_SHOWN, resources(request).settings.page_limit_max))},
        page_limit_max=resources(request).settings.page_limit_max,
    )
    return {
        "webhook": views.webhook(found, masked=operator.read_only),
        "secret": _secret_once(request, operator, found.id),
        # each with its attempts: the newest one's answer and latency are shown
        "deliveries": [views.webhook_delivery(d) for d in deliveries.items],
    }


@page("webhook_delete.html", role=Role.ADMIN)
async def confirm_delete(request: web.Request, operator: Operator) -> Context:
    """``GET /console/webhooks/{id}/delete``: the confirmation step (works without JS)."""
    webhook_id = path_id(request, "webhook_id")
    found = await handlers.get_webhook(resources(request).pool, operator.account, webhook_id)
    return {"webhook": views.webhook(found)}


@action(role=Role.ADMIN)
async def delete_webhook(request: web.Request, operator: Operator, form: Any) -> str:
    """``POST /console/webhooks/{id}/delete``: deletes it; back to the list."""
    try:
        webhook_id = path_id(request, "webhook_id")
        found = await handlers.get_webhook(resources(request).pool, operator.account, webhook_id)
        await handlers.delete_webhook(resources(request).pool, operator.account, webhook_id)
    except NotFound:
        # another account's webhook (or one deleted meanwhile) is the 404 page, as on a GET
        raise web.HTTPNotFound(reason="no such webhook in this account") from None
    flash(operator, f"Webhook to {found.url} deleted.")
    return "/console/webhooks"


@action(role=Role.ADMIN)
async def enable_webhook(request: web.Request, operator: Operator, form: Any) -> str:
    """``POST /console/webhooks/{id}/enable``: enables a webhook the notifier disabled;
    back to its page."""
    try:
        webhook_id = path_id(request, "webhook_id")
        found = await handlers.enable_webhook(resources(request).pool, operator.account, webhook_id)
    except NotFound:
        raise web.HTTPNotFound(reason="no such webhook in this account") from None
    flash(operator, f"Webhook to {found.url} enabled: new events are delivered to it.")
    return f"/console/webhooks/{webhook_id}"


ROUTES: list[web.RouteDef] = [
    web.get("/webhooks", list_webhooks),
    web.post("/webhooks", create_webhook),
    web.get("/webhooks/{webhook_id}", show_webhook),
    web.get("/webhooks/{webhook_id}/delete", confirm_delete),
    web.post("/webhooks/{webhook_id}/delete", delete_webhook),
    web.post("/webhooks/{webhook_id}/enable", enable_webhook),
]
