"""Webhooks (their URL masked for a read-only key; a new one's signing secret shown once)
and their deliveries with each attempt."""

from __future__ import annotations

from services.operator.handlers.webhooks import IssuedWebhook
from services.operator.views.common import Json, time
from shared.db.webhooks import Attempt, Delivery, Webhook
from shared.domain.accounts import masked_url


def webhook(found: Webhook, *, masked: bool = False) -> Json:
    """A webhook; for a read-only key (``masked``) its URL without path and query, which
    often carry the receiver's own token (the audit trail records only the host too).
    ``enabled`` false: the notifier disabled it at ``disabled_at`` for ``disabled_reason``
    and queues nothing for it; ``failing_since``: every attempt has failed since then."""
    return {
        "id": found.id,
        "url": masked_url(found.url) if masked else found.url,
        "events": list(found.events),
        "created_at": time(found.created_at),
        "enabled": found.enabled,
        "disabled_at": time(found.disabled_at),
        "disabled_reason": found.disabled_reason or None,
        "failing_since": time(found.failing_since),
    }


def webhooks(found: list[Webhook], *, masked: bool = False) -> Json:
    return {"webhooks": [webhook(w, masked=masked) for w in found]}


def issued_webhook(issued: IssuedWebhook) -> Json:
    return {
        **webhook(issued.webhook),
        "secret": issued.secret,
        "note": "the signing secret is shown once: store it now, it cannot be shown again",
    }


def deleted_webhook(webhook_id: str) -> Json:
    return {"deleted": webhook_id}


def webhook_attempt(attempt: Attempt) -> Json:
    return {
        "attempt": attempt.attempt,
        "at": time(attempt.at),
        "status_code": attempt.http_status,
        "error": attempt.error,
        "latency_ms": attempt.latency_ms,
    }


def webhook_delivery(delivery: Delivery) -> Json:
    return {
        "id": delivery.id,
        "event_id": delivery.event_id,
        "event_type": delivery.event_type,
        "status": delivery.status,
        "attempts": delivery.attempts,
        "created_at": time(delivery.created_at),
        "next_attempt_at": time(delivery.next_attempt_at) if delivery.status == "pending" else None,
        "finished_at": time(delivery.finished_at),
        "attempt_log": [webhook_attempt(a) for a in delivery.attempt_log],
    }
