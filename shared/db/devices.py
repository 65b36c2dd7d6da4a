"""Devices: the family of a hardware ID (for deduplication), lifecycle signals, the
operator's listing, history and changes.

Batch-shaped on purpose: the pipeline services read and write whole Kafka
batches with one statement per kind of change, not one round trip per device.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal

from asyncpg import Record

from shared.db import audit, certificates, files, webhooks
from shared.db.pool import Connection, Pool
from shared.domain.accounts import Account
from shared.domain.certificates import RevocationReason
from shared.domain.credentials import Keyring
from shared.domain.dedup import Creation, KnownDevice, Lifecycle
from shared.domain.device_search import Cursor, DeviceSearch
from shared.domain.devices import MoveTarget, move_refusal
from shared.domain.identifiers import hardware_id_root
from shared.domain.webhooks import DEVICE_DISABLED
from shared.errors import Conflict, NotFound

SELECT_FAMILY = """
    SELECT id::text, hardware_id, claimed_hardware_id, name, fingerprint, lifecycle, disabled,
           credential_generation, registration_id::text, product_id::text, created_source,
           coalesce(encode(registration_key_digest, 'hex'), '') AS registration_key_digest,
           extract(epoch FROM created_at)::float8 AS created_at,
           -- who claimed it since it was last registered, while it is not yet confirmed
           -- (registration_decisions_device index; nothing to read for other devices)
           CASE WHEN lifecycle = 'registered' THEN
               array(SELECT DISTINCT d.source FROM registration_decisions d
                     WHERE d.device_id = devices.id AND d.decision <> 'refused' AND d.source <> ''
                       AND d.decided_at >= coalesce(devices.registered_at, '-infinity'))
           ELSE '{}'::text[] END AS claim_sources
    FROM devices WHERE account_id = $1
                   AND (hardware_id_stem = ANY($2::text[]) OR lower(hardware_id) = ANY($3::text[]))"""
# What each (family head, source) of a batch's suffixed claims created since $5 (seconds since
# the epoch): the devices that claimed the head ($3, lower case) or a suffixed spelling of it
# (H-1, H-01, h-1-1). Those share the head's root ($2): migration 0026's index
# devices_created_root finds them (its expression is ROOT_SQL's, spelled out:
# tests/unit/test_dedup_rules.py checks they agree), the prefix keeps the head's own branch.
SELECT_CREATIONS = """
    SELECT devices.id::text, lower(claimed_hardware_id) AS claimed, devices.created_source,
           extract(epoch FROM devices.created_at)::float8 AS created_at,
           lower(hardware_id) <> lower(claimed_hardware_id) AS clone
    FROM (SELECT DISTINCT root, head, source
          FROM unnest($2::text[], $3::text[], $4::text[]) AS u(root, head, source)) AS q
    JOIN devices ON account_id = $1
                AND regexp_replace(lower(claimed_hardware_id), '(-[0-9]+)+$', '') = q.root
                AND created_at > to_timestamp($5) AND created_source <> ''
                AND created_source = q.source
                AND (lower(claimed_hardware_id) = q.head
                     OR left(lower(claimed_hardware_id), length(q.head) + 1) = q.head || '-')"""
# Run after the registrations' rows are locked (registrations.lock_quotas): a statement of its
# own, so that it sees every device a transaction that held the lock before committed.
COUNT_REGISTRATION_DEVICES = """
    SELECT registration_id::text, count(*) AS devices FROM devices
    WHERE registration_id = ANY($1::uuid[]) GROUP BY registration_id"""
# A "ready" confirms the credential generation it was sent with ($3; 0: unknown, a record
# of the previous release): one sent before a reclaim gave the device a new generation
# confirms credentials revoked since, and is dropped (the device stays registered until
# the holder of the new ones confirms). The generation is compared on the row being updated,
# so a reclaim committed meanwhile is seen.
MARK_PROVISIONED = """
    WITH changed AS (
        UPDATE devices SET lifecycle = 'provisioned', provisioned_at = to_timestamp(u.at),
                           last_seen_at = greatest(last_seen_at, to_timestamp(u.at))
        -- UPDATE ... FROM applies only one joined row per target row (of those that match)
        FROM (SELECT id, generation, min(at) AS at
              FROM unnest($1::uuid[], $2::float8[], $3::int[]) AS b(id, at, generation)
              GROUP BY id, generation) AS u
        WHERE devices.id = u.id AND devices.lifecycle = 'registered' AND NOT devices.disabled
          AND (u.generation = 0 OR devices.credential_generation = u.generation)
        RETURNING devices.id)
    INSERT INTO device_events (device_id, kind) SELECT id, 'ready' FROM changed"""
TOUCH_LAST_SEEN = """
    UPDATE devices SET last_seen_at = greatest(last_seen_at, to_timestamp(u.at))
    FROM (SELECT id, max(at) AS at FROM unnest($1::uuid[], $2::float8[]) AS b(id, at) GROUP BY id) AS u
    WHERE devices.id = u.id"""
SELECT_HISTORY = """
    SELECT decided_at AS at, 'registration' AS kind,
           jsonb_build_object('decision', decision, 'reason', reason,
                              'claimed_hardware_id', claimed_hardware_id,
                              'assigned_hardware_id', assigned_hardware_id, 'request_id', request_id,
                              'protocol', protocol) AS detail
    FROM registration_decisions WHERE device_id = $1
    UNION ALL
    SELECT at, kind, detail FROM device_events WHERE device_id = $1
    ORDER BY at"""
# The intake LISTENs on fleetreg_invalidate (shared/db/throttle.py INVALIDATION_CHANNEL) to
# drop a cached device at once (payload ``device:<lower-case uuid>``); Postgres delivers a
# notification when, and only if, the transaction that sent it commits.
SELECT_FOR_CHANGE = """
    SELECT id::text, disabled, hardware_id, name, lifecycle, credential_generation,
           product_id::text, registration_id::text, registration_key_digest IS NOT NULL AS has_key
    FROM devices WHERE id = ANY($1::uuid[]) AND account_id = $2
    ORDER BY id FOR UPDATE"""
DISABLE_DEVICES = """
    WITH changed AS (
        UPDATE devices SET disabled = true
        WHERE id = ANY($1::uuid[]) AND account_id = $2 AND NOT disabled RETURNING id),
    events AS (INSERT INTO device_events (device_id, kind) SELECT id, 'disabled' FROM changed)
    SELECT id::text, pg_notify('fleetreg_invalidate', 'device:' || id::text) FROM changed"""
ENABLE_DEVICES = """
    WITH changed AS (
        UPDATE devices SET disabled = false
        WHERE id = ANY($1::uuid[]) AND account_id = $2 AND disabled RETURNING id),
    events AS (INSERT INTO device_events (device_id, kind) SELECT id, 'enabled' FROM changed)
    SELECT id::text, pg_notify('fleetreg_invalidate', 'device:' || id::text) FROM changed"""
RESET_DEVICES = """
    WITH changed AS (
        UPDATE devices SET lifecycle = 'preregistered', credential_generation = credential_generation + 1,
                           fingerprint = '', provisioned_at = NULL
        WHERE id = ANY($1::uuid[]) AND account_id = $2 AND NOT disabled
        RETURNING id, credential_generation),
    events AS (
        INSERT INTO device_events (device_id, kind, detail)
        SELECT id, 'reset', jsonb_build_object('credential_generation', credential_generation) FROM changed)
    SELECT id::text, pg_notify('fleetreg_invalidate', 'device:' || id::text) FROM changed"""
# Decommissioning: the device's row goes with its events and files (ON DELETE CASCADE), so
# its hardware ID is free for a new device, without an index; its registration decisions
# stay, without the device (device_id SET NULL), and the operator audit trail keeps its
# hardware ID and name. Its intake cache entries are dropped like a disabled device's. Its
# ID and last credential generation are remembered (deleted_devices, migration 0019) for
# the stale-credential window, so that its old secret is told "deleted", not counted.
DELETE_DEVICES = """
    WITH gone AS (
        DELETE FROM devices WHERE id = ANY($1::uuid[]) AND account_id = $2
        RETURNING id, credential_generation),
    remembered AS (
        INSERT INTO deleted_devices (device_id, credential_generation)
        SELECT id, credential_generation FROM gone
        ON CONFLICT (device_id) DO UPDATE
            SET credential_generation = excluded.credential_generation, deleted_at = now())
    SELECT id::text, pg_notify('fleetreg_invalidate', 'device:' || id::text) FROM gone"""
# When the credential generation ``$2`` of a device was replaced by the operator's reset
# or move (a reset into another product), or by a reclaim before "ready" (a claim from the
# device's fingerprint with a new or no Idempotency-Key: decisions.REGENERATE): the first
# such event to a later generation, for the stale-credential rule.
CREDENTIALS_REPLACED_AT = """
    SELECT min(at) FROM device_events
    WHERE device_id = $1 AND kind IN ('reset', 'moved', 'reclaimed')
      AND (detail->>'credential_generation')::int > $2"""
DELETED_DEVICE = """
    SELECT credential_generation, deleted_at FROM deleted_devices WHERE device_id = $1"""
STATEMENTS = {
    "disable": DISABLE_DEVICES,
    "enable": ENABLE_DEVICES,
    "reset": RESET_DEVICES,
    "delete": DELETE_DEVICES,
}
SELECT_DEVICES_BY_ID = """
    SELECT id::text, hardware_id, claimed_hardware_id, name, category_a, category_b, lifecycle, disabled,
           product_id::text, registration_id::text, created_at, registered_at, provisioned_at, last_seen_at,
           credential_generation
    FROM devices WHERE account_id = $1 AND id = ANY($2::uuid[])"""

DeviceAction = Literal["disable", "enable", "reset", "delete"]
# What an action did to one device: changed (disabled, enabled, reset, deleted), nothing to
# do (unchanged: it was disabled, or enabled, already), refused (conflict: a disabled device
# cannot be reset), not_found (no such device in this account, whatever other account may
# hold the ID).
ChangeOutcome = Literal["disabled", "enabled", "reset", "deleted", "unchanged", "conflict", "not_found"]
DONE: dict[DeviceAction, ChangeOutcome] = {
    "disable": "disabled",
    "enable": "enabled",
    "reset": "reset",
    "delete": "deleted",
}
# The operator audit trail's action for each (one event per device changed).
AUDITED = {
    "disable": "device.disabled",
    "enable": "device.enabled",
    "reset": "device.reset",
    "delete": "device.deleted",
}
# The webhook event each action announces (one per device changed), written with the
# change in its transaction (shared.db.webhooks.announce_device_changes, which reads the
# device after the change). device.enabled or device.reset would each be one line here and
# one in EVENT_TYPES; device.deleted more, since the row is gone by then.
ANNOUNCED: dict[DeviceAction, str] = {"disable": DEVICE_DISABLED}
# The actions that revoke the device's certificates (the CRL's reason), each revocation
# audited as ``certificate.revoked`` in the change's transaction.
REVOKING: dict[DeviceAction, RevocationReason] = {
    "disable": "disabled",
    "reset": "reset",
    "delete": "deleted",
}


@dataclass(frozen=True)
class DeviceChange:
    device_id: str
    outcome: ChangeOutcome


@dataclass(frozen=True)
class Device:
    """A device as its operator sees it. Whether it is online is not stored: it follows from
    ``disabled``, ``lifecycle`` and ``last_seen_at`` (shared.domain.devices)."""

    id: str
    hardware_id: str
    claimed_hardware_id: str
    name: str
    category_a: str
    category_b: str
    lifecycle: Lifecycle
    disabled: bool
    product_id: str
    registration_id: str
    created_at: datetime
    registered_at: datetime | None
    provisioned_at: datetime | None
    last_seen_at: datetime | None
    credential_generation: int


@dataclass(frozen=True)
class DeviceHistoryEntry:
    """One event of a device's life: a registration decision or a device event (ready,
    disabled, reset...), with its details (a JSON object, as recorded)."""

    at: datetime
    kind: str
    detail: Mapping[str, object]


def _known(row: Record) -> KnownDevice:
    return KnownDevice(
        id=row["id"],
        hardware_id=row["hardware_id"],
        claimed_hardware_id=row["claimed_hardware_id"],
        name=row["name"],
        fingerprint=row["fingerprint"],
        lifecycle=row["lifecycle"],
        disabled=row["disabled"],
        credential_generation=row["credential_generation"],
        registration_id=row["registration_id"],
        registration_key_digest=row["registration_key_digest"],
        created_at=row["created_at"],
        claim_sources=frozenset(row["claim_sources"]),
        product_id=row["product_id"],
        created_source=row["created_source"],
    )


async def load_family(
    conn: Connection, account_id: str, stems: Sequence[str], ids: Sequence[str] = ()
) -> list[KnownDevice]:
    """The devices of the account whose hardware ID has one of ``stems``
    (:func:`family_stems` of the claims) or is one of ``ids`` (any case: the claims'
    :func:`hardware_id_ancestors`, so that their family heads are known). One statement."""
    return [
        _known(r)
        for r in await conn.fetch(
            SELECT_FAMILY, account_id, list(set(stems)), sorted({i.lower() for i in ids})
        )
    ]


async def load_creations(
    conn: Connection, account_id: str, wanted: Sequence[tuple[str, str]], since: float
) -> list[Creation]:
    """The devices of the account created after ``since`` (seconds since the epoch) by each
    ``(head, source)`` of ``wanted`` (head: a family head, ``Family.head`` of a claim that
    is a suffixed spelling of an existing device; source: non-empty) that claimed the head
    or a suffixed spelling of it (``H``, ``H-1``, ``H-01``, ``h-1-1``). One statement for a
    batch, none when ``wanted`` is empty."""
    heads = sorted({(head.lower(), source) for head, source in wanted if source})
    if not heads:
        return []
    rows = await conn.fetch(
        SELECT_CREATIONS,
        account_id,
        [hardware_id_root(h) for h, _ in heads],
        [h for h, _ in heads],
        [s for _, s in heads],
        since,
    )
    return [Creation(r["id"], r["claimed"], r["created_source"], r["created_at"], r["clone"]) for r in rows]


async def count_registration_devices(conn: Connection, registration_ids: Sequence[str]) -> dict[str, int]:
    """Devices per registration (every registration asked for, 0 when it has none)."""
    if not registration_ids:
        return {}
    rows = await conn.fetch(COUNT_REGISTRATION_DEVICES, list(set(registration_ids)))
    counts = {r["registration_id"]: r["devices"] for r in rows}
    return {registration_id: counts.get(registration_id, 0) for registration_id in registration_ids}


async def apply_signals(
    pool: Pool, ready: Sequence[tuple[str, float, int]], seen: Sequence[tuple[str, float]]
) -> None:
    """Confirmations ``(device ID, at, credential generation)`` and heartbeats ``(device ID,
    at)`` of a batch (``at``: seconds since the epoch), idempotent whatever the redelivery.
    A confirmation applies only while the device is registered, enabled and at the
    generation it names (0: any)."""
    async with pool.acquire() as conn, conn.transaction():
        if ready:
            await conn.execute(
                MARK_PROVISIONED, [d for d, _, _ in ready], [a for _, a, _ in ready], [g for _, _, g in ready]
            )
        if seen:
            await conn.execute(TOUCH_LAST_SEEN, [d for d, _ in seen], [a for _, a in seen])


def _device(row: Record) -> Device:
    return Device(
        id=row["id"],
        hardware_id=row["hardware_id"],
        claimed_hardware_id=row["claimed_hardware_id"],
        name=row["name"],
        category_a=row["category_a"],
        category_b=row["category_b"],
        lifecycle=row["lifecycle"],
        disabled=row["disabled"],
        product_id=row["product_id"],
        registration_id=row["registration_id"],
        created_at=row["created_at"],
        registered_at=row["registered_at"],
        provisioned_at=row["provisioned_at"],
        last_seen_at=row["last_seen_at"],
        credential_generation=row["credential_generation"],
    )


# ---------------------------------------------------------------- search (the operator's listing)

# A search's SQL is put together from the fixed fragments below, with every value a
# positional parameter: nothing a caller sends becomes SQL text. Each sort key's
# expression is the one an index of migration 0015 is built on, so a page in any sort
# order is an index range scan, not a sort of the account's devices.
_DEVICE_COLUMNS = """id::text, hardware_id, claimed_hardware_id, name, category_a, category_b, lifecycle,
           disabled, product_id::text, registration_id::text, created_at, registered_at, provisioned_at,
           last_seen_at, credential_generation"""
# (expression, type of a cursor's key): devices never registered or seen sort as -infinity.
# Qualified with the table: in an ORDER BY a bare name is the output column (``id`` is
# ``id::text`` there, whose order need not be the uuid's).
_REGISTERED = "coalesce(devices.registered_at, '-infinity'::timestamptz)"
_SEEN = "coalesce(devices.last_seen_at, '-infinity'::timestamptz)"
_SORT_EXPRESSIONS: dict[str, tuple[str, str]] = {
    "id": ("devices.id", "uuid"),
    "hardware_id": ('lower(devices.hardware_id) COLLATE "C"', "text"),
    "name": ('lower(devices.name) COLLATE "C"', "text"),
    "created_at": ("devices.created_at", "timestamptz"),
    "registered_at": (_REGISTERED, "timestamptz"),
    "last_seen_at": (_SEEN, "timestamptz"),
}
# The state filter: the state shown (online, offline, disabled) or, for devices not disabled,
# the lifecycle step. Online is shared.domain.devices.is_online, with {cutoff} its cut-off
# time (online_cutoff): not disabled, provisioned, last seen strictly after the cut-off
# (written on the sort expression, which is the same for a device ever seen, so that the
# index of last_seen_at serves it).
_STATE_CONDITIONS = {
    "disabled": "disabled",
    "online": f"NOT disabled AND lifecycle = 'provisioned' AND {_SEEN} > {{cutoff}}",
    "offline": "NOT disabled AND NOT (lifecycle = 'provisioned'"
    " AND coalesce(last_seen_at > {cutoff}, false))",
    "preregistered": "NOT disabled AND lifecycle = 'preregistered'",
    "registered": "NOT disabled AND lifecycle = 'registered'",
}
_RANGE = '{column} COLLATE "C" >= {low} AND {column} COLLATE "C" < {high}'
SEARCH_PAGE = "SELECT {columns} FROM devices WHERE {where} ORDER BY {order} LIMIT {limit}"
SEARCH_COUNT = "SELECT count(*) FROM (SELECT 1 FROM devices WHERE {where} LIMIT {cap}) AS capped"
SEARCH_ESTIMATE = "EXPLAIN (FORMAT JSON) SELECT 1 FROM devices WHERE {where}"
SEARCH_ALL = "SELECT {columns} FROM devices WHERE {where} ORDER BY {order}"


class _Statement:
    """Conditions and their parameters, numbered in order; the fragments are this
    module's constants, the values are only ever parameters."""

    def __init__(self) -> None:
        self.args: list[object] = []
        self.conditions: list[str] = []

    def param(self, value: object, cast: str) -> str:
        self.args.append(value)
        return f"${len(self.args)}::{cast}"

    def where(self, fragment: str, **values: tuple[object, str]) -> None:
        self.conditions.append(fragment.format(**{k: self.param(v, c) for k, (v, c) in values.items()}))

    def sql(self, template: str, order: str = "") -> str:
        """``template`` (one of the SEARCH_* statements) with this statement's conditions
        and an ORDER BY of :func:`_order`: fragments of this module only."""
        where = " AND ".join(f"({c})" for c in self.conditions)
        return template.format(columns=_DEVICE_COLUMNS, where=where, order=order)


