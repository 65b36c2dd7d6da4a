"""Webhooks: an account's endpoints, their deliveries and every attempt (migration 0014).

The notifier turns consumed events into deliveries (:func:`enqueue`, idempotent on the
webhook and the event ID), claims due ones with a lease (:func:`claim_due`, safe with
several instances: a conditional update takes each row once), and records each attempt
(:func:`record_attempt`). A change the registry makes itself announces its event in its
own transaction (:func:`announce_device_changes`: the delivery rows are the outbox). The
operator API creates, lists and deletes webhooks (audited) and lists their deliveries.
Signing secrets are stored sealed (``shared.domain.webhooks.SecretBox``); this module
never sees one in clear.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from asyncpg import ForeignKeyViolationError, Record

from shared.db import audit
from shared.db.pool import Connection, Pool
from shared.domain import webhooks as rules
from shared.domain.accounts import Account, actor_fields
from shared.domain.identifiers import is_uuid
from shared.errors import Conflict, NotFound

# Serialises the creations of one account, so two at once cannot pass the limit; NO KEY
# UPDATE, so devices and keys referencing the account are not blocked meanwhile.
LOCK_ACCOUNT = "SELECT 1 FROM accounts WHERE id = $1 FOR NO KEY UPDATE"
COUNT_WEBHOOKS = "SELECT count(*) FROM webhooks WHERE account_id = $1"
INSERT_WEBHOOK = """INSERT INTO webhooks (id, account_id, url, events, secret_ciphertext)
                    VALUES ($1, $2, $3, $4, $5) RETURNING created_at"""
# Every statement that returns a webhook returns these columns (_webhook reads them).
SELECT_WEBHOOKS = """SELECT id::text, url, events, created_at, failing_since, disabled_at, disabled_reason
                      FROM webhooks
                      WHERE account_id = $1 ORDER BY created_at, id"""
SELECT_WEBHOOK = """SELECT id::text, url, events, created_at, failing_since, disabled_at, disabled_reason
                      FROM webhooks WHERE id = $1 AND account_id = $2"""
# The notifier's: the first failed attempt of a streak starts it; a delivery ends it.
START_FAILING = """UPDATE webhooks SET failing_since = coalesce(failing_since, $2) WHERE id = $1
                   RETURNING failing_since"""
STOP_FAILING = "UPDATE webhooks SET failing_since = NULL WHERE id = $1 AND failing_since IS NOT NULL"
# Disabled once (the first reason stays); its pending deliveries are failed with it.
DISABLE_WEBHOOK = """UPDATE webhooks SET disabled_at = now(), disabled_reason = $2
                     WHERE id = $1 AND disabled_at IS NULL RETURNING disabled_at"""
FAIL_PENDING = """UPDATE webhook_deliveries SET status = 'failed', leased_until = NULL, finished_at = now()
                  WHERE webhook_id = $1 AND status = 'pending'"""
LOCK_WEBHOOK = """SELECT id::text, url, events, created_at, failing_since, disabled_at, disabled_reason
                      FROM webhooks WHERE id = $1 AND account_id = $2 FOR UPDATE"""
ENABLE_WEBHOOK = """
    UPDATE webhooks SET disabled_at = NULL, disabled_reason = '', failing_since = NULL WHERE id = $1
    RETURNING id::text, url, events, created_at, failing_since, disabled_at, disabled_reason"""
DELETE_WEBHOOK = "DELETE FROM webhooks WHERE id = $1 AND account_id = $2 RETURNING url, events"
SELECT_DELIVERIES = """
    SELECT id::text, event_id, event_type, status, attempts, created_at, next_attempt_at, finished_at
    FROM webhook_deliveries
    WHERE webhook_id = $1
      AND ($2::timestamptz IS NULL OR created_at < $2 OR (created_at = $2 AND id < $3::uuid))
    ORDER BY created_at DESC, id DESC LIMIT $4"""
SELECT_ATTEMPTS = """SELECT delivery_id::text, attempt, at, http_status, error, latency_ms
                     FROM webhook_attempts WHERE delivery_id = ANY($1::uuid[])
                     ORDER BY delivery_id, attempt"""

# One delivery per (event, webhook of the event's account that wants its type and existed
# when it happened: a consumer group starting over from the topics' beginning replays
# history, which no webhook asked for); a redelivered event (same webhook and event ID)
# adds nothing.
ENQUEUE = """
    INSERT INTO webhook_deliveries
        (id, webhook_id, event_id, event_type, ordering_key, occurred_at, payload, after_event_id)
    SELECT gen_random_uuid(), w.id, e.event_id, e.kind, e.ordering_key, e.occurred_at, e.payload,
           -- Wait for the event before only when this webhook gets it too.
           CASE WHEN e.after_kind = ANY(w.events) AND e.after_at >= w.created_at
                THEN nullif(e.after_event_id, '') END
    FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::text[],
                $7::text[], $8::text[], $9::timestamptz[])
         WITH ORDINALITY AS e(account_id, kind, event_id, ordering_key, occurred_at, payload,
                              after_event_id, after_kind, after_at, n)
    JOIN webhooks w ON w.account_id = e.account_id AND e.kind = ANY(w.events)
                   AND e.occurred_at >= w.created_at AND w.disabled_at IS NULL
    ORDER BY e.n, w.id
    ON CONFLICT (webhook_id, event_id) DO NOTHING"""
# Whose devices these are (for events that name only a device), and the request of the
# device's last accepted registration (what a webhook got as device.registered or
# device.clone_detected, to deliver first).
SELECT_DEVICES = """
    SELECT d.id::text, d.account_id::text, d.product_id::text, d.hardware_id,
           r.request_id::text AS request_id, r.decision, r.received_at
    FROM devices d
    LEFT JOIN LATERAL (
        SELECT x.request_id, x.decision, x.received_at FROM registration_decisions x
        WHERE x.device_id = d.id AND x.decision IN ('new', 'same', 'clone')
        ORDER BY x.decided_at DESC LIMIT 1) r ON true
    WHERE d.id = ANY($1::uuid[])"""

# When a change of the account's devices happens (the transaction's time, as its
# device_events rows record it), and whether an enabled webhook of the account wants its
# event: when none does, the change costs no further query.
SELECT_ANNOUNCEMENT = """
    SELECT now() AS at,
           EXISTS (SELECT 1 FROM webhooks
                   WHERE account_id = $1 AND $2 = ANY(events) AND disabled_at IS NULL) AS wanted"""

# Due deliveries to send, fairly over webhooks: of each webhook (in random order) the
# earliest due ones, no more than ``per_webhook`` minus those already in flight, and each
# the first pending delivery of its webhook and ordering key (a device's events go out one
# at a time, in order). Every check is a scalar subquery (LIMIT 1, or a count of the
# leased), so it stays one index probe per webhook or candidate whatever the table's
# statistics say: written as NOT EXISTS, stale statistics after a burst made the planner
# scan a webhook's whole backlog per candidate (claims of seconds), and as EXISTS, hash
# every due row per claim. The conditional update takes each row once even when two
# instances pick the same candidates.
CLAIM_DUE = """
    WITH due_webhooks AS MATERIALIZED (
        SELECT w.id,
               (SELECT count(*) FROM webhook_deliveries b  -- a lease is only ever on a pending one
                WHERE b.webhook_id = w.id AND b.leased_until IS NOT NULL AND b.leased_until > now()
               ) AS in_flight
        FROM webhooks w
        WHERE w.disabled_at IS NULL
          AND (SELECT true FROM webhook_deliveries d
               WHERE d.webhook_id = w.id AND d.status = 'pending' AND d.next_attempt_at <= now()
               ORDER BY d.next_attempt_at LIMIT 1)
    ), open_webhooks AS (
        SELECT id, in_flight FROM due_webhooks WHERE in_flight < $1 ORDER BY random()
    ), picked AS (
        SELECT c.id FROM open_webhooks w
        CROSS JOIN LATERAL (
            SELECT d.id FROM webhook_deliveries d
            WHERE d.webhook_id = w.id AND d.status = 'pending' AND d.next_attempt_at <= now()
              AND (d.leased_until IS NULL OR d.leased_until <= now())
              AND d.seq = (
                  SELECT e.seq FROM webhook_deliveries e
                  WHERE e.webhook_id = d.webhook_id AND e.ordering_key = d.ordering_key
                    AND e.status = 'pending'
                  ORDER BY e.occurred_at, e.seq LIMIT 1)
              -- The event that must go first is delivered or failed; or it has not arrived
              -- within $4 seconds (its record lost or long delayed: go on without it).
              AND (d.after_event_id IS NULL
                   OR coalesce(
                          (SELECT p.status FROM webhook_deliveries p
                           WHERE p.webhook_id = d.webhook_id AND p.event_id = d.after_event_id),
                          CASE WHEN d.created_at < now() - make_interval(secs => $4) THEN 'gone' END
                      ) IN ('delivered', 'failed', 'gone'))
            ORDER BY d.next_attempt_at, d.seq
            LIMIT $1 - w.in_flight
        ) c
        LIMIT $2
    )
    UPDATE webhook_deliveries d SET leased_until = now() + make_interval(secs => $3)
    FROM webhooks w
    WHERE d.id = ANY(ARRAY(SELECT id FROM picked)) AND w.id = d.webhook_id AND d.status = 'pending'
      AND w.disabled_at IS NULL
      AND (d.leased_until IS NULL OR d.leased_until <= now())
    RETURNING d.id::text, d.webhook_id::text, w.url, w.secret_ciphertext, d.event_id, d.event_type,
              d.payload, d.attempts, d.created_at"""
INSERT_ATTEMPT = """INSERT INTO webhook_attempts (delivery_id, attempt, at, http_status, error, latency_ms)
                    VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING"""
FINISH_ATTEMPT = """
    UPDATE webhook_deliveries
    SET attempts = $2, status = $3, leased_until = NULL,
        next_attempt_at = CASE WHEN $4::float8 IS NULL THEN next_attempt_at
                               ELSE now() + make_interval(secs => $4::float8) END,
        finished_at = CASE WHEN $3 = 'pending' THEN NULL ELSE now() END
    WHERE id = $1 AND status = 'pending'"""
# Deliveries queued for a webhook by a transaction that began before the webhook was
# disabled and committed after it: disable_webhook's FAIL_PENDING could not see them.
FAIL_PENDING_OF_DISABLED = """
    UPDATE webhook_deliveries d SET status = 'failed', leased_until = NULL, finished_at = now()
    FROM webhooks w
    WHERE d.webhook_id = w.id AND w.disabled_at IS NOT NULL AND d.status = 'pending'"""
SELECT_BACKLOG = """
    SELECT count(*) AS pending,
           extract(epoch FROM now() - min(next_attempt_at) FILTER (WHERE next_attempt_at <= now())) AS lag
    FROM webhook_deliveries WHERE status = 'pending'"""
# Retention: finished deliveries (and their attempts, by cascade) past the age, oldest
# first, a small batch per transaction, so no lock is held for long.
PRUNE = """
    DELETE FROM webhook_deliveries WHERE id IN (
        SELECT id FROM webhook_deliveries
        WHERE status <> 'pending' AND finished_at < now() - make_interval(secs => $1)
        ORDER BY finished_at LIMIT $2 FOR UPDATE SKIP LOCKED)"""

# Refusals of the account's own codes, counted only for accounts with a webhook for them;
# sorted input, so concurrent upserts lock shared rows in one order.
ADD_REFUSALS = """
    INSERT INTO webhook_refusal_counts (account_id, minute, reason, count)
    SELECT c.account_id, c.minute, c.reason, c.count
    FROM unnest($1::uuid[], $2::timestamptz[], $3::text[], $4::int[]) AS c(account_id, minute, reason, count)
    WHERE EXISTS (SELECT 1 FROM webhooks w
                  WHERE w.account_id = c.account_id AND 'registration.refused' = ANY(w.events)
                    AND w.disabled_at IS NULL)
    ON CONFLICT (account_id, minute, reason) DO UPDATE
       SET count = webhook_refusal_counts.count + excluded.count"""
# Closed minutes, taken out once: a concurrent instance waits, then finds them gone.
TAKE_REFUSALS = """DELETE FROM webhook_refusal_counts WHERE minute < $1
                   RETURNING account_id::text, minute, reason, count"""

# Devices that went offline (provisioned, enabled, last seen at or before the cut-off)
# while a webhook of their account wanted device.offline, and not announced yet for this
# last sign of life. The conditional upsert takes each transition once.
TAKE_OFFLINE = """
    WITH subscribed AS (
        SELECT account_id, min(created_at) AS since FROM webhooks
        WHERE 'device.offline' = ANY(events) AND disabled_at IS NULL GROUP BY account_id
    ), candidates AS (
        SELECT d.id, d.account_id, d.product_id, d.hardware_id, d.last_seen_at
        FROM subscribed s JOIN devices d ON d.account_id = s.account_id
        WHERE d.lifecycle = 'provisioned' AND NOT d.disabled
          AND d.last_seen_at <= $1
          AND d.last_seen_at > s.since - make_interval(secs => $2)
          AND NOT EXISTS (SELECT 1 FROM webhook_offline_announcements a
                          WHERE a.device_id = d.id AND a.last_seen_at >= d.last_seen_at)
        ORDER BY d.last_seen_at
        LIMIT $3
    ), taken AS (
        INSERT INTO webhook_offline_announcements (device_id, last_seen_at)
        SELECT id, last_seen_at FROM candidates ORDER BY id
        ON CONFLICT (device_id) DO UPDATE SET last_seen_at = excluded.last_seen_at
           WHERE webhook_offline_announcements.last_seen_at < excluded.last_seen_at
        RETURNING device_id
    )
    SELECT c.id::text, c.account_id::text, c.product_id::text, c.hardware_id, c.last_seen_at
    FROM candidates c JOIN taken t ON t.device_id = c.id"""


@dataclass(frozen=True)
class Webhook:
    """An endpoint of an account and the event types it gets (never its secret).
    ``failing_since``: its first failed attempt since the last delivered one (None while
    deliveries succeed); ``disabled_at`` and ``disabled_reason``: when and why the notifier
    disabled it (None and "" while enabled)."""

    id: str
    url: str
    events: tuple[str, ...]
    created_at: datetime
    failing_since: datetime | None = None
    disabled_at: datetime | None = None
    disabled_reason: str = ""

    @property
    def enabled(self) -> bool:
        return self.disabled_at is None


@dataclass(frozen=True)
class Attempt:
    """One try: ``http_status`` None when no answer came (``error`` says why); ``latency_ms``
    from sending the request to the answer's head (or the failure)."""

    attempt: int
    at: datetime
    http_status: int | None
    error: str
    latency_ms: float


