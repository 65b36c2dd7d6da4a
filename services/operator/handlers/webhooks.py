"""Webhooks: created (the URL's host checked for addresses webhooks may not call, a signing
secret sealed at rest), listed, enabled again, deleted, and their deliveries."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.operator.handlers.query import Page, newest_first, newest_first_page
from shared.addresses import check_addresses
from shared.db import webhooks
from shared.db.pool import Pool
from shared.db.webhooks import Delivery, Webhook
from shared.domain import webhooks as webhook_rules
from shared.domain.accounts import Account
from shared.domain.inputs import refuse_unknown_fields
from shared.settings import Secret

WEBHOOK_FIELDS = ("url", "events")


@dataclass(frozen=True)
class IssuedWebhook:
    """A webhook just created: its signing secret exists in clear only here, once."""

    webhook: Webhook
    secret: str


async def create_webhook(
    pool: Pool,
    account: Account,
    body: dict[str, Any],
    *,
    secret_key: Secret,
    allow_private: bool,
    max_webhooks: int,
) -> IssuedWebhook:
    """A webhook for ``body`` (``url``, ``events``), with a new signing secret sealed at rest."""
    refuse_unknown_fields(body, WEBHOOK_FIELDS, what="a webhook")
    url, target = webhook_rules.checked_url(body.get("url"))
    events = webhook_rules.checked_events(body.get("events"))
    await check_addresses(target, allow_private)
    webhook_id = webhooks.new_webhook_id()
    secret = webhook_rules.new_secret()
    sealed = webhook_rules.SecretBox(secret_key.reveal().encode()).seal(webhook_id, secret)
    created = await webhooks.create_webhook(
        pool, account, webhook_id, url, events, sealed, host=target.host, max_per_account=max_webhooks
    )
    return IssuedWebhook(created, secret)


async def list_webhooks(pool: Pool, account: Account) -> list[Webhook]:
    return await webhooks.list_webhooks(pool, account.id)


async def get_webhook(pool: Pool, account: Account, webhook_id: str) -> Webhook:
    return await webhooks.get_webhook(pool, account.id, webhook_id)


async def delete_webhook(pool: Pool, account: Account, webhook_id: str) -> None:
    await webhooks.delete_webhook(pool, account, webhook_id)


async def enable_webhook(pool: Pool, account: Account, webhook_id: str) -> Webhook:
    """Enable a webhook the notifier disabled (410 Gone, or failing for days); one that is
    enabled stays as it is. NotFound for another account's."""
    return await webhooks.enable_webhook(pool, account, webhook_id)


async def list_webhook_deliveries(
    pool: Pool, account: Account, webhook_id: str, query: dict[str, str], *, page_limit_max: int
) -> Page[Delivery]:
    """A webhook's deliveries with their attempts, newest first; ``before`` pages back."""
    _, limit, when, before_id = newest_first(query, None, (), page_limit_max)
    found = await webhooks.list_deliveries(
        pool, account.id, webhook_id, limit=limit, before=when, before_id=before_id
    )
    return newest_first_page(found, limit, lambda d: d.created_at, lambda d: d.id)