def _order(search: DeviceSearch) -> str:
    """The ORDER BY of a search: its sort key's expression, then the ID, both one way."""
    expression, _ = _SORT_EXPRESSIONS[search.sort]
    direction = "DESC" if search.order == "desc" else "ASC"
    if search.sort == "id":
        return f"devices.id {direction}"
    return f"{expression} {direction}, devices.id {direction}"


def _filtered(account_id: str, search: DeviceSearch, online_cutoff: datetime) -> _Statement:
    q = _Statement()
    q.where("account_id = {account}", account=(account_id, "uuid"))
    if search.state is not None:
        state = _STATE_CONDITIONS[search.state]
        q.where(state, **({"cutoff": (online_cutoff, "timestamptz")} if "{cutoff}" in state else {}))
    if search.lifecycle is not None:
        q.where("lifecycle = {lifecycle}", lifecycle=(search.lifecycle, "text"))
    if search.product_id is not None:
        q.where("product_id = {product}", product=(search.product_id, "uuid"))
    if search.registration_id is not None:
        q.where("registration_id = {registration}", registration=(search.registration_id, "uuid"))
    if search.hardware_id is not None:  # the unique index of migration 0008
        q.where("lower(hardware_id) = lower({hardware_id})", hardware_id=(search.hardware_id, "text"))
    for column, prefix in (
        ("lower(hardware_id)", search.hardware_id_prefix),
        ("lower(name)", search.name_prefix),
    ):
        if prefix is not None:
            q.where(_RANGE.replace("{column}", column), low=(prefix.low, "text"), high=(prefix.high, "text"))
    if search.category_a is not None:
        q.where("category_a = {category}", category=(search.category_a, "text"))
    if search.category_b is not None:
        q.where("category_b = {category}", category=(search.category_b, "text"))
    # Time ranges on the sort expressions (their indexes); a device never registered or seen
    # (-infinity there) is in no range: "before T" means "at a time before T".
    for expression, since, before in (
        (_REGISTERED, search.registered_since, search.registered_before),
        (_SEEN, search.seen_since, search.seen_before),
    ):
        if since is not None:
            q.where(f"{expression} >= {{since}}", since=(since, "timestamptz"))
        if before is not None:
            q.where(
                f"{expression} > '-infinity' AND {expression} < {{before}}", before=(before, "timestamptz")
            )
    return q


