"""Registration decisions: deduplication's writes (new devices, claimed preregistered
devices, every decision: the audit trail) and what the intake and the operator API read back.

Batch-shaped on purpose: deduplication writes a whole Kafka batch with one statement
per kind of change, not one round trip per device.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from shared.db import audit, certificates
from shared.db.pool import Connection, Pool
from shared.domain.accounts import Account
from shared.domain.admission import kept_once_an_hour
from shared.domain.dedup import Claim, KnownDevice, Verdict


class RegistryConflict(Exception):
    """Another writer took a hardware ID this batch meant to assign; decide the batch again."""


SELECT_IDEMPOTENT = """
    SELECT DISTINCT ON (idempotency_key) idempotency_key, device_id::text
    FROM registration_decisions
    WHERE product_id = $1 AND idempotency_key = ANY($2::text[]) AND device_id IS NOT NULL
      -- a refusal that names a device (disabled, a bulk device registered once) never makes
      -- its key that device's: a retry with it would be decided 'same' and get the secret
      AND decision <> 'refused'
    ORDER BY idempotency_key, decided_at"""
# Keyed by the lower-case hardware ID: one ID whatever its case (migration 0008), so a
# guesser cannot stay under the alert threshold by changing case.
FAILED_CLAIMS = """
    SELECT lower(claimed_hardware_id) AS hardware_id, count(*) AS failures FROM registration_decisions
    WHERE product_id = $1 AND lower(claimed_hardware_id) = ANY($2::text[]) AND decision = 'refused'
      AND reason = $3 AND decided_at > now() - make_interval(secs => $4)
    GROUP BY lower(claimed_hardware_id)"""
SELECT_DECIDED = """
    SELECT d.request_id::text, d.account_id::text, d.product_id::text, d.device_id::text,
           d.assigned_hardware_id, d.decision, d.reason, d.status,
           -- the decision's own generation (a replay after a later reclaim is superseded)
           coalesce(d.credential_generation, v.credential_generation, 0) AS credential_generation
    FROM registration_decisions d LEFT JOIN devices v ON v.id = d.device_id
    WHERE d.request_id = ANY($1::uuid[])"""
INSERT_DEVICES = """
    INSERT INTO devices (id, account_id, product_id, registration_id, hardware_id, claimed_hardware_id,
                         name, lifecycle, fingerprint, registered_at, created_source)
    SELECT u.id, $1, $2, u.registration_id, u.hardware_id, u.claimed, u.name, 'registered',
           u.fingerprint, now(), u.source
    FROM unnest($3::uuid[], $4::uuid[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[])
         AS u(id, registration_id, hardware_id, claimed, name, fingerprint, source)"""
CLAIM_PREREGISTERED = """
    UPDATE devices SET lifecycle = 'registered', fingerprint = u.fingerprint, registered_at = now()
    FROM unnest($1::uuid[], $2::text[]) AS u(id, fingerprint)
    WHERE devices.id = u.id AND devices.lifecycle = 'preregistered'
    RETURNING devices.id::text"""
# A device reclaimed before "ready", or an x509 device proven by its certificate without its
# secret (dedup.Verdict.regenerated): its new credential generation (registered again, to
# be confirmed by the holder of the new credentials), only if nobody changed it since it was
# read, lifecycle included (a "ready", an operator's reset,
# disable or delete, another instance's reclaim: the batch is then decided again). The
# intake drops its cached copy at once (INVALIDATION_CHANNEL, payload ``device:<uuid>``),
# so the earlier secret is refused from the very next call; provisioning renders the new
# generation's files when it handles the decision. A device event 'reclaimed' (with the new
# generation) tells the device's history, and the stale-credential rule
# (devices.CREDENTIALS_REPLACED_AT): the earlier secret is answered credentials_replaced, not
# counted as a guess of the board's address.
REGENERATE = """
    WITH changed AS (
        UPDATE devices SET credential_generation = u.generation, lifecycle = 'registered'
        FROM unnest($1::uuid[], $2::int[], $3::int[], $4::text[]) AS u(id, before, generation, lifecycle)
        WHERE devices.id = u.id AND devices.credential_generation = u.before
          AND devices.lifecycle = u.lifecycle AND NOT devices.disabled
        RETURNING devices.id, devices.credential_generation),
    events AS (
        INSERT INTO device_events (device_id, kind, detail)
        SELECT id, 'reclaimed', jsonb_build_object('credential_generation', credential_generation)
        FROM changed)
    SELECT id::text, pg_notify('fleetreg_invalidate', 'device:' || id::text) FROM changed"""
INSERT_DECISIONS = """
    INSERT INTO registration_decisions (request_id, account_id, product_id, device_id, claimed_hardware_id,
        assigned_hardware_id, decision, reason, idempotency_key, protocol, status, received_at,
        credential_generation, revoked_hour, source)
    SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::text[], $6::text[], $7::text[],
                         $8::text[], $9::text[], $10::text[], $11::text[], $12::timestamptz[], $13::int[],
                         $14::timestamptz[], $15::text[])
    -- a redelivered request (request_id), or a revoked code's claim of a hardware ID
    -- already recorded this hour (registration_decisions_revoked_hourly, migration 0017)
    ON CONFLICT DO NOTHING"""
MARK_READY = """UPDATE registration_decisions SET status = 'ready', ready_at = now()
                WHERE request_id = ANY($1::uuid[]) AND status = 'decided'"""
SELECT_OUTCOME = """
    SELECT d.request_id::text, d.device_id::text, d.claimed_hardware_id, d.assigned_hardware_id,
           d.decision, d.reason, d.status, v.name, v.lifecycle, v.disabled, v.credential_generation,
           coalesce(d.credential_generation, 1) AS decided_generation
    FROM registration_decisions d LEFT JOIN devices v ON v.id = d.device_id
    WHERE d.request_id = $1"""
SELECT_DECISIONS = """
    SELECT request_id::text, decided_at, decision, reason, claimed_hardware_id, assigned_hardware_id,
           device_id::text, product_id::text, protocol,
           -- the registration hook's call that answered this request (migration 0034's index)
           (SELECT jsonb_build_object('call_id', c.call_id, 'outcome', c.outcome, 'latency_ms', c.latency_ms,
                                      'http_status', c.http_status, 'attempts', c.attempts)
            FROM registration_hook_calls c WHERE c.request_id = d.request_id LIMIT 1) AS hook
    FROM registration_decisions d
    WHERE account_id = $1 AND ($2::text IS NULL OR decision = $2)
      AND ($3::timestamptz IS NULL OR decided_at < $3
           OR (decided_at = $3 AND $5::uuid IS NOT NULL AND request_id < $5::uuid))
    ORDER BY decided_at DESC, request_id DESC LIMIT $4"""


@dataclass(frozen=True)
class StoredDecision:
    request_id: str
    account_id: str | None
    product_id: str | None
    device_id: str | None
    hardware_id: str
    decision: str
    reason: str
    status: str
    credential_generation: int


@dataclass(frozen=True)
class DecisionRecord:
    """One claim's verdict with the context the audit trail keeps."""

    claim: Claim
    verdict: Verdict
    account_id: str | None
    product_id: str | None
    received_at: float
    protocol: str