@dataclass(frozen=True)
class Delivery:
    """One event for one webhook: pending (``next_attempt_at`` is when it is due),
    delivered or failed (``finished_at``), with its attempts, oldest first."""

    id: str
    event_id: str
    event_type: str
    status: str
    attempts: int
    created_at: datetime
    next_attempt_at: datetime
    finished_at: datetime | None
    attempt_log: tuple[Attempt, ...] = ()


@dataclass(frozen=True)
class NewEvent:
    """An event of an account, ready to be delivered to its webhooks that want ``kind``;
    ``payload`` is the exact JSON body; deliveries with one ``ordering_key`` (a device ID)
    go out in ``occurred_at`` order."""

    account_id: str
    kind: str
    event_id: str
    ordering_key: str
    occurred_at: datetime
    payload: str
    # An event of the same webhook to deliver first, if the webhook gets ``after_kind`` and
    # existed at ``after_at`` (a device's registration before its confirmation).
    after_event_id: str = ""
    after_kind: str = ""
    after_at: datetime | None = None


@dataclass(frozen=True)
class DueDelivery:
    """A delivery claimed for sending, with what the attempt needs (the sealed secret)."""

    id: str
    webhook_id: str
    url: str
    sealed_secret: bytes
    event_id: str
    event_type: str
    payload: str
    attempts: int  # made before this one
    created_at: datetime


