"""The registration hook's reservations and calls (``registration_hook_calls``, migration
0033; docs/registration-hook.md).

Deduplication writes a row in its batch's transaction for a claim it reserved (the device
decided and recorded, its ``registration.decided`` withheld) and attaches later retries to
it; the notifier takes a row (:func:`take`), calls the hook, and applies the ruling with
:func:`confirm`, :func:`refuse` or :func:`fail`, each a conditional update of the row it
took, so a redelivered request, a second instance or the expiry sweep (:func:`expire`)
apply a call's result at most once.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from asyncpg import Record

from shared.db.pool import Connection, Pool

# Outcomes after which a row holds nothing any more: the device is confirmed (allow,
# failed_open), or gone (deny, expired). Every other outcome is a reservation.
# The statements below spell this list out in SQL (the project's lint refuses SQL built
# from strings, S608): a new outcome is added to each of them and to migration 0033's index.
FINAL = ("allow", "failed_open", "no_hook", "deny", "expired")

SELECT_CALLS = """
    SELECT call_id, device_id::text, request_id::text, outcome, answer, called_at,
           extract(epoch FROM now() - called_at) AS calling_for_s
    FROM registration_hook_calls
    WHERE call_id = ANY($1::text[]) OR device_id = ANY($2::uuid[])"""
RESERVE = """
    INSERT INTO registration_hook_calls (call_id, registration_id, account_id, device_id, request_id,
                                         request, decided, reserved_until)
    SELECT * FROM unnest($1::text[], $2::uuid[], $3::uuid[], $4::uuid[], $5::uuid[], $6::jsonb[],
                         $7::jsonb[], $8::timestamptz[])
    -- the same attempt reserved again (its earlier device deleted since): a new reservation
    ON CONFLICT (call_id) DO UPDATE SET device_id = excluded.device_id, request_id = excluded.request_id,
        request = excluded.request, decided = excluded.decided, outcome = 'waiting', answer = NULL,
        http_status = NULL, latency_ms = NULL, reserved_until = excluded.reserved_until,
        called_at = NULL, answered_at = NULL"""
# A retry of a reserved claim: the ruling answers the request the device now waits on; a
# failed call (fail closed) is made again. A call in flight keeps its state.
ATTACH = """
    UPDATE registration_hook_calls SET request_id = u.request_id, decided = u.decided,
        outcome = CASE WHEN outcome IN ('waiting', 'calling') THEN outcome ELSE 'waiting' END
    FROM unnest($1::text[], $2::uuid[], $3::jsonb[]) AS u(call_id, request_id, decided)
    WHERE registration_hook_calls.call_id = u.call_id
      AND registration_hook_calls.outcome NOT IN ('allow', 'failed_open', 'no_hook', 'deny', 'expired')
    RETURNING registration_hook_calls.call_id"""
TAKE = """
    UPDATE registration_hook_calls c SET outcome = 'calling', called_at = now(), attempts = attempts + 1
    FROM registrations r
    WHERE c.call_id = ANY($1::text[]) AND r.id = c.registration_id AND c.device_id IS NOT NULL
      AND (c.outcome NOT IN ('allow', 'failed_open', 'no_hook', 'deny', 'expired', 'calling')
           -- a call whose instance died: past its timeout and a margin, it is made again
           OR (c.outcome = 'calling'
               AND c.called_at < now() - make_interval(secs => r.hook_timeout_ms / 1000.0 + $2::float8)))
    RETURNING c.call_id, c.registration_id::text, c.request_id::text, c.request, r.hook_url,
              r.hook_timeout_ms, r.hook_failure, r.hook_secret_sealed, c.called_at,
              CASE WHEN r.kind = 'bulk' THEN 'registration_key' ELSE r.attestation END AS attestation"""
# The ruling's row update, only while this call holds it (outcome 'calling', taken at
# ``called_at``): a later taker (past the stale margin) or the sweep has moved it on.
SETTLE = """
    UPDATE registration_hook_calls c SET outcome = u.outcome, answer = u.answer,
        http_status = u.http_status, latency_ms = u.latency_ms, answered_at = now()
    FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::jsonb[], $5::int4[], $6::int4[])
        AS u(call_id, called_at, outcome, answer, http_status, latency_ms)
    WHERE c.call_id = u.call_id AND c.outcome = 'calling' AND c.called_at = u.called_at
      AND c.device_id IS NOT NULL
    RETURNING c.call_id, c.device_id::text, c.request_id::text, c.account_id::text, c.decided, c.request"""
# The allowed devices enriched, and each a ``hook_allowed`` event in its history, in one
# statement for a batch of rulings.
ENRICH_DEVICES = """
    WITH u AS (
        SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::jsonb[], $6::jsonb[])
            AS u(device_id, name, category_a, category_b, data, detail)),
    changed AS (
        UPDATE devices d SET name = coalesce(nullif(u.name, ''), d.name),
            category_a = coalesce(nullif(u.category_a, ''), d.category_a),
            category_b = coalesce(nullif(u.category_b, ''), d.category_b),
            hook_data = u.data
        FROM u WHERE d.id = u.device_id RETURNING d.id, u.detail)
    INSERT INTO device_events (device_id, kind, detail) SELECT id, 'hook_allowed', detail FROM changed"""
# A refused reservation: every decision still waiting on the device is refused with the
# reason, then the device goes (a claimed preregistered device goes back to preregistered).
REFUSE_DECISIONS = """
    UPDATE registration_decisions SET status = 'refused', reason = $2, decision = 'refused',
        device_id = NULL, assigned_hardware_id = NULL
    WHERE device_id = $1 AND status = 'decided'
    RETURNING request_id::text"""
# An allowed reservation: the earlier requests of the same attempt (retries attached to the
# row replaced its request ID) wait on the device too, each decided as it was recorded.
ALSO_WAITING = """
    SELECT d.device_id::text, d.request_id::text, d.decision,
           extract(epoch FROM d.received_at)::float8 AS received_at
    FROM registration_decisions d
    JOIN unnest($1::uuid[], $2::uuid[]) AS u(device_id, request_id) ON d.device_id = u.device_id
    WHERE d.status = 'decided' AND d.request_id <> u.request_id"""
UNCLAIM_PREREGISTERED = """
    UPDATE devices SET lifecycle = 'preregistered', fingerprint = '', registered_at = NULL
    WHERE id = $1 AND lifecycle = 'registered'"""
DELETE_RESERVED = """DELETE FROM devices WHERE id = $1 AND lifecycle = 'registered'"""
EXPIRE = """
    UPDATE registration_hook_calls SET outcome = 'expired', answered_at = now()
    WHERE call_id IN (
        SELECT call_id FROM registration_hook_calls
        WHERE reserved_until < now() AND outcome NOT IN ('allow', 'failed_open', 'no_hook', 'deny', 'expired')
        ORDER BY reserved_until LIMIT $1 FOR UPDATE SKIP LOCKED)
    RETURNING call_id, device_id::text, request_id::text, account_id::text, request"""


@dataclass(frozen=True)
class CallState:
    """A call row as deduplication reads it before deciding: its reserved device (None:
    deleted since), the latest request attached, its outcome, a denial's reason, and how
    long it has been calling (seconds; None: not calling)."""

    call_id: str
    device_id: str | None
    request_id: str
    outcome: str
    reason: str
    calling_for_s: float | None

    @property
    def final(self) -> bool:
        return self.outcome in FINAL


async def load_calls(conn: Connection, call_ids: Sequence[str], device_ids: Sequence[str]) -> list[CallState]:
    """The call rows of these attempts (``call_ids``) or reserving these devices."""
    if not call_ids and not device_ids:
        return []
    rows = await conn.fetch(SELECT_CALLS, list(call_ids), list(device_ids))
    return [
        CallState(
            call_id=r["call_id"],
            device_id=r["device_id"],
            request_id=r["request_id"],
            outcome=r["outcome"],
            reason=(_json(r["answer"]) or {}).get("reason", "") or "",
            calling_for_s=float(r["calling_for_s"]) if r["calling_for_s"] is not None else None,
        )
        for r in rows
    ]


@dataclass(frozen=True)
class Reservation:
    """A claim reserved for its hook: the call's ID, the registration, account and device,
    the request it answers, the hook's request body fields and the ``registration.decided``
    fields to send when it allows, and until when the reservation holds."""

    call_id: str
    registration_id: str
    account_id: str
    device_id: str
    request_id: str
    request: dict[str, Any]
    decided: dict[str, Any]
    reserved_until: datetime


async def reserve(conn: Connection, reservations: Sequence[Reservation]) -> None:
    """Write the reservations' call rows (``waiting``), in the caller's transaction."""
    if not reservations:
        return
    await conn.execute(
        RESERVE,
        [r.call_id for r in reservations],
        [r.registration_id for r in reservations],
        [r.account_id for r in reservations],
        [r.device_id for r in reservations],
        [r.request_id for r in reservations],
        [json.dumps(r.request) for r in reservations],
        [json.dumps(r.decided) for r in reservations],
        [r.reserved_until for r in reservations],
    )


async def attach(conn: Connection, attached: Sequence[tuple[str, str, dict[str, Any]]]) -> set[str]:
    """Retries of reserved claims: each (call ID, request ID, decided fields) becomes its
    row's latest request; a failed call's row goes back to ``waiting``. Returns the call IDs
    attached: a row answered meanwhile (the notifier's ruling committed first) is not, and
    its retry is decided as any claim of a device no longer reserved."""
    if not attached:
        return set()
    rows = await conn.fetch(
        ATTACH,
        [a[0] for a in attached],
        [a[1] for a in attached],
        [json.dumps(a[2]) for a in attached],
    )
    return {r["call_id"] for r in rows}


@dataclass(frozen=True)
class TakenCall:
    """A call this task now makes: its row's request, the registration's hook (URL, timeout
    in ms, failure policy, sealed secret; a URL of None: the hook was removed since), and
    when it was taken (the key of its settling update)."""

    call_id: str
    registration_id: str
    request_id: str
    request: dict[str, Any]
    hook_url: str | None
    timeout_ms: int
    failure: str
    secret_sealed: bytes | None
    called_at: datetime


async def take(pool: Pool, call_id: str, stale_margin_s: float) -> TakenCall | None:
    """Take a call to make (``calling``), or None: answered already, in flight on another
    task (unless it has been calling for the hook's timeout plus ``stale_margin_s``), or its
    device is gone."""
    return (await take_many(pool, [call_id], stale_margin_s)).get(call_id)


async def take_many(pool: Pool, call_ids: Sequence[str], stale_margin_s: float) -> dict[str, TakenCall]:
    """:func:`take` for many calls in one statement (a storm's calls, coalesced by the
    notifier): the calls taken, by call ID; a call not in it was not this one's to make."""
    taken: dict[str, TakenCall] = {}
    for row in await pool.fetch(TAKE, list(call_ids), stale_margin_s):
        request = _json(row["request"]) or {}
        request["attestation"] = row["attestation"]
        taken[row["call_id"]] = TakenCall(
            call_id=row["call_id"],
            registration_id=row["registration_id"],
            request_id=row["request_id"],
            request=request,
            hook_url=row["hook_url"],
            timeout_ms=row["hook_timeout_ms"],
            failure=row["hook_failure"],
            secret_sealed=row["hook_secret_sealed"],
            called_at=row["called_at"],
        )
    return taken


@dataclass(frozen=True)
class Settled:
    """A ruling applied: the reserved device, the request it answers and its account, the
    ``registration.decided`` fields (a confirmation sends them), the refused requests (a
    refusal answers each)."""

    device_id: str
    request_id: str
    account_id: str
    decided: dict[str, Any]
    refused_requests: tuple[str, ...] = ()
    # A confirmation: the ``registration.decided`` fields of every other request still
    # waiting on the device (an earlier request of a retried attempt).
    also_decided: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class CallResult:
    """What a call came to, as its row records it: the outcome (``allow``, ``deny``,
    ``failed_open``, ``no_hook`` or a failure), the answer (JSON: the hook's answer, or the
    failure's error), the HTTP status and the latency (ms)."""

    outcome: str
    answer: dict[str, Any] | None
    http_status: int | None
    latency_ms: int | None


# One allow to apply: the call as taken, what it came to, its enrichment (None: nothing).
Confirmation = tuple[TakenCall, CallResult, dict[str, Any] | None]


async def confirm(
    pool: Pool, call: TakenCall, result: CallResult, enrichment: dict[str, Any] | None
) -> Settled | None:
    """An allow (or fail open): the row settled, the device given the enrichment (``name``,
    ``category_a``, ``category_b``, ``data``; None: nothing) and a ``hook_allowed`` event in
    its history. None when this call no longer holds the row."""
    return (await confirm_many(pool, [(call, result, enrichment)]))[0]


async def confirm_many(pool: Pool, confirmations: Sequence[Confirmation]) -> list[Settled | None]:
    """:func:`confirm` for many calls in one transaction of three statements (a storm's
    allows, coalesced by the notifier), one result per confirmation in their order. The
    rows are settled in call ID order, the order every batch of them locks in."""
    ordered = sorted(confirmations, key=lambda c: c[0].call_id)
    async with pool.acquire() as conn, conn.transaction():
        rows = {r["call_id"]: r for r in await _settle(conn, [(call, result) for call, result, _ in ordered])}
        enriched = [
            (rows[call.call_id], call, result, given or {})
            for call, result, given in ordered
            if call.call_id in rows
        ]
        if not enriched:
            return [None] * len(confirmations)
        await conn.execute(
            ENRICH_DEVICES,
            [row["device_id"] for row, *_ in enriched],
            [given.get("name", "") for *_, given in enriched],
            [given.get("category_a", "") for *_, given in enriched],
            [given.get("category_b", "") for *_, given in enriched],
            [json.dumps(given["data"]) if given.get("data") else None for *_, given in enriched],
            [
                json.dumps(
                    {"call_id": call.call_id, "outcome": result.outcome, "latency_ms": result.latency_ms}
                )
                for _, call, result, _ in enriched
            ],
        )
        waiting = await conn.fetch(
            ALSO_WAITING,
            [row["device_id"] for row, *_ in enriched],
            [row["request_id"] for row, *_ in enriched],
        )
    waiting_on: dict[str, list[Record]] = {}
    for w in waiting:
        waiting_on.setdefault(w["device_id"], []).append(w)
    settled: dict[str, Settled] = {}
    for row, call, _, _ in enriched:
        decided = _json(row["decided"]) or {}
        # Every request of the attempt is answered, not only the latest: a device (or anyone
        # holding an earlier request ID) polling an earlier one would otherwise wait for ever.
        also = tuple(
            decided
            | {"request_id": w["request_id"], "decision": w["decision"], "received_at": w["received_at"]}
            for w in waiting_on.get(row["device_id"], ())
        )
        settled[call.call_id] = Settled(
            row["device_id"], row["request_id"], row["account_id"], decided, also_decided=also
        )
    return [settled.get(call.call_id) for call, _, _ in confirmations]


async def refuse(pool: Pool, call: TakenCall, result: CallResult, reason: str) -> Settled | None:
    """A denial: the row settled, every decision waiting on the device refused with
    ``reason``, the device deleted (a claimed preregistered one preregistered again). None
    when this call no longer holds the row."""
    async with pool.acquire() as conn, conn.transaction():
        row = await _settle_one(conn, call, result)
        if row is None:
            return None
        decision = (_json(row["request"]) or {}).get("decision", "")
        refused = await _release(conn, row["device_id"], decision, reason)
    return Settled(row["device_id"], row["request_id"], row["account_id"], {}, refused)


async def fail(pool: Pool, call: TakenCall, result: CallResult) -> Settled | None:
    """A failure under fail closed: the row keeps its reservation with the failure as its
    outcome (the device's next retry calls again). None when this call no longer holds it."""
    async with pool.acquire() as conn, conn.transaction():
        row = await _settle_one(conn, call, result)
    if row is None:
        return None
    return Settled(row["device_id"], row["request_id"], row["account_id"], {})


@dataclass(frozen=True)
class Expired:
    """A reservation the sweep released: its call, account and the requests it refused."""

    call_id: str
    account_id: str
    refused_requests: tuple[str, ...]


async def expire(pool: Pool, reason: str, limit: int = 500) -> list[Expired]:
    """Release up to ``limit`` reservations past ``reserved_until`` without an allow: their
    devices deleted (or preregistered again), their waiting decisions refused with
    ``reason``. Safe on several instances at once (rows are skipped when locked)."""
    out = []
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(EXPIRE, limit)
        for row in rows:
            refused: tuple[str, ...] = ()
            if row["device_id"] is not None:
                decision = (_json(row["request"]) or {}).get("decision", "")
                refused = await _release(conn, row["device_id"], decision, reason)
            out.append(Expired(row["call_id"], row["account_id"], refused))
    return out


# Calls to make again without waiting for a device's retry: a fail-closed failure older than
# the pause a device is told, a request never taken (its record lost), a call whose instance
# died (past its timeout and the margin).
REDIAL = """
    SELECT c.call_id, c.registration_id::text, c.request_id::text FROM registration_hook_calls c
    JOIN registrations r ON r.id = c.registration_id
    WHERE c.outcome NOT IN ('allow', 'failed_open', 'no_hook', 'deny', 'expired') AND c.device_id IS NOT NULL
      -- hooks whose breaker is open: their calls would fail at once, and as the oldest they
      -- would fill every round's limit, so no other hook's failed call would be made again
      AND NOT (c.registration_id = ANY($4::uuid[]))
      AND CASE c.outcome
            WHEN 'waiting' THEN c.created_at < now() - make_interval(secs => $2::float8)
            WHEN 'calling'
                THEN c.called_at < now() - make_interval(secs => r.hook_timeout_ms / 1000.0 + $2::float8)
            ELSE c.answered_at < now() - make_interval(secs => $1::float8) END
    ORDER BY coalesce(c.answered_at, c.created_at) LIMIT $3"""


async def due_again(
    pool: Pool, after_s: float, lost_after_s: float, limit: int, skip: Sequence[str] = ()
) -> list[tuple[str, str, str]]:
    """(call ID, registration ID, request ID) of calls to make again: failed more than
    ``after_s`` seconds ago, or asked for (or in flight past the hook's timeout) more than
    ``lost_after_s`` ago without a result; oldest first, at most ``limit``; none of the
    registrations ``skip`` names (hooks not to call now)."""
    rows = await pool.fetch(REDIAL, after_s, lost_after_s, limit, list(skip))
    return [(r["call_id"], r["registration_id"], r["request_id"]) for r in rows]


# Confirmed calls whose device's requests may never have been released: the ruling commits
# before its registration.decided is published (a registry transaction and a broker send
# are not one), so an instance killed, or a broker failing, in between leaves the device
# reserved no more (the row is final: neither the redial nor a replay takes it) and its
# request decided for ever, polled pending until forgotten. A ruling also sends only the
# latest request attached to the row: an earlier one a device still polls (a retry with the
# same key sent while the call was in flight) would stay pending too, where without a hook
# it would be answered (ready, without the secret when superseded). A removed hook's rows
# (no_hook) are released the same way. Every decision still only decided of such a device
# is sent, as deduplication would have: rows answered more than a margin ago (their own
# publish had its time) and within the hold; provisioning is idempotent, so a second send
# changes nothing.
UNRELEASED = """
    SELECT d.request_id::text, d.account_id::text, d.product_id::text, d.device_id::text,
           d.assigned_hardware_id AS hardware_id, d.decision, d.credential_generation,
           extract(epoch FROM d.received_at)::float8 AS received_at
    FROM registration_hook_calls c
    JOIN devices v ON v.id = c.device_id
    JOIN registration_decisions d ON d.device_id = c.device_id
    WHERE c.outcome IN ('allow', 'failed_open', 'no_hook')
      AND c.answered_at < now() - make_interval(secs => $1::float8)
      AND c.answered_at > now() - make_interval(secs => $2::float8)
      AND v.lifecycle = 'registered'
      AND d.status = 'decided' AND d.decision <> 'refused' AND d.credential_generation IS NOT NULL
      AND d.decided_at < now() - make_interval(secs => $1::float8)
    ORDER BY c.answered_at, d.decided_at LIMIT $3"""


async def unreleased(pool: Pool, after_s: float, within_s: float, limit: int) -> list[dict[str, Any]]:
    """The ``registration.decided`` fields of every request still only decided (for more
    than ``after_s`` seconds) of a registered device whose hook call was confirmed between
    ``within_s`` and ``after_s`` seconds ago: requests whose event was lost between the
    ruling and its publish, or that the ruling did not answer (earlier requests of the
    attempt). Oldest first, at most ``limit``."""
    rows = await pool.fetch(UNRELEASED, after_s, within_s, limit)
    return [
        {
            "request_id": r["request_id"],
            "account_id": r["account_id"] or "",
            "product_id": r["product_id"] or "",
            "device_id": r["device_id"],
            "hardware_id": r["hardware_id"] or "",
            "decision": r["decision"],
            "credential_generation": r["credential_generation"],
            "received_at": r["received_at"] or 0.0,
        }
        for r in rows
    ]


WITHOUT_HOOK = """
    UPDATE registration_hook_calls SET outcome = 'no_hook', answered_at = now()
    WHERE registration_id = $1 AND outcome NOT IN ('allow', 'failed_open', 'no_hook', 'deny', 'expired')"""


async def without_hook(conn: Connection, registration_id: str) -> None:
    """The registration's hook is removed (in the caller's transaction): its reservations
    are no longer held for it (``no_hook``), so the sweep never releases them, and each
    device's next retry is decided as any claim without a hook."""
    await conn.execute(WITHOUT_HOOK, registration_id)


OPEN_CALLS_OF_DEVICES = """
    SELECT call_id, registration_id::text, request_id::text, device_id::text FROM registration_hook_calls
    WHERE device_id = ANY($1::uuid[])
      AND outcome NOT IN ('allow', 'failed_open', 'no_hook', 'deny', 'expired')"""


async def open_calls_of_devices(pool: Pool, device_ids: Sequence[str]) -> dict[str, tuple[str, str, str]]:
    """Device ID -> (call ID, registration ID, latest request ID) of each of these devices
    still reserved for its hook: a replayed decision of one must not release it."""
    if not device_ids:
        return {}
    rows = await pool.fetch(OPEN_CALLS_OF_DEVICES, list(device_ids))
    return {r["device_id"]: (r["call_id"], r["registration_id"], r["request_id"]) for r in rows}


async def _settle(conn: Connection, settling: Sequence[tuple[TakenCall, CallResult]]) -> list[Record]:
    """The call rows of ``settling`` given their results, each only while its call still
    holds it; the rows settled (the others are gone from the answer)."""
    return await conn.fetch(
        SETTLE,
        [call.call_id for call, _ in settling],
        [call.called_at for call, _ in settling],
        [result.outcome for _, result in settling],
        [json.dumps(result.answer) if result.answer is not None else None for _, result in settling],
        [result.http_status for _, result in settling],
        [result.latency_ms for _, result in settling],
    )


async def _settle_one(conn: Connection, call: TakenCall, result: CallResult) -> Record | None:
    rows = await _settle(conn, [(call, result)])
    return rows[0] if rows else None


async def _release(conn: Connection, device_id: str, decision: str, reason: str) -> tuple[str, ...]:
    """The reserved device given up: its waiting decisions refused, the device deleted or,
    for a claim of a preregistered device, preregistered again."""
    refused = await conn.fetch(REFUSE_DECISIONS, device_id, reason)
    if decision == "claim":
        await conn.execute(UNCLAIM_PREREGISTERED, device_id)
    else:
        await conn.execute(DELETE_RESERVED, device_id)
    return tuple(r["request_id"] for r in refused)


def _json(value: Any) -> Any:
    """A jsonb value as asyncpg returns it without a codec (text), parsed."""
    if value is None or isinstance(value, dict | list):
        return value
    return json.loads(value)