@dataclass(frozen=True)
class Outcome:
    """A registration request as the registry has it now, with its device's state."""

    request_id: str
    status: str  # decided (files not ready yet), ready or refused
    decision: str
    reason: str
    claimed_hardware_id: str
    assigned_hardware_id: str | None
    device_id: str | None
    device_lifecycle: str | None  # None: no device (a refusal)
    device_disabled: bool
    credential_generation: int
    # The device's generation when this request was decided; None where not known (fakes).
    decided_generation: int | None = None

    @property
    def superseded(self) -> bool:
        """An operator reset came after this decision: its answer no longer carries secrets."""
        return self.decided_generation is not None and self.decided_generation != self.credential_generation


@dataclass(frozen=True)
class DecisionEntry:
    """One line of the audit trail of registration decisions."""

    request_id: str
    decided_at: datetime
    decision: str
    reason: str
    claimed_hardware_id: str
    assigned_hardware_id: str | None
    device_id: str | None
    product_id: str | None
    protocol: str
    # The registration hook's call that answered the request (call_id, outcome, latency_ms,
    # http_status, attempts), or None: no hook was asked.
    hook: dict[str, object] | None = None


async def load_idempotent(conn: Connection, product_id: str, keys: Sequence[str]) -> dict[str, str]:
    if not keys:
        return {}
    rows = await conn.fetch(SELECT_IDEMPOTENT, product_id, list(set(keys)))
    return {r["idempotency_key"]: r["device_id"] for r in rows}