@dataclass(frozen=True)
class DeviceRef:
    """A device as events about it name it."""

    device_id: str
    account_id: str
    product_id: str
    hardware_id: str


@dataclass(frozen=True)
class LastRegistration:
    """A device's last accepted registration: its request, decision (new, same, clone) and
    when the intake received it."""

    request_id: str
    decision: str
    received_at: datetime


@dataclass(frozen=True)
class OfflineDevice:
    device: DeviceRef
    last_seen_at: datetime


@dataclass(frozen=True)
class RefusalCount:
    """``count`` refusals of an account's codes for ``reason`` in the minute starting at ``minute``."""

    account_id: str
    minute: datetime
    reason: str
    count: int


@dataclass(frozen=True)
class RefusalMinute:
    """A closed minute of one account: counts by reason (only reasons that occurred)."""

    account_id: str
    minute: datetime
    counts: dict[str, int]


@dataclass(frozen=True)
class Backlog:
    """Pending deliveries, and how long the oldest due one has waited (0 when none is due)."""

    pending: int
    lag_s: float


def _webhook(r: Record) -> Webhook:
    return Webhook(
        id=r["id"],
        url=r["url"],
        events=tuple(r["events"]),
        created_at=r["created_at"],
        failing_since=r["failing_since"],
        disabled_at=r["disabled_at"],
        disabled_reason=r["disabled_reason"],
    )


