"""The operator audit trail: who (which API key) changed what, and when.

Every state-changing operator call records one event with :func:`record` on the connection
of its own transaction, so the change and its event commit or roll back together (the
peers' equivalents: Azure activity log, AWS CloudTrail management events). The API key's
label is copied at the time of the change: a later revocation does not rewrite history.
``changes`` holds field values, never a secret: a rotated code is recorded as rotated, not
copied; an API key by its ID and label.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.db.pool import Connection, Pool
from shared.domain.accounts import Account

INSERT_EVENT = """
    INSERT INTO operator_audit_events
        (id, account_id, api_key_id, api_key_label, action, target_type, target_id, changes,
         user_id, user_email, actor_role, service_account, session_id)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9, $10, $11, $12, $13)"""
# Newest first; the cursor is the last event's (at, id). Every filter is optional.
SELECT_EVENTS = """
    SELECT id::text, at, api_key_id::text, api_key_label, action, target_type, target_id,
           changes::text AS changes, user_id::text, user_email, actor_role, service_account,
           session_id::text
    FROM operator_audit_events
    WHERE account_id = $1
      AND ($2::text IS NULL OR action = $2)
      AND ($3::text IS NULL OR target_id = $3)
      AND ($4::timestamptz IS NULL OR at >= $4)
      AND ($5::timestamptz IS NULL OR at < $5)
      AND ($6::uuid IS NULL OR api_key_id = $6)
      AND ($7::timestamptz IS NULL OR at < $7 OR (at = $7 AND id < $8::uuid))
      AND ($10::uuid IS NULL OR user_id = $10)
    ORDER BY at DESC, id DESC
    LIMIT $9"""


@dataclass(frozen=True)
class AuditEvent:
    """One recorded operator action. ``api_key_id`` is None for changes fleetreg made
    itself (the CLI's account setup); ``changes`` maps a field to its new value (or, for a
    change of state, ``{"from": old, "to": new}``)."""

    id: str
    at: datetime
    api_key_id: str | None
    api_key_label: str
    action: str
    target_type: str
    target_id: str
    changes: dict[str, Any]
    # Who, when a person or a service account acted (None for events before migration 0036
    # and for fleetreg's own changes): the user and their e-mail at the time, the role the
    # call carried, the service account, the console session.
    user_id: str | None = None
    user_email: str | None = None
    role: str | None = None
    service_account: str | None = None
    session_id: str | None = None


@dataclass(frozen=True)
class AuditFilter:
    """What :func:`list_events` selects; None means any."""

    action: str | None = None
    target_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    api_key_id: str | None = None
    user_id: str | None = None


async def record(
    conn: Connection,
    actor: Account,
    action: str,
    target_type: str,
    target_id: str,
    changes: Mapping[str, Any] | None = None,
) -> None:
    """Record that ``actor`` did ``action`` (``"device.disabled"``, ``"product.locked"``, ...)
    to ``target_type``/``target_id``, in the caller's transaction (``conn`` must be in one:
    an event without its change, or a change without its event, must not commit)."""
    await conn.execute(INSERT_EVENT, *_event_row(actor, action, target_type, target_id, changes or {}))


def _event_row(
    actor: Account, action: str, target_type: str, target_id: str, changes: Mapping[str, Any]
) -> tuple[Any, ...]:
    """INSERT_EVENT's arguments for one event: a new ID, the actor, and the changes as JSON
    (values JSON does not know, such as times, as their text)."""
    return (
        uuid.uuid4(),
        actor.id,
        actor.key_id,
        actor.key_label,
        action,
        target_type,
        target_id,
        json.dumps(dict(changes), default=str),
        uuid.UUID(actor.user_id) if actor.user_id else None,
        actor.user_email,
        str(actor.role) if actor.key_id or actor.session_id else None,
        actor.service_account,
        uuid.UUID(actor.session_id) if actor.session_id else None,
    )


async def list_events(
    pool: Pool,
    account_id: str,
    where: AuditFilter,
    *,
    limit: int,
    before: tuple[datetime, str | None] | None = None,
) -> list[AuditEvent]:
    """The account's events matching ``where``, newest first, at most ``limit``, those
    before the cursor ``before`` when given: the last event's ``(at, id)``, or ``(at, None)``
    for every event strictly older than ``at``."""
    rows = await pool.fetch(
        SELECT_EVENTS,
        account_id,
        where.action,
        where.target_id,
        where.since,
        where.until,
        where.api_key_id,
        before[0] if before else None,
        before[1] if before else None,
        limit,
        where.user_id,
    )
    return [
        AuditEvent(
            id=r["id"],
            at=r["at"],
            api_key_id=r["api_key_id"],
            api_key_label=r["api_key_label"],
            action=r["action"],
            target_type=r["target_type"],
            target_id=r["target_id"],
            changes=json.loads(r["changes"]),
            user_id=r["user_id"],
            user_email=r["user_email"],
            role=r["actor_role"],
            service_account=r["service_account"],
            session_id=r["session_id"],
        )
        for r in rows
    ]


async def record_many(
    conn: Connection,
    actor: Account,
    action: str,
    target_type: str,
    targets: Sequence[tuple[str, Mapping[str, Any]]],
) -> None:
    """:func:`record` for each ``(target_id, changes)`` of a batch action (one event per
    target changed), in the caller's transaction, in one pipelined round trip."""
    if not targets:
        return
    await conn.executemany(
        INSERT_EVENT,
        [_event_row(actor, action, target_type, target_id, changes) for target_id, changes in targets],
    )