@dataclass(frozen=True)
class DeviceCount:
    """How many devices a search matches: exact up to the threshold asked for; above it
    ``total`` is the planner's estimate, at least threshold + 1, and ``exact`` is False."""

    total: int
    exact: bool


async def search_devices(
    pool: Pool,
    account_id: str,
    search: DeviceSearch,
    *,
    online_cutoff: datetime,
    after: Cursor | None = None,
    limit: int = 100,
) -> list[Device]:
    """Up to ``limit`` of the account's devices matching ``search``, in its sort order with
    the device ID as the tie-break, starting after the ``after`` cursor (the sort key's
    value and ID of the previous page's last device). ``state`` online means seen strictly
    after ``online_cutoff`` (shared.domain.devices.online_cutoff)."""
    q = _filtered(account_id, search, online_cutoff)
    expression, key_type = _SORT_EXPRESSIONS[search.sort]
    comparison = "<" if search.order == "desc" else ">"
    if after is not None:
        if search.sort == "id":
            q.where(f"devices.id {comparison} {{id}}", id=(after.id, "uuid"))
        else:
            key = "coalesce({key}, '-infinity'::timestamptz)" if key_type == "timestamptz" else "{key}"
            q.where(
                f"({expression}, devices.id) {comparison} ({key}, {{id}})",
                key=(after.key, key_type),
                id=(after.id, "uuid"),
            )
    statement = q.sql(SEARCH_PAGE.replace("{limit}", q.param(limit, "int")), _order(search))
    return [_device(r) for r in await pool.fetch(statement, *q.args)]