async def failed_claims(
    conn: Connection, product_id: str, hardware_ids: Sequence[str], reason: str, window_s: float
) -> dict[str, int]:
    """Refusals with ``reason`` per claimed hardware ID within the window (brute-force
    guard), keyed by the lower-case hardware ID (claims in any case count together)."""
    wanted = list({h.lower() for h in hardware_ids})
    rows = await conn.fetch(FAILED_CLAIMS, product_id, wanted, reason, window_s)
    return {r["hardware_id"]: r["failures"] for r in rows}


async def decided(pool: Pool, request_ids: Sequence[str]) -> dict[str, StoredDecision]:
    """Requests decided before (a redelivered batch): their stored decisions."""
    rows = await pool.fetch(SELECT_DECIDED, list(request_ids))
    return {
        r["request_id"]: StoredDecision(
            request_id=r["request_id"],
            account_id=r["account_id"],
            product_id=r["product_id"],
            device_id=r["device_id"],
            hardware_id=r["assigned_hardware_id"] or "",
            decision=r["decision"],
            reason=r["reason"],
            status=r["status"],
            credential_generation=r["credential_generation"],
        )
        for r in rows
    }


async def record_decisions(conn: Connection, records: Sequence[DecisionRecord]) -> None:
    """Write new devices, claimed preregistered devices, the new credential generation of
    devices reclaimed before "ready", and every decision, in the caller's transaction. A
    hardware ID taken meanwhile by another writer, or a device changed since it was read,
    raises RegistryConflict.

    A refusal for a revoked code (:func:`shared.domain.admission.kept_once_an_hour`) is
    written only if no claim of its product and hardware ID (any case) was recorded in
    the same UTC hour of ``received_at``; the others are answered but leave no row."""
    by_account: dict[tuple[str, str], list[Verdict]] = {}
    claimed: list[KnownDevice] = []
    # Device ID -> (generation it had, generation it ends with): one device may be reclaimed
    # several times in one batch (a board's retries queued during an outage).
    regenerated: dict[str, tuple[int, int]] = {}
    lifecycles: dict[str, str] = {}  # device ID -> its lifecycle as read (the first verdict's)
    reclaimed: dict[str, tuple[str, str]] = {}  # device ID -> (account ID, hardware ID)
    for record in records:
        verdict = record.verdict
        if verdict.created and verdict.device and record.account_id and record.product_id:
            by_account.setdefault((record.account_id, record.product_id), []).append(verdict)
        elif verdict.claimed_preregistered and verdict.device:
            claimed.append(verdict.device)
        elif verdict.regenerated and verdict.device:
            generation = verdict.device.credential_generation
            before, _ = regenerated.get(verdict.device.id, (generation - 1, 0))
            regenerated[verdict.device.id] = (before, generation)
            lifecycles.setdefault(verdict.device.id, verdict.device.lifecycle)
            if record.account_id:
                reclaimed[verdict.device.id] = (record.account_id, verdict.device.hardware_id)
    try:
        for (account_id, product_id), verdicts in by_account.items():
            devices = [v.device for v in verdicts if v.device]
            await conn.execute(
                INSERT_DEVICES,
                account_id,
                product_id,
                [d.id for d in devices],
                [d.registration_id for d in devices],
                [d.hardware_id for d in devices],
                [d.claimed_hardware_id for d in devices],
                [d.name for d in devices],
                [d.fingerprint for d in devices],
                [d.created_source for d in devices],
            )
    except asyncpg.UniqueViolationError as exc:
        raise RegistryConflict(str(exc)) from exc
    if claimed:
        taken = await conn.fetch(
            CLAIM_PREREGISTERED, [d.id for d in claimed], [d.fingerprint for d in claimed]
        )
        if len({r["id"] for r in taken}) < len({d.id for d in claimed}):
            # Another transaction claimed one of them first (it waited on the row's lock and
            # then found it registered): decide the batch again on the fresh state.
            raise RegistryConflict("a preregistered device was claimed concurrently")
    if regenerated:
        ids = sorted(regenerated)  # one order for every writer: no deadlock between batches
        changed = await conn.fetch(
            REGENERATE,
            ids,
            [regenerated[i][0] for i in ids],
            [regenerated[i][1] for i in ids],
            [lifecycles[i] for i in ids],
        )
        if len(changed) < len(ids):
            raise RegistryConflict("a device reclaimed before ready changed concurrently")
        await _revoke_reclaimed(conn, reclaimed)
    columns: list[list[Any]] = [[] for _ in range(15)]
    for record in records:
        verdict, device = record.verdict, record.verdict.device
        hourly = verdict.decision == "refused" and kept_once_an_hour(verdict.reason)
        values = (
            record.claim.request_id,
            record.account_id,
            record.product_id,
            device.id if device else None,
            record.claim.hardware_id,
            device.hardware_id if device and verdict.decision != "refused" else None,
            verdict.decision,
            verdict.reason,
            record.claim.idempotency_key or None,
            record.protocol,
            "refused" if verdict.decision == "refused" else "decided",
            datetime.fromtimestamp(record.received_at, UTC),
            device.credential_generation if device and verdict.decision != "refused" else None,
            _hour_of(record.received_at) if hourly else None,
            record.claim.source or None,
        )
        for column, value in zip(columns, values, strict=True):
            column.append(value)
    await conn.execute(INSERT_DECISIONS, *columns)


