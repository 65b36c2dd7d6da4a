"""The trail: registration decisions, security alerts and the operator audit trail (each
a newest-first listing), and the retention that prunes what is past its keep time."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from services.operator.handlers.query import (
    Page,
    before,
    newest_first,
    newest_first_page,
    only,
    page_limit,
    time_param,
)
from services.operator.settings import RetentionSettings
from shared.db import alerts, audit, decisions
from shared.db import retention as retention_db
from shared.db.alerts import SecurityAlert
from shared.db.audit import AuditEvent
from shared.db.decisions import DecisionEntry
from shared.db.pool import Pool
from shared.domain.accounts import Account
from shared.domain.credentials import DEFAULT_STALE_CREDENTIAL_SECONDS
from shared.domain.identifiers import is_uuid
from shared.errors import InvalidInput

DECISIONS = ("new", "same", "clone", "refused")
ALERT_KINDS = alerts.ALERT_KINDS
# An action is ``noun.verb`` in lower case (``device.disabled``); a target ID is an ID or a
# name an operator typed, bounded so a filter cannot be a megabyte.
_ACTION = re.compile(r"[a-z_]{1,40}\.[a-z_]{1,40}")
_TARGET_ID_MAX = 200
AUDIT_PARAMETERS = ("action", "target_id", "api_key_id", "since", "until", "limit", "before", "before_id")


async def list_decisions(
    pool: Pool, account: Account, query: dict[str, str], *, page_limit_max: int
) -> Page[DecisionEntry]:
    """The audit trail of registration decisions, newest first; ``before`` pages back."""
    decision, limit, when, before_id = newest_first(query, "decision", DECISIONS, page_limit_max)
    found = await decisions.list_decisions(
        pool, account.id, decision=decision, before=when, limit=limit, before_id=before_id
    )
    return newest_first_page(found, limit, lambda d: d.decided_at, lambda d: d.request_id)


async def list_security_alerts(
    pool: Pool, account: Account, query: dict[str, str], *, page_limit_max: int
) -> Page[SecurityAlert]:
    """The account's security alerts, most recently seen first; ``before`` pages back."""
    kind, limit, when, before_id = newest_first(query, "kind", ALERT_KINDS, page_limit_max)
    found = await alerts.list_alerts(
        pool, account.id, kind=kind, before=when, limit=limit, before_id=before_id
    )
    return newest_first_page(found, limit, lambda a: a.last_seen_at, lambda a: a.id)


async def list_audit_events(
    pool: Pool, account: Account, query: dict[str, str], *, page_limit_max: int
) -> Page[AuditEvent]:
    """The operator audit trail, newest first: every state-changing operator call of the
    account, filtered by ``action`` (exact), ``target_id``, ``api_key_id``, a time range
    ``since`` (inclusive) .. ``until`` (exclusive); ``before``/``before_id`` page back.
    InvalidInput (400) names a bad or unknown parameter."""
    only(query, AUDIT_PARAMETERS)
    where = audit.AuditFilter(
        action=_audit_action(query.get("action") or None),
        target_id=_audit_target(query.get("target_id") or None),
        since=time_param(query, "since"),
        until=time_param(query, "until"),
        api_key_id=query.get("api_key_id") or None,
    )
    if where.api_key_id is not None and not is_uuid(where.api_key_id):
        raise InvalidInput("api_key_id is not an ID", field="api_key_id", rule="format=uuid")
    limit = page_limit(query, page_limit_max)
    when, before_id = before(query)
    found = await audit.list_events(
        pool, account.id, where, limit=limit, before=(when, before_id) if when else None
    )
    return newest_first_page(found, limit, lambda e: e.at, lambda e: e.id)


def _audit_action(value: str | None) -> str | None:
    if value is not None and not _ACTION.fullmatch(value):
        raise InvalidInput(
            "action must be an action name such as device.disabled (see docs/operations.md)",
            field="action",
            rule="format=noun.verb",
        )
    return value


def _audit_target(value: str | None) -> str | None:
    if value is not None and (len(value) > _TARGET_ID_MAX or "\0" in value):
        raise InvalidInput(
            f"target_id must be up to {_TARGET_ID_MAX} characters without NUL",
            field="target_id",
            rule=f"max_length={_TARGET_ID_MAX}",
        )
    return value


async def prune_expired(
    pool: Pool,
    retention: RetentionSettings,
    now: datetime | None = None,
    stale_credential_seconds: float = DEFAULT_STALE_CREDENTIAL_SECONDS,
) -> dict[str, int]:
    """Delete the registration decisions and audit events past their keep time (a table
    kept for 0 days is kept forever), device certificates expired for longer than theirs
    (no longer in any CRL), expired console sessions and deleted devices remembered longer
    than ``stale_credential_seconds``, batch after batch until none is left; return the
    rows deleted per table."""
    at = now or datetime.now(UTC)
    deleted: dict[str, int] = {}
    keep: tuple[tuple[retention_db.Table, int], ...] = (
        ("registration_decisions", retention.decisions_days),
        # A registration hook's calls are part of the decisions' record (one per attempt).
        ("registration_hook_calls", retention.decisions_days),
        ("operator_audit_events", retention.audit_days),
        ("device_certificates", retention.expired_certificates_days),
    )
    # Console sessions are kept until they expire (expires_at is their own keep time).
    cutoffs: list[tuple[retention_db.Table, datetime]] = [
        (table, at - timedelta(days=days)) for table, days in keep if days > 0
    ]
    cutoffs.append(("console_sessions", at))
    # A deleted device's old secret is stale (not a guess) only within the window.
    cutoffs.append(("deleted_devices", at - timedelta(seconds=stale_credential_seconds)))
    for table, older_than in cutoffs:
        deleted[table] = 0
        while True:
            count = await retention_db.prune_batch(pool, table, older_than, retention.batch_rows)
            deleted[table] += count
            if count < retention.batch_rows:
                break
    return deleted
