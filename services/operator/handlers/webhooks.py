"""Webhooks: created (the URL's host checked for addresses webhooks may not call, a signing
secret sealed at rest), listed, enabled again, deleted, and their deliveries."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass
from typing import Any

from services.operator.handlers.query import Page, newest_first, newest_first_page
from shared.db import webhooks
from shared.db.pool import Pool
from shared.db.webhooks import Delivery, Webhook
from shared.domain import webhooks as webhook_rules
from shared.domain.accounts import Account
from shared.domain.inputs import refuse_unknown_fields
from shared.errors import InvalidInput
from shared.settings import Secret

WEBHOOK_FIELDS = ("url", "events")
RESOLVE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class IssuedWebhook:
    """A webhook just created: its signing secret exists in clear only here, once."""

    webhook: Webhook
    secret: str


async def _check_addresses(target: webhook_rules.Target, allow_private: bool) -> None:
    """Refuse a URL whose host is, or resolves to, an address webhooks may not call (the
    notifier checks again before every connection: a DNS answer may change).

    With private addresses refused, a name that does not resolve and a name that resolves
    to a refused address get one answer (:func:`webhook_rules.name_refusal`): two answers
    would tell a caller which internal names exist. Resolving here, rather than only at
    delivery, tells an honest operator of a typo at once; the answer is the same either way."""
    literal = target.literal
    if literal is not None:
        refusal = webhook_rules.address_refusal(str(literal), allow_private=allow_private)
        if refusal is not None:  # the caller wrote the address: saying what it is tells nothing new
            raise InvalidInput(f"url: {refusal}", field="url", rule="public-address")
        return
    try:
        found = await asyncio.wait_for(
            asyncio.get_running_loop().getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM),
            timeout=RESOLVE_TIMEOUT_S,
        )
    except (OSError, TimeoutError, UnicodeError, ValueError) as exc:
        if allow_private:  # every address may be called: there is nothing to hide
            raise InvalidInput(
                f"url: the host {target.host} cannot be resolved", field="url", rule="resolvable-host"
            ) from exc
        raise InvalidInput(
            f"url: {webhook_rules.name_refusal(target.host)}", field="url", rule="public-address"
        ) from None
    for info in found:
        if webhook_rules.address_refusal(str(info[4][0]), allow_private=allow_private) is not None:
            raise InvalidInput(
                f"url: {webhook_rules.name_refusal(target.host)}", field="url", rule="public-address"
            )


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
    await _check_addresses(target, allow_private)
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