async def _revoke_reclaimed(conn: Connection, reclaimed: dict[str, tuple[str, str]]) -> None:
    """Revoke the certificates issued to the credentials a reclaim before "ready" just
    superseded (reason ``reset``: the CRL's superseded, as an operator's reset), each
    audited as ``certificate.revoked`` on the device with ``"by": "reclaim"``, in the
    transaction of the new generation. A certificate being recorded meanwhile holds the
    device's row (shared.db.certificates.LOCK_DEVICES) so REGENERATE waited for it
    and this statement sees it; one recorded later names the old generation and is not
    recorded at all."""
    revoked = await certificates.revoke_devices(conn, sorted(reclaimed), "reset")
    by_account: dict[str, list[tuple[str, dict[str, str]]]] = {}
    for device_id, serial in revoked:
        account_id, hardware_id = reclaimed[device_id]
        by_account.setdefault(account_id, []).append(
            (device_id, {"hardware_id": hardware_id, "serial": serial, "reason": "reset", "by": "reclaim"})
        )
    for account_id, targets in by_account.items():
        # Fleetreg's own change (no API key), as the CLI's account setup is recorded.
        await audit.record_many(conn, Account(account_id, ""), "certificate.revoked", "device", targets)


def _hour_of(epoch_s: float) -> datetime:
    """The start of the UTC hour holding ``epoch_s``."""
    return datetime.fromtimestamp(math.floor(epoch_s / 3600) * 3600, UTC)


async def mark_ready(conn: Connection, request_ids: Sequence[str]) -> None:
    if request_ids:
        await conn.execute(MARK_READY, list(request_ids))


async def outcome(pool: Pool, request_id: str) -> Outcome | None:
    """The request's decision and its device's state; None when it is not decided (yet)."""
    r = await pool.fetchrow(SELECT_OUTCOME, request_id)
    if r is None:
        return None
    return Outcome(
        request_id=r["request_id"],
        status=r["status"],
        decision=r["decision"],
        reason=r["reason"],
        claimed_hardware_id=r["claimed_hardware_id"],
        assigned_hardware_id=r["assigned_hardware_id"],
        device_id=r["device_id"],
        device_lifecycle=r["lifecycle"],
        device_disabled=bool(r["disabled"]),
        credential_generation=r["credential_generation"] or 0,
        decided_generation=r["decided_generation"],
    )


async def list_decisions(
    pool: Pool,
    account_id: str,
    *,
    decision: str | None,
    before: datetime | None,
    limit: int,
    before_id: str | None = None,
) -> list[DecisionEntry]:
    """The account's registration decisions, newest first: the audit trail, including
    refusals that created no device (a paused registration, a wrong bulk key, ...).
    ``before`` (and ``before_id``, the last request ID seen at that time: many decisions
    share one time) page back without skipping any."""
    rows = await pool.fetch(SELECT_DECISIONS, account_id, decision, before, limit, before_id)
    return [
        DecisionEntry(
            **{name: r[name] for name in DecisionEntry.__dataclass_fields__ if name != "hook"},
            hook=json.loads(r["hook"]) if r["hook"] is not None else None,
        )
        for r in rows
    ]