# ------------------------------------------------------------------ operator side


async def create_webhook(
    pool: Pool,
    actor: Account,
    webhook_id: str,
    url: str,
    events: Sequence[str],
    sealed_secret: bytes,
    *,
    host: str,
    max_per_account: int,
) -> Webhook:
    """A new webhook of the actor's account (Conflict past ``max_per_account``); audited as
    ``webhook.created`` with its host and events (not the whole URL, which may carry a
    token in its path; never the secret)."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(LOCK_ACCOUNT, actor.id)
        if await conn.fetchval(COUNT_WEBHOOKS, actor.id) >= max_per_account:
            raise Conflict(
                f"the account has {max_per_account} webhooks already: delete one first",
                field="url",
                rule=f"max_webhooks={max_per_account}",
            )
        created_at = await conn.fetchval(
            INSERT_WEBHOOK, webhook_id, actor.id, url, list(events), sealed_secret
        )
        await audit.record(
            conn, actor, "webhook.created", "webhook", webhook_id, {"host": host, "events": list(events)}
        )
    return Webhook(id=webhook_id, url=url, events=tuple(events), created_at=created_at)


async def list_webhooks(pool: Pool, account_id: str) -> list[Webhook]:
    """The account's webhooks, oldest first."""
    return [_webhook(r) for r in await pool.fetch(SELECT_WEBHOOKS, account_id)]


