"""The notifier's business logic.

* :func:`record_events`: a batch of registry events in, their deliveries written (one per
  matching webhook, idempotent on the event ID) and refusals counted, before the batch's
  offsets are committed: an event is never lost, and one consumed twice adds nothing.
* :func:`attempt`: sign and send one claimed delivery, record the attempt, and mark it
  delivered, due again later (the retry schedule) or failed.
* :func:`sweep`: the periodic work: closed refusal minutes become registration.refused
  summaries, devices that went offline become device.offline events, finished deliveries
  past their retention are pruned, and the backlog gauges are set.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from standardwebhooks.webhooks import Webhook as Signer

from shared.db import webhooks
from shared.db.pool import Pool
from shared.db.webhooks import Attempt, DueDelivery, NewEvent, RefusalCount, after_registration, new_event
from shared.domain import webhooks as rules
from shared.domain.devices import online_cutoff
from shared.domain.identifiers import is_uuid
from shared.events import BulkPublished, DeviceSignal, Event, RegistrationDecided, RegistrationOutcome
from shared.metrics import (
    WEBHOOK_ATTEMPT_SECONDS,
    WEBHOOK_DELIVERIES,
    WEBHOOK_DELIVERY_LAG,
    WEBHOOK_LAG,
    WEBHOOK_PENDING,
    WEBHOOKS_DISABLED,
)

log = logging.getLogger(__name__)

# A refusal minute is summarised this long after it closed, so refusals still on their way
# through Kafka are counted in it (a later one makes a second summary for that minute).
REFUSAL_GRACE_S = 5.0
OFFLINE_BATCH = 1000  # device.offline transitions taken per sweep transaction


def _at(unix_s: float) -> datetime:
    return datetime.fromtimestamp(unix_s, UTC)


def _request_time(request_id: str, fallback: float) -> float:
    """When a request arrived: its ID is a UUID v7, whose first 48 bits are Unix milliseconds."""
    if is_uuid(request_id):
        parsed = uuid.UUID(request_id)
        if parsed.version == 7:
            return int.from_bytes(parsed.bytes[:6], "big") / 1000
    return fallback


def _minute(unix_s: float) -> datetime:
    return _at(math.floor(unix_s / 60) * 60)


async def record_events(pool: Pool, batch: Sequence[Event], now: float | None = None) -> int:
    """Deliveries for a batch of consumed events, and refusal counts; returns deliveries added.

    * RegistrationDecided ``new``: device.registered; ``clone``: device.clone_detected
      (``same`` is a device registering again: no event).
    * DeviceSignal ``ready``: device.provisioned.
    * BulkPublished: bulk.published.
    * RegistrationOutcome ``refused`` of an account's code: counted for the minute of the
      request, summarised later by :func:`sweep`.
    """
    at_now = time.time() if now is None else now
    events: list[NewEvent] = []
    refusals: list[RefusalCount] = []
    ready = [e for e in batch if isinstance(e, DeviceSignal) and e.kind == "ready"]
    devices = await webhooks.device_refs(pool, [s.device_id for s in ready]) if ready else {}
    for e in batch:
        # An event naming no valid account is of no webhook (and must not fail the batch,
        # which would hold the partition): skipped.
        if isinstance(e, RegistrationDecided) and e.decision in ("new", "clone") and is_uuid(e.account_id):
            kind = rules.DEVICE_REGISTERED if e.decision == "new" else rules.DEVICE_CLONE_DETECTED
            events.append(
                new_event(
                    e.account_id,
                    kind,
                    (e.request_id,),
                    e.device_id,
                    _at(e.received_at or _request_time(e.request_id, at_now)),
                    {
                        "device_id": e.device_id,
                        "hardware_id": e.hardware_id,
                        "product_id": e.product_id,
                        "request_id": e.request_id,
                        "decision": e.decision,
                    },
                )
            )
        elif isinstance(e, DeviceSignal) and e.kind == "ready" and e.device_id in devices:
            device, registration = devices[e.device_id]
            provisioned = new_event(
                device.account_id,
                rules.DEVICE_PROVISIONED,
                (e.device_id, repr(e.at)),
                e.device_id,
                _at(e.at),
                {
                    "device_id": device.device_id,
                    "hardware_id": device.hardware_id,
                    "product_id": device.product_id,
                },
            )
            events.append(after_registration(provisioned, registration))
        elif isinstance(e, BulkPublished) and is_uuid(e.account_id):
            events.append(
                new_event(
                    e.account_id,
                    rules.BULK_PUBLISHED,
                    (e.registration_id,),
                    "bulk:" + e.registration_id,
                    _at(e.at),
                    {
                        "registration_id": e.registration_id,
                        "product_id": e.product_id,
                        "published": e.published,
                        "conflicts": e.conflicts,
                    },
                )
            )
        elif isinstance(e, RegistrationOutcome) and e.status == "refused" and is_uuid(e.account_id):
            minute = _minute(_request_time(e.request_id, at_now))
            refusals.append(
                RefusalCount(e.account_id, minute, rules.refusal_reason(e.refused_by(), e.reason), 1)
            )
    async with pool.acquire() as conn, conn.transaction():
        added = await webhooks.enqueue(conn, events)
        await webhooks.add_refusals(conn, refusals)
    return added


def _refusal_summary(minute: webhooks.RefusalMinute) -> NewEvent:
    counts = {reason: minute.counts.get(reason, 0) for reason in rules.REFUSAL_REASONS}
    end = minute.minute + timedelta(minutes=1)
    return new_event(
        minute.account_id,
        rules.REGISTRATION_REFUSED,
        # A random part: a late refusal makes a second summary of the same minute, never a lost one.
        (minute.account_id, minute.minute.isoformat(), uuid.uuid4().hex),
        "registration.refused",
        end,
        {
            "minute": minute.minute.isoformat(),
            "window_seconds": 60,
            "counts": counts,
            "total": sum(counts.values()),
        },
    )


def _offline_event(found: webhooks.OfflineDevice, online_ttl_s: float) -> NewEvent:
    device = found.device
    return new_event(
        device.account_id,
        rules.DEVICE_OFFLINE,
        (device.device_id, found.last_seen_at.isoformat()),
        device.device_id,
        found.last_seen_at + timedelta(seconds=online_ttl_s),
        {
            "device_id": device.device_id,
            "hardware_id": device.hardware_id,
            "product_id": device.product_id,
            "last_seen_at": found.last_seen_at.astimezone(UTC).isoformat(),
        },
    )


async def sweep(pool: Pool, *, online_ttl_s: float, retention_s: float, now: datetime | None = None) -> int:
    """One round of the periodic work (safe on every instance at once); returns the
    deliveries it added."""
    at = now or datetime.now(UTC)
    added = 0
    closed_before = _minute(at.timestamp() - REFUSAL_GRACE_S)
    async with pool.acquire() as conn, conn.transaction():
        minutes = await webhooks.take_refusal_minutes(conn, closed_before)
        added += await webhooks.enqueue(conn, [_refusal_summary(m) for m in minutes])
    while True:
        async with pool.acquire() as conn, conn.transaction():
            offline = await webhooks.take_offline_devices(
                conn, online_cutoff(at, online_ttl_s), online_ttl_s, OFFLINE_BATCH
            )
            added += await webhooks.enqueue(conn, [_offline_event(o, online_ttl_s) for o in offline])
        if len(offline) < OFFLINE_BATCH:
            break
    await webhooks.fail_pending_of_disabled(pool)
    pruned = await webhooks.prune(pool, retention_s)
    if pruned:
        log.info("pruned finished webhook deliveries", extra={"deliveries": pruned})
    backlog = await webhooks.backlog(pool)
    WEBHOOK_PENDING.set(backlog.pending)
    WEBHOOK_LAG.set(backlog.lag_s)
    return added


class Answer(Protocol):
    """What one attempt got (shared/webhook_sender.py ``Answer``)."""

    @property
    def http_status(self) -> int | None: ...

    @property
    def error(self) -> str: ...

    @property
    def latency_ms(self) -> float: ...

    @property
    def delivered(self) -> bool: ...


Post = Callable[[str, str, dict[str, str]], Awaitable[Answer]]
Unseal = Callable[[str, bytes], str]


def signed_headers(secret: str, event_id: str, body: str, at: datetime) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt (``at``: the attempt's time)."""
    return {
        "webhook-id": event_id,
        "webhook-timestamp": str(math.floor(at.timestamp())),
        "webhook-signature": Signer(secret).sign(event_id, at, body),
    }


