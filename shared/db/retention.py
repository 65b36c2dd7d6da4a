"""Retention: rows past their keep time are deleted in the background, in small batches.

Each batch is one short transaction deleting at most ``batch`` of the oldest expired rows,
picked with ``FOR UPDATE SKIP LOCKED``: no long lock on a busy table, and several
instances pruning at once take different rows instead of waiting for each other.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from shared.db.pool import Pool

Table = Literal[
    "registration_decisions",
    "registration_hook_calls",
    "operator_audit_events",
    "console_sessions",
    "deleted_devices",
    "device_certificates",
]


# One statement per table: the oldest expired rows first, each batch one short transaction.
_PRUNE: dict[Table, str] = {
    "registration_decisions": """
        DELETE FROM registration_decisions WHERE request_id IN (
            SELECT request_id FROM registration_decisions WHERE decided_at < $1
            ORDER BY decided_at LIMIT $2 FOR UPDATE SKIP LOCKED)""",
    # Only answered calls: a reservation still held is never pruned (the sweep releases it).
    "registration_hook_calls": """
        DELETE FROM registration_hook_calls WHERE call_id IN (
            SELECT call_id FROM registration_hook_calls
            WHERE created_at < $1 AND outcome IN ('allow', 'failed_open', 'no_hook', 'deny', 'expired')
            ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED)""",
    "operator_audit_events": """
        DELETE FROM operator_audit_events WHERE id IN (
            SELECT id FROM operator_audit_events WHERE at < $1
            ORDER BY at LIMIT $2 FOR UPDATE SKIP LOCKED)""",
    "console_sessions": """
        DELETE FROM console_sessions WHERE digest IN (
            SELECT digest FROM console_sessions WHERE expires_at < $1
            ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED)""",
    "deleted_devices": """
        DELETE FROM deleted_devices WHERE device_id IN (
            SELECT device_id FROM deleted_devices WHERE deleted_at < $1
            ORDER BY deleted_at LIMIT $2 FOR UPDATE SKIP LOCKED)""",
    # Expired certificates (older_than is a time before which they expired): no longer in
    # the CRL, so no longer needed (shared/migrations/0029_device_certificates_expiry.sql).
    "device_certificates": """
        DELETE FROM device_certificates WHERE serial IN (
            SELECT serial FROM device_certificates WHERE not_after < $1
            ORDER BY not_after LIMIT $2 FOR UPDATE SKIP LOCKED)""",
}


async def prune_batch(pool: Pool, table: Table, older_than: datetime, batch: int) -> int:
    """Delete up to ``batch`` rows of ``table`` older than ``older_than`` (oldest first);
    return how many were deleted (fewer than ``batch``: nothing more to do right now)."""
    status = await pool.execute(_PRUNE[table], older_than, batch)
    return int(status.rsplit(" ", 1)[-1])  # "DELETE n"