async def get_webhook(pool: Pool, account_id: str, webhook_id: str) -> Webhook:
    """One webhook of the account; NotFound for an unknown ID or another account's."""
    row = await pool.fetchrow(SELECT_WEBHOOK, webhook_id, account_id) if is_uuid(webhook_id) else None
    if row is None:
        raise NotFound(f"no webhook {webhook_id} in this account")
    return _webhook(row)


async def delete_webhook(pool: Pool, actor: Account, webhook_id: str) -> None:
    """Delete a webhook with its deliveries (NotFound otherwise); audited as ``webhook.deleted``.
    A delivery in flight at that moment may still arrive once."""
    if not is_uuid(webhook_id):
        raise NotFound(f"no webhook {webhook_id} in this account")
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(DELETE_WEBHOOK, webhook_id, actor.id)
        if row is None:
            raise NotFound(f"no webhook {webhook_id} in this account")
        await audit.record(
            conn, actor, "webhook.deleted", "webhook", webhook_id, {"events": list(row["events"])}
        )


async def enable_webhook(pool: Pool, actor: Account, webhook_id: str) -> Webhook:
    """Enable a disabled webhook again (its failing streak forgotten): events from now on
    are delivered to it; those while it was disabled are not. Audited as
    ``webhook.enabled`` with the reason it had been disabled for; nothing when it was
    enabled already. NotFound for a webhook not of the actor's account."""
    if not is_uuid(webhook_id):
        raise NotFound(f"no webhook {webhook_id} in this account")
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(LOCK_WEBHOOK, webhook_id, actor.id)
        if row is None:
            raise NotFound(f"no webhook {webhook_id} in this account")
        if row["disabled_at"] is None:
            return _webhook(row)
        enabled = await conn.fetchrow(ENABLE_WEBHOOK, webhook_id)
        if enabled is None:  # locked above, in this transaction: it cannot be gone
            raise NotFound(f"no webhook {webhook_id} in this account")
        await audit.record(
            conn,
            actor,
            "webhook.enabled",
            "webhook",
            webhook_id,
            {"was_disabled_for": row["disabled_reason"]},
        )
    return _webhook(enabled)