async def count_devices(
    pool: Pool, account_id: str, search: DeviceSearch, *, online_cutoff: datetime, exact_max: int
) -> DeviceCount:
    """How many of the account's devices match ``search`` (its sort is irrelevant).

    Exact while at most ``exact_max``: a count of at most ``exact_max + 1`` rows, so its
    cost is bounded whatever the registry's size. Above, the planner's row estimate of the
    search (EXPLAIN), raised to ``exact_max + 1`` since that many were counted."""
    q = _filtered(account_id, search, online_cutoff)
    estimate = q.sql(SEARCH_ESTIMATE)
    count = q.sql(SEARCH_COUNT.replace("{cap}", q.param(exact_max + 1, "int")))
    counted: int = await pool.fetchval(count, *q.args)
    if counted <= exact_max:
        return DeviceCount(counted, exact=True)
    plan = json.loads(await pool.fetchval(estimate, *q.args[:-1]))
    return DeviceCount(max(int(plan[0]["Plan"]["Plan Rows"]), exact_max + 1), exact=False)


@contextlib.asynccontextmanager
async def export_devices(
    pool: Pool, account_id: str, search: DeviceSearch, *, online_cutoff: datetime, batch: int = 1000
) -> AsyncIterator[Callable[[], AsyncIterator[list[Device]]]]:
    """A reader of every device matching ``search``, in its sort order, as batches of up to
    ``batch``: each call of it is a server-side cursor in one read-only REPEATABLE READ
    transaction, so the export is one snapshot of the registry (a device changed meanwhile
    is neither missed nor repeated) read with bounded memory, and a second reading (an
    HTTP/1.0 export's length, then its body) gives the same devices. The connection is
    held until the context exits."""
    q = _filtered(account_id, search, online_cutoff)
    statement = q.sql(SEARCH_ALL, _order(search))
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):

        async def batches() -> AsyncIterator[list[Device]]:
            cursor = await conn.cursor(statement, *q.args)
            while rows := await cursor.fetch(batch):
                yield [_device(r) for r in rows]

        yield batches


