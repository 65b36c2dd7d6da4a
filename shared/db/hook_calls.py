"""A registration hook's calls as the operator sees them (docs/registration-hook.md,
"Operator surface"): the recent rows of ``registration_hook_calls`` (migration 0033; written
by deduplication and the notifier, shared/db/hooks.py) and the audit of a test call.

Reads and audits only: the reservation and the ruling are shared/db/hooks.py's. Every
function takes the registration's kind, so bulk registrations' hooks use the same ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from shared.db import audit
from shared.db.pool import Pool
from shared.db.registrations import AUDIT_NAMES
from shared.domain.accounts import Account
from shared.domain.products import RegistrationKind
from shared.errors import NotFound

SELECT_REGISTRATION = "SELECT 1 FROM registrations WHERE id = $1 AND account_id = $2 AND kind = $3"
# Newest first on the index (registration_id, created_at DESC); call_id orders a tie.
SELECT_CALLS = """
    SELECT call_id, request_id::text, request->>'hardware_id' AS hardware_id,
           request->>'assigned_hardware_id' AS assigned_hardware_id, request->>'decision' AS decision,
           outcome, http_status, latency_ms, attempts, created_at, answered_at, device_id::text
    FROM registration_hook_calls
    WHERE registration_id = $1 AND account_id = $2
    ORDER BY created_at DESC, call_id DESC
    LIMIT $3"""


@dataclass(frozen=True)
class HookCall:
    """One registration attempt that consulted the hook: its call's ID (the ``webhook-id``),
    the request the device waits on, the hardware ID it claimed and the one it would get
    (``H`` or a clone's ``H-N``), the decision the hook was asked about (``new``, ``clone``,
    ``claim``), the outcome (``waiting``, ``calling``, ``allow``, ``deny``, ``failed_open``,
    ``expired`` or the last failure: ``timeout``, ``error``, ...), the last answer's HTTP
    status and latency in milliseconds (None before one), the calls made so far, when it
    was reserved and answered, and the reserved device (None once released)."""

    call_id: str
    request_id: str
    hardware_id: str
    assigned_hardware_id: str
    decision: str
    outcome: str
    http_status: int | None
    latency_ms: int | None
    attempts: int
    created_at: datetime
    answered_at: datetime | None
    device_id: str | None


async def recent_calls(
    pool: Pool, account_id: str, kind: RegistrationKind, registration_id: str, limit: int
) -> list[HookCall]:
    """The registration's newest ``limit`` hook calls, newest first. NotFound when the
    account has no ``kind`` registration of that ID (another account's included)."""
    async with pool.acquire() as conn:
        if await conn.fetchval(SELECT_REGISTRATION, registration_id, account_id, kind) is None:
            raise NotFound(f"no {kind} registration {registration_id} in this account")
        rows = await conn.fetch(SELECT_CALLS, registration_id, account_id, limit)
    return [
        HookCall(
            call_id=r["call_id"],
            request_id=r["request_id"],
            hardware_id=r["hardware_id"] or "",
            assigned_hardware_id=r["assigned_hardware_id"] or "",
            decision=r["decision"] or "",
            outcome=r["outcome"],
            http_status=r["http_status"],
            latency_ms=r["latency_ms"],
            attempts=r["attempts"],
            created_at=r["created_at"],
            answered_at=r["answered_at"],
            device_id=r["device_id"],
        )
        for r in rows
    ]


async def record_test(
    pool: Pool, actor: Account, kind: RegistrationKind, registration_id: str, host: str, outcome: str
) -> None:
    """Audit a test call of the registration's hook as ``auto_registration.hook_tested`` or
    ``bulk.hook_tested`` (the kind's names, as its hook's changes) with the URL's host only
    (a path or query often carries the receiver's token, as the hook's settings are
    audited) and the call's outcome."""
    prefix, target = AUDIT_NAMES[kind]
    async with pool.acquire() as conn, conn.transaction():
        await audit.record(
            conn,
            actor,
            f"{prefix}.hook_tested",
            target,
            registration_id,
            {"hook_host": host, "outcome": outcome},
        )