async def list_deliveries(
    pool: Pool,
    account_id: str,
    webhook_id: str,
    *,
    limit: int,
    before: datetime | None = None,
    before_id: str | None = None,
) -> list[Delivery]:
    """A webhook's deliveries, newest first, each with its attempts; ``before`` (and
    ``before_id``, the last ID seen at that time) pages back. NotFound for a webhook not
    of the account."""
    await get_webhook(pool, account_id, webhook_id)
    rows = await pool.fetch(SELECT_DELIVERIES, webhook_id, before, before_id, limit)
    attempts: dict[str, list[Attempt]] = defaultdict(list)
    for a in await pool.fetch(SELECT_ATTEMPTS, [r["id"] for r in rows]):
        attempts[a["delivery_id"]].append(
            Attempt(a["attempt"], a["at"], a["http_status"], a["error"], a["latency_ms"])
        )
    return [
        Delivery(
            id=r["id"],
            event_id=r["event_id"],
            event_type=r["event_type"],
            status=r["status"],
            attempts=r["attempts"],
            created_at=r["created_at"],
            next_attempt_at=r["next_attempt_at"],
            finished_at=r["finished_at"],
            attempt_log=tuple(attempts[r["id"]]),
        )
        for r in rows
    ]


# ------------------------------------------------------------------ notifier side


async def enqueue(conn: Connection | Pool, events: Sequence[NewEvent]) -> int:
    """Deliveries for the events (one per webhook of the event's account that wants its
    kind and was created before the event occurred); an event ID a webhook has already is
    skipped. Returns how many were added."""
    if not events:
        return 0
    status = await conn.execute(
        ENQUEUE,
        [e.account_id for e in events],
        [e.kind for e in events],
        [e.event_id for e in events],
        [e.ordering_key for e in events],
        [e.occurred_at for e in events],
        [e.payload for e in events],
        [e.after_event_id for e in events],
        [e.after_kind for e in events],
        [e.after_at for e in events],
    )
    return int(status.rsplit(" ", 1)[-1])


async def device_refs(
    conn: Connection | Pool, device_ids: Sequence[str]
) -> dict[str, tuple[DeviceRef, LastRegistration | None]]:
    """The devices among ``device_ids`` that exist, by ID, each with its last accepted
    registration when the registry still has it (IDs that are not UUIDs are skipped)."""
    ids = [d for d in set(device_ids) if is_uuid(d)]
    if not ids:
        return {}
    return {
        r["id"]: (
            DeviceRef(r["id"], r["account_id"], r["product_id"], r["hardware_id"]),
            LastRegistration(r["request_id"], r["decision"], r["received_at"]) if r["request_id"] else None,
        )
        for r in await conn.fetch(SELECT_DEVICES, ids)
    }


def new_event(
    account_id: str, kind: str, source: Sequence[str], ordering_key: str, at: datetime, data: dict[str, Any]
) -> NewEvent:
    """An event of ``kind`` that happened at ``at``: its ID derived from ``source`` (what
    caused it, so the same cause gives the same ID: ``shared.domain.webhooks.event_id``),
    its body the Standard Webhooks payload of ``data``; deliveries with one
    ``ordering_key`` (a device ID) go out in ``at`` order."""
    return NewEvent(
        account_id=account_id,
        kind=kind,
        event_id=rules.event_id(kind, *source),
        ordering_key=ordering_key,
        occurred_at=at,
        payload=orjson.dumps(rules.body(kind, at, data)).decode(),
    )


def after_registration(event: NewEvent, registration: LastRegistration | None) -> NewEvent:
    """The event, to be delivered after the device's registration event (the
    ``device.registered`` or ``device.clone_detected`` of ``registration``), which the
    notifier may consume later: it reads registrations from Kafka, while confirmations come
    from another topic and device changes from the registry. A webhook that does not get
    that event, or did not exist when it happened, does not wait (shared.db.webhooks
    ENQUEUE); nor does anyone past ``shared.domain.webhooks.ORDER_WAIT_S``."""
    if registration is None or registration.decision not in ("new", "clone"):
        return event  # registering again (same) makes no event to wait for
    kind = rules.DEVICE_REGISTERED if registration.decision == "new" else rules.DEVICE_CLONE_DETECTED
    return dataclasses.replace(
        event,
        after_event_id=rules.event_id(kind, registration.request_id),
        after_kind=kind,
        after_at=registration.received_at,
    )