async def list_devices(
    pool: Pool,
    account_id: str,
    *,
    online_cutoff: datetime,
    state: str | None = None,
    hardware_id: str | None = None,
    registration_id: str | None = None,
    after: str | None = None,
    limit: int = 100,
) -> list[Device]:
    """Devices of an account in ID order; ``after`` is the last ID of the previous page
    (:func:`search_devices` with the filters of the first listing)."""
    search = DeviceSearch(state=state, hardware_id=hardware_id, registration_id=registration_id)
    cursor = Cursor(after, after) if after is not None else None
    return await search_devices(
        pool, account_id, search, online_cutoff=online_cutoff, after=cursor, limit=limit
    )


async def get_device(pool: Pool, account_id: str, device_id: str) -> Device:
    """The account's device, or NotFound."""
    found = await pool.fetch(SELECT_DEVICES_BY_ID, account_id, [device_id])
    if not found:
        raise NotFound(f"no device {device_id} in this account")
    return _device(found[0])


async def device_history(pool: Pool, device_id: str) -> list[DeviceHistoryEntry]:
    """A device's registration decisions and events, oldest first (the caller checked
    that the device is the account's)."""
    return [
        DeviceHistoryEntry(at=r["at"], kind=r["kind"], detail=json.loads(r["detail"]))
        for r in await pool.fetch(SELECT_HISTORY, device_id)
    ]