async def attempt(
    pool: Pool,
    due: DueDelivery,
    post: Post,
    unseal: Unseal,
    retry_schedule: Sequence[float],
    disable_after_s: float = rules.DEFAULT_DISABLE_AFTER_S,
) -> bool:
    """Sign and send one claimed delivery, record the attempt and the delivery's new
    state; True when delivered. ``post(url, body, headers)`` answers with
    ``http_status``, ``error``, ``latency_ms`` and ``delivered`` (shared/webhook_sender.py).

    A failed attempt may disable the webhook (:func:`rules.disable_reason`: 410 Gone, or
    every attempt failed for ``disable_after_s``): its pending deliveries are failed, no
    event is queued for it until the operator enables it again, and a warning is logged."""
    number = due.attempts + 1
    started = datetime.now(UTC)
    answer: Answer
    try:
        secret = unseal(due.webhook_id, due.sealed_secret)
    except ValueError as exc:
        answer = _NoAnswer(str(exc))
    else:
        answer = await post(due.url, due.payload, signed_headers(secret, due.event_id, due.payload, started))
    WEBHOOK_ATTEMPT_SECONDS.observe(answer.latency_ms / 1000)
    record = Attempt(number, started, answer.http_status, answer.error, answer.latency_ms)
    if answer.delivered:
        await webhooks.record_attempt(
            pool, due.id, record, status="delivered", retry_in_s=None, webhook_id=due.webhook_id
        )
        WEBHOOK_DELIVERIES.labels("delivered").inc()
        WEBHOOK_DELIVERY_LAG.observe(max(0.0, (datetime.now(UTC) - due.created_at).total_seconds()))
        return True
    delay = rules.retry_delay(number, retry_schedule)
    status = "failed" if delay is None else "pending"
    failing_since = await webhooks.record_attempt(
        pool, due.id, record, status=status, retry_in_s=delay, webhook_id=due.webhook_id
    )
    WEBHOOK_DELIVERIES.labels("failed" if delay is None else "retrying").inc()
    reason = rules.disable_reason(answer.http_status, failing_since, started, disable_after_s)
    if reason is not None and await webhooks.disable_webhook(pool, due.webhook_id, reason) is not None:
        WEBHOOKS_DISABLED.inc()
        log.warning("webhook disabled", extra={"webhook_id": due.webhook_id, "reason": reason})
    if delay is None:
        log.warning(
            "webhook delivery failed for good",
            extra={"webhook_id": due.webhook_id, "event_id": due.event_id, "attempts": number},
        )
    return False


@dataclass(frozen=True)
class _NoAnswer:
    """An attempt that could not be made (the secret does not decrypt)."""

    error: str
    http_status: int | None = None
    latency_ms: float = 0.0
    delivered: bool = False


async def claim(pool: Pool, *, per_webhook: int, limit: int, lease_s: float) -> list[DueDelivery]:
    """Due deliveries for this instance to send (see ``shared.db.webhooks.claim_due``)."""
    return await webhooks.claim_due(pool, per_webhook=per_webhook, limit=limit, lease_s=lease_s)