async def announce_device_changes(
    conn: Connection, actor: Account, kind: str, device_ids: Sequence[str]
) -> int:
    """Deliveries of ``kind`` (``device.disabled``) for the actor's devices ``device_ids``,
    which the caller's transaction has just changed (``conn`` must be in it: the change and
    its event commit together or not at all, so none is lost and none is sent for a change
    rolled back). One event per device: ``data`` the device's ``device_id``,
    ``hardware_id`` and ``product_id``, and the actor's ``api_key_id`` (None for a change
    made without a key) and ``api_key_label``; ``timestamp`` the transaction's time. Each
    waits for the device's registration event when that registration was received within
    ``ORDER_WAIT_S`` (the notifier may not have consumed it yet; an older one was, or its
    delivery may have been pruned, and waiting for it would only delay this one). Returns
    the deliveries added; no query when no device is given, one when no enabled webhook of
    the account wants ``kind``."""
    if not device_ids:
        return 0
    row = await conn.fetchrow(SELECT_ANNOUNCEMENT, actor.id, kind)
    if row is None or not row["wanted"]:
        return 0
    at: datetime = row["at"]
    recent = at - timedelta(seconds=rules.ORDER_WAIT_S)
    events = []
    for device, registration in (await device_refs(conn, device_ids)).values():
        event = new_event(
            device.account_id,
            kind,
            (device.device_id, at.isoformat()),
            device.device_id,
            at,
            {
                "device_id": device.device_id,
                "hardware_id": device.hardware_id,
                "product_id": device.product_id,
                "api_key_id": actor.key_id,
                "api_key_label": actor.key_label,
                "actor": actor_fields(actor),
            },
        )
        waits = registration is not None and registration.received_at >= recent
        events.append(after_registration(event, registration if waits else None))
    return await enqueue(conn, sorted(events, key=lambda e: e.ordering_key))


async def claim_due(
    pool: Pool, *, per_webhook: int, limit: int, lease_s: float, order_wait_s: float = rules.ORDER_WAIT_S
) -> list[DueDelivery]:
    """Take up to ``limit`` due deliveries for sending (see CLAIM_DUE) under a lease of
    ``lease_s`` seconds: another instance takes one again only after the lease lapsed. A
    delivery whose event must follow another not consumed yet waits up to ``order_wait_s``."""
    if limit <= 0:
        return []
    async with pool.acquire() as conn, conn.transaction():
        # Its cost estimate (a subquery per candidate) passes jit_above_cost, and compiling
        # it takes longer than running it: tens of milliseconds per claim, for nothing.
        await conn.execute("SET LOCAL jit = off")
        rows = await conn.fetch(CLAIM_DUE, per_webhook, limit, lease_s, order_wait_s)
    return [
        DueDelivery(
            id=r["id"],
            webhook_id=r["webhook_id"],
            url=r["url"],
            sealed_secret=bytes(r["secret_ciphertext"]),
            event_id=r["event_id"],
            event_type=r["event_type"],
            payload=r["payload"],
            attempts=r["attempts"],
            created_at=r["created_at"],
        )
        for r in rows
    ]


async def record_attempt(
    pool: Pool,
    delivery_id: str,
    attempt: Attempt,
    *,
    status: str,
    retry_in_s: float | None,
    webhook_id: str | None = None,
) -> datetime | None:
    """Record an attempt and the delivery's new state: ``status`` delivered, failed, or
    pending (then due again in ``retry_in_s`` seconds); the lease ends. Nothing when the
    delivery is gone (its webhook was deleted during the attempt).

    With ``webhook_id``, also the webhook's failing streak: a delivered attempt ends it, a
    failed one starts it at the attempt's time unless one is running. Returns when the
    running streak started (None after a delivery, or when the webhook is gone)."""
    since: datetime | None = None
    try:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(
                INSERT_ATTEMPT,
                delivery_id,
                attempt.attempt,
                attempt.at,
                attempt.http_status,
                attempt.error,
                attempt.latency_ms,
            )
            await conn.execute(FINISH_ATTEMPT, delivery_id, attempt.attempt, status, retry_in_s)
            if webhook_id is not None and status == "delivered":
                await conn.execute(STOP_FAILING, webhook_id)
            elif webhook_id is not None:
                since = await conn.fetchval(START_FAILING, webhook_id, attempt.at)
    except ForeignKeyViolationError:
        return None
    return since