async def change_devices(
    pool: Pool, actor: Account, device_ids: Sequence[str], action: DeviceAction
) -> list[DeviceChange]:
    """Disable, enable, reset or delete the actor's account's devices among ``device_ids``
    in one transaction: one outcome per ID, in the order given. Every device changed is
    announced on ``fleetreg_invalidate`` and recorded in the operator audit trail (one
    event each: ``device.disabled``, ``device.enabled``, ``device.reset``,
    ``device.deleted``) in the same transaction, and so are its webhook deliveries where
    the action has an event (``ANNOUNCED``: a disable, ``device.disabled``). A device left
    as it was (disabled already) gets neither. Another account's device is not found."""
    ids = [device_id.lower() for device_id in device_ids]
    async with pool.acquire() as conn, conn.transaction():
        found = {r["id"]: r for r in await conn.fetch(SELECT_FOR_CHANGE, ids, actor.id)}
        changed = {r["id"] for r in await conn.fetch(STATEMENTS[action], list(found), actor.id)}
        await audit.record_many(
            conn,
            actor,
            AUDITED[action],
            "device",
            [(device_id, _audited(action, found[device_id])) for device_id in sorted(changed)],
        )
        if action in ANNOUNCED:
            await webhooks.announce_device_changes(conn, actor, ANNOUNCED[action], sorted(changed))
        if action in REVOKING:
            await _revoke_certificates(conn, actor, found, sorted(changed), REVOKING[action])
    kept: ChangeOutcome = "conflict" if action == "reset" else "unchanged"
    return [
        DeviceChange(
            device_id,
            "not_found" if device_id not in found else DONE[action] if device_id in changed else kept,
        )
        for device_id in ids
    ]


async def _revoke_certificates(
    conn: Connection,
    actor: Account,
    found: Mapping[str, Record],
    device_ids: Sequence[str],
    reason: RevocationReason,
) -> None:
    """Revoke the changed devices' certificates and audit each (``certificate.revoked``,
    on the device, with the serial and the reason)."""
    revoked = await certificates.revoke_devices(conn, device_ids, reason)
    await audit.record_many(
        conn,
        actor,
        "certificate.revoked",
        "device",
        [
            (device_id, {"hardware_id": found[device_id]["hardware_id"], "serial": serial, "reason": reason})
            for device_id, serial in revoked
        ],
    )


def _audited(action: DeviceAction, before: Record) -> dict[str, object]:
    """What the audit trail records of one device's change: the fields changed (old and
    new), with the hardware ID to read it by; a deletion keeps what identified the device."""
    shown: dict[str, object] = {"hardware_id": before["hardware_id"]}
    if action in ("disable", "enable"):
        shown["disabled"] = {"from": before["disabled"], "to": action == "disable"}
    elif action == "reset":
        generation = before["credential_generation"]
        shown["lifecycle"] = {"from": before["lifecycle"], "to": "preregistered"}
        shown["credential_generation"] = {"from": generation, "to": generation + 1}
    else:
        shown.update(
            name=before["name"],
            lifecycle=before["lifecycle"],
            disabled=before["disabled"],
            product_id=before["product_id"],
            registration_id=before["registration_id"],
        )
    return shown


async def devices_by_id(pool: Pool, account_id: str, device_ids: Sequence[str]) -> dict[str, Device]:
    """The account's devices among ``device_ids``, by ID (others are absent)."""
    rows = await pool.fetch(SELECT_DEVICES_BY_ID, account_id, list(device_ids))
    return {r["id"]: _device(r) for r in rows}


async def change_device(pool: Pool, actor: Account, device_id: str, action: DeviceAction) -> None:
    """One device's :func:`change_devices`: NotFound for a device not in the account;
    Conflict for a disabled device asked to reset (enable it first)."""
    (change,) = await change_devices(pool, actor, [device_id], action)
    if change.outcome == "not_found":
        raise NotFound(f"no device {device_id} in this account")
    if change.outcome == "conflict":
        raise Conflict(
            f"device {device_id} is disabled; a disabled device cannot be reset (enable it first)",
            rule="device_enabled",
        )


@dataclass(frozen=True)
class DeletedDevice:
    """A device the operator deleted, as remembered for the stale-credential window."""

    device_id: str
    credential_generation: int
    deleted_at: datetime


CLAIMED_DEVICE = """
    SELECT d.id::text AS device_id, d.credential_generation
    FROM bulk_identification_codes c
    JOIN devices d ON d.product_id = c.product_id AND d.account_id = (
        SELECT p.account_id FROM products p WHERE p.id = c.product_id)
    WHERE c.code = $1 AND lower(d.hardware_id) = lower($2)"""


async def claimed_device(pool: Pool, code: str, hardware_id: str) -> tuple[str, int] | None:
    """The device (its ID and current credential generation) of ``code``'s product whose
    hardware ID is ``hardware_id`` (any case), or None: what a claim presenting a device
    secret is checked against (deduplication's "the same device" compares the same
    device). One indexed read, no write."""
    row = await pool.fetchrow(CLAIMED_DEVICE, code, hardware_id)
    if row is None:
        return None
    return row["device_id"], row["credential_generation"]


async def credentials_replaced_at(pool: Pool, device_id: str, generation: int) -> datetime | None:
    """When the operator's reset or move, or a reclaim before "ready", replaced the device's
    credential ``generation`` (the first one to a later generation), or None when none did
    (``device_id``: a UUID)."""
    replaced: datetime | None = await pool.fetchval(CREDENTIALS_REPLACED_AT, device_id, generation)
    return replaced


async def deleted_device(pool: Pool, device_id: str) -> DeletedDevice | None:
    """The deleted device of ``device_id`` (a UUID) while it is remembered, else None."""
    row = await pool.fetchrow(DELETED_DEVICE, device_id)
    if row is None:
        return None
    return DeletedDevice(device_id, row["credential_generation"], row["deleted_at"])


# ---------------------------------------------------------------- move and rename

# The product a device is moved to, with the registration it would take: its auto
# registration (paused or not: the device claims once it is resumed), or its newest
# published bulk registration (a product's bulk registrations share its code, and a bulk
# claim finds the device by hardware ID and key whichever of them lists it). The product
# row is locked FOR SHARE, so it is neither deleted nor given its first registration
# under the move.
SELECT_MOVE_TARGET = """
    SELECT p.id::text AS product_id, p.status, p.registration_kind,
           r.id::text AS registration_id, r.kind, r.max_devices
    FROM products p
    LEFT JOIN LATERAL (
        SELECT id, kind, max_devices FROM registrations
        WHERE product_id = p.id AND (kind = 'auto' OR status IN ('publishing', 'preregistered'))
        ORDER BY created_at DESC, id LIMIT 1) r ON true
    WHERE p.id = $1 AND p.account_id = $2
    FOR SHARE OF p"""
# Under the registration's lock, as deduplication counts a quota (registrations.lock_quotas).
LOCK_REGISTRATION_QUOTA = "SELECT max_devices FROM registrations WHERE id = $1 FOR UPDATE"
COUNT_ONE_REGISTRATION = "SELECT count(*) FROM devices WHERE registration_id = $1"
# A move is a reset (RESET_DEVICES) into another product's registration; its files go
# (files.drop_files) so that the target product's services are rendered at its next claim.
MOVE_DEVICE = """
    WITH moved AS (
        UPDATE devices SET product_id = $2, registration_id = $3, lifecycle = 'preregistered',
                           credential_generation = credential_generation + 1,
                           fingerprint = '', provisioned_at = NULL
        WHERE id = $1 RETURNING id, credential_generation),
    events AS (
        INSERT INTO device_events (device_id, kind, detail)
        SELECT id, 'moved', jsonb_build_object('credential_generation', credential_generation,
                                               'from_product_id', $4::text, 'to_product_id', $2::text)
        FROM moved)
    SELECT credential_generation, pg_notify('fleetreg_invalidate', 'device:' || id::text) FROM moved"""