async def disable_webhook(pool: Pool, webhook_id: str, reason: str) -> datetime | None:
    """Disable a webhook for ``reason`` (shown to the operator), and fail its pending
    deliveries: no attempt is made for it and no event is queued for it until the operator
    enables it again. Returns when it was disabled; None when it already was (the first
    reason stays) or is gone."""
    async with pool.acquire() as conn, conn.transaction():
        disabled_at: datetime | None = await conn.fetchval(DISABLE_WEBHOOK, webhook_id, reason)
        if disabled_at is not None:
            await conn.execute(FAIL_PENDING, webhook_id)
    return disabled_at


async def fail_pending_of_disabled(pool: Pool) -> int:
    """Fail the pending deliveries of disabled webhooks that :func:`disable_webhook` could not
    see (queued by a transaction that committed after it): no attempt is made for them, and
    left pending they would count in the backlog and its lag for ever. Returns how many."""
    status = await pool.execute(FAIL_PENDING_OF_DISABLED)
    return int(status.rsplit(" ", 1)[-1])


async def backlog(pool: Pool) -> Backlog:
    row = await pool.fetchrow(SELECT_BACKLOG)
    lag = row["lag"] if row is not None else None
    return Backlog(pending=row["pending"] if row is not None else 0, lag_s=float(lag or 0.0))


async def prune(pool: Pool, older_than_s: float, batch: int = 1000) -> int:
    """Delete finished deliveries older than ``older_than_s`` (by when they finished; 0
    keeps them forever), a batch per transaction, rows another instance is deleting
    skipped; returns how many went."""
    total = 0
    if older_than_s <= 0:
        return total
    while True:
        status = await pool.execute(PRUNE, older_than_s, batch)
        deleted = int(status.rsplit(" ", 1)[-1])
        total += deleted
        if deleted < batch:
            return total


async def add_refusals(conn: Connection | Pool, counts: Sequence[RefusalCount]) -> None:
    """Add refusal counts (kept only for accounts with a registration.refused webhook)."""
    merged: dict[tuple[str, datetime, str], int] = defaultdict(int)
    for c in counts:
        merged[c.account_id, c.minute, c.reason] += c.count
    keys = sorted(merged)
    if not keys:
        return
    await conn.execute(
        ADD_REFUSALS,
        [k[0] for k in keys],
        [k[1] for k in keys],
        [k[2] for k in keys],
        [merged[k] for k in keys],
    )


async def take_refusal_minutes(conn: Connection, before: datetime) -> list[RefusalMinute]:
    """Remove and return the counts of minutes that start before ``before``, one per
    account and minute; call it in the transaction that enqueues their summaries."""
    grouped: dict[tuple[str, datetime], dict[str, int]] = defaultdict(dict)
    for r in await conn.fetch(TAKE_REFUSALS, before):
        grouped[r["account_id"], r["minute"]][r["reason"]] = r["count"]
    return [RefusalMinute(account, minute, counts) for (account, minute), counts in sorted(grouped.items())]


async def take_offline_devices(
    conn: Connection, cutoff: datetime, online_ttl_s: float, limit: int
) -> list[OfflineDevice]:
    """Devices that went offline (last seen at or before ``cutoff``) while their account
    had a device.offline webhook, not announced yet for this last sign of life: marked
    announced, and returned once (whichever instance asks first). Call it in the
    transaction that enqueues their events."""
    rows = await conn.fetch(TAKE_OFFLINE, cutoff, online_ttl_s, limit)
    return [
        OfflineDevice(
            DeviceRef(r["id"], r["account_id"], r["product_id"], r["hardware_id"]), r["last_seen_at"]
        )
        for r in rows
    ]


def new_webhook_id() -> str:
    return str(uuid.uuid4())