RENAME_DEVICE = """
    WITH renamed AS (UPDATE devices SET name = $2 WHERE id = $1 RETURNING id),
    events AS (
        INSERT INTO device_events (device_id, kind, detail)
        SELECT id, 'renamed', jsonb_build_object('name', $2::text) FROM renamed)
    SELECT pg_notify('fleetreg_invalidate', 'device:' || id::text) FROM renamed"""


async def _locked(conn: Connection, actor: Account, device_id: str) -> Record:
    """The account's device, locked FOR UPDATE for the rest of the transaction; NotFound."""
    found = await conn.fetch(SELECT_FOR_CHANGE, [device_id.lower()], actor.id)
    if not found:
        raise NotFound(f"no device {device_id} in this account")
    return found[0]


async def move_device(pool: Pool, actor: Account, device_id: str, product_id: str) -> None:
    """Move the account's device into the account's product ``product_id``, reset for
    re-provisioning there, in one transaction: it takes the product's registration
    (``SELECT_MOVE_TARGET``), lifecycle ``preregistered``, a new credential generation (its
    device secret and service passwords revoked), no fingerprint, and no provisioning
    files (rendered for the target's services, with new service UIDs, at its next
    claim). Its registration key stays: a bulk device claims in the target bulk product
    with it. The intake's cache of it is dropped (``fleetreg_invalidate``), a ``moved``
    device event and a ``device.moved`` audit event naming both products are recorded.

    NotFound for a device or product not in the account; Conflict for the refusals of
    shared.domain.devices.move_refusal (disabled, same product, product not locked or
    serving no registration, bulk product for a device without a key, quota)."""
    async with pool.acquire() as conn, conn.transaction():
        # The registration before the device, in the order deduplication locks them (the
        # quota, then the devices it decides), so that the two never wait on each other.
        row = await conn.fetchrow(SELECT_MOVE_TARGET, product_id, actor.id)
        if row is None:
            raise NotFound(f"no product {product_id} in this account", field="product_id")
        target = MoveTarget(
            product_id=row["product_id"],
            status=row["status"],
            registration_kind=row["kind"],
            registration_id=row["registration_id"],
        )
        if target.registration_id is not None and row["max_devices"] is not None:
            quota = await conn.fetchval(LOCK_REGISTRATION_QUOTA, target.registration_id)
            if quota is not None:
                count = await conn.fetchval(COUNT_ONE_REGISTRATION, target.registration_id)
                target = replace(target, max_devices=quota, devices=count)
        before = await _locked(conn, actor, device_id)
        refusal = move_refusal(
            before["id"],
            disabled=before["disabled"],
            product_id=before["product_id"],
            has_registration_key=before["has_key"],
            target=target,
        )
        if refusal is not None:
            raise refusal
        await files.drop_files(conn, before["id"])
        generation = await conn.fetchval(
            MOVE_DEVICE, before["id"], target.product_id, target.registration_id, before["product_id"]
        )
        await audit.record(
            conn,
            actor,
            "device.moved",
            "device",
            before["id"],
            {
                "hardware_id": before["hardware_id"],
                "product_id": {"from": before["product_id"], "to": target.product_id},
                "registration_id": {"from": before["registration_id"], "to": target.registration_id},
                "lifecycle": {"from": before["lifecycle"], "to": "preregistered"},
                "credential_generation": {"from": before["credential_generation"], "to": generation},
            },
        )
        # A reset into another product: its certificates are revoked as a reset's are.
        await _revoke_certificates(conn, actor, {before["id"]: before}, [before["id"]], "reset")


async def rename_device(pool: Pool, actor: Account, keyring: Keyring, device_id: str, name: str) -> bool:
    """Give the account's device the name ``name`` (validated by the caller), in one
    transaction: the device row (under FOR UPDATE, so no provisioning of it is under way:
    files.SELECT_DEVICE_FILES_LOCKED), its files of the current generation rendered again
    with the new name (``device_name`` line; same UIDs, same passwords:
    files.render_again), a ``renamed`` device event, a ``device.renamed`` audit event
    (``name`` from and to) and the intake's cache of it dropped. A device that already
    bears the name is left as it is (no event): False; True when renamed. NotFound for a
    device not in the account. Credentials and lifecycle are untouched."""
    async with pool.acquire() as conn, conn.transaction():
        before = await _locked(conn, actor, device_id)
        if before["name"] == name:
            return False
        await conn.execute(RENAME_DEVICE, before["id"], name)
        await files.render_again(conn, keyring, before["id"])
        await audit.record(
            conn,
            actor,
            "device.renamed",
            "device",
            before["id"],
            {"hardware_id": before["hardware_id"], "name": {"from": before["name"], "to": name}},
        )
    return True
