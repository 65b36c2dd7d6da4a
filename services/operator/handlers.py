"""The operator API's business logic: plain functions of the account and validated input,
free of HTTP. They validate what the routes parsed, call the repositories and return
records (the repositories' or this module's); views.py turns them into JSON."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from urllib.parse import urlsplit

import aiohttp

from services.operator.settings import RetentionSettings
from shared.db import (
    accounts,
    alerts,
    audit,
    console_sessions,
    decisions,
    devices,
    products,
    registrations,
    storm,
    webhooks,
)
from shared.db import retention as retention_db
from shared.db.accounts import ApiKey, IssuedApiKey
from shared.db.alerts import SecurityAlert
from shared.db.audit import AuditEvent
from shared.db.decisions import DecisionEntry
from shared.db.devices import Device, DeviceChange, DeviceHistoryEntry
from shared.db.devices import DeviceAction as DeviceAction  # the routes name the actions
from shared.db.pool import Pool
from shared.db.products import Product
from shared.db.registrations import Registration
from shared.db.webhooks import Delivery, Webhook
from shared.domain import webhooks as webhook_rules
from shared.domain.accounts import Account
from shared.domain.credentials import DEFAULT_STALE_CREDENTIAL_SECONDS, Keyring
from shared.domain.device_search import (
    PAGE_PARAMETERS,
    SEARCH_PARAMETERS,
    Cursor,
    DeviceSearch,
    decode_cursor,
    encode_cursor,
    parse_search,
    parse_time,
    sort_value,
)
from shared.domain.devices import ShownState, online_cutoff, shown_state
from shared.domain.identifiers import is_uuid, validate_device_name
from shared.domain.inputs import refuse_unknown_fields
from shared.domain.products import (
    RegistrationKind,
    validate_product,
    validate_service,
    validate_service_change,
)
from shared.errors import InvalidInput, Unauthorized, shortened
from shared.metrics import PIPELINE_HEALTH_CHECKS
from shared.settings import Secret

AUTO: RegistrationKind = "auto"
# The column's range (a Postgres integer): a larger quota is no quota, so it is refused.
MAX_DEVICES_LIMIT = 2_147_483_647
# Device IDs one batch action takes: one transaction, an answer of bounded size.
BATCH_MAX_IDS = 1000
# Operator actions shown with a device: the newest; the whole trail is /v1/audit-events.
DEVICE_AUDIT_EVENTS = 50
EXPORT_FORMATS = ("csv", "jsonl")
DECISIONS = ("new", "same", "clone", "refused")
ALERT_KINDS = alerts.ALERT_KINDS


# ---------------------------------------------------------------- what the handlers return


@dataclass(frozen=True)
class ShownDevice:
    """A device and the state it is shown in (shared.domain.devices.shown_state) at the
    moment it was read."""

    device: Device
    state: ShownState

    @property
    def online(self) -> bool:
        return self.state == "online"


@dataclass(frozen=True)
class DevicePage:
    """A page of a device search: ``next_after`` is the cursor of the next page when this one
    is full; ``total`` counts every matching device (exact when ``total_exact``, else an
    estimate above the exact-count threshold: repositories ``count_devices``)."""

    devices: list[ShownDevice]
    next_after: str | None
    total: int
    total_exact: bool


@dataclass(frozen=True)
class DeviceDetail:
    """A device with its history (registration decisions and lifecycle events) and the
    newest operator actions on it (``audit``, newest first, at most DEVICE_AUDIT_EVENTS)."""

    device: ShownDevice
    history: list[DeviceHistoryEntry]
    audit: list[AuditEvent] = field(default_factory=list)


@dataclass(frozen=True)
class DeviceChanges:
    """A batch action: one change per ID in the order given, each with the device as it is
    now (None when not found in this account)."""

    action: DeviceAction
    changes: list[tuple[DeviceChange, ShownDevice | None]]

    @property
    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for change, _ in self.changes:
            counts[change.outcome] = counts.get(change.outcome, 0) + 1
        return counts


@dataclass(frozen=True)
class DecisionPage:
    decisions: list[DecisionEntry]
    next_before: datetime | None  # the cursor of the next page, when this one is full
    next_before_id: str | None


@dataclass(frozen=True)
class AuditPage:
    events: list[AuditEvent]
    next_before: datetime | None  # the cursor of the next page, when this one is full
    next_before_id: str | None


@dataclass(frozen=True)
class AlertPage:
    alerts: list[SecurityAlert]
    next_before: datetime | None  # the cursor of the next page, when this one is full
    next_before_id: str | None


# ---------------------------------------------------------------- products


async def create_product(pool: Pool, account: Account, body: dict[str, Any]) -> Product:
    name, services = validate_product(body)
    return await products.create_product(pool, account, name, services)


async def list_products(pool: Pool, account: Account) -> list[Product]:
    return await products.list_products(pool, account.id)


async def get_product(pool: Pool, account: Account, product_id: str) -> Product:
    return await products.get_product(pool, account.id, product_id)


async def add_service(pool: Pool, account: Account, product_id: str, body: dict[str, Any]) -> Product:
    return await products.add_service(pool, account, product_id, validate_service(body, None))


async def lock_product(pool: Pool, account: Account, product_id: str) -> Product:
    return await products.lock_product(pool, account, product_id)


async def change_service(
    pool: Pool, account: Account, product_id: str, service_name: str, body: dict[str, Any]
) -> Product:
    """Edit one service of a product (``enabled``, ``port``; ``name`` while the product is
    new; never ``type``); the product as it is then."""
    return await products.change_service(
        pool, account, product_id, service_name, validate_service_change(body)
    )


async def delete_product(pool: Pool, account: Account, product_id: str) -> Product:
    """Delete a product no registration and no device uses; the product as it was."""
    before = await products.get_product(pool, account.id, product_id)
    await products.delete_product(pool, account, product_id)
    return before


# ---------------------------------------------------------------- auto registrations


async def create_auto_registration(pool: Pool, account: Account, body: dict[str, Any]) -> Registration:
    product_id = body.get("product_id")
    if not isinstance(product_id, str) or not product_id:
        raise InvalidInput("product_id is required", field="product_id", rule="required")
    if not is_uuid(product_id):
        raise InvalidInput("product_id is not a product ID", field="product_id", rule="format=uuid")
    max_devices = _max_devices(body.get("max_devices")) if "max_devices" in body else None
    registration_id = await registrations.create_registration(
        pool, account, product_id, AUTO, "active", max_devices
    )
    return await registrations.get_registration(pool, account.id, AUTO, registration_id)


def _max_devices(value: object) -> int | None:
    """An auto registration's device quota: a whole number 1..MAX_DEVICES_LIMIT, or null (none)."""
    if value is None:
        return None
    if isinstance(value, float) and abs(value) > MAX_DEVICES_LIMIT:
        value = MAX_DEVICES_LIMIT + 1  # a whole number too large for the JSON parser's integers
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidInput(
            "max_devices must be a whole number or null", field="max_devices", rule="type=integer"
        )
    if not 1 <= value <= MAX_DEVICES_LIMIT:
        raise InvalidInput(
            f"max_devices must be 1-{MAX_DEVICES_LIMIT} (null: no quota)",
            field="max_devices",
            rule=f"range=1..{MAX_DEVICES_LIMIT}",
        )
    return value


async def list_auto_registrations(pool: Pool, account: Account) -> list[Registration]:
    return await registrations.list_registrations(pool, account.id, AUTO)


async def get_auto_registration(pool: Pool, account: Account, registration_id: str) -> Registration:
    return await registrations.get_registration(pool, account.id, AUTO, registration_id)


async def update_auto_registration(
    pool: Pool, account: Account, registration_id: str, body: dict[str, Any]
) -> Registration:
    """Change an auto registration's settings: ``max_devices`` (null clears the quota)."""
    unknown = sorted(set(body) - {"max_devices"})
    if unknown:
        raise InvalidInput(
            f"{shortened(unknown[0])} cannot be changed here (only max_devices)",
            field=shortened(unknown[0]),
            rule="unknown_field",
        )
    if "max_devices" not in body:
        raise InvalidInput("max_devices is required", field="max_devices", rule="required")
    await registrations.set_max_devices(pool, account, registration_id, _max_devices(body["max_devices"]))
    return await registrations.get_registration(pool, account.id, AUTO, registration_id)


AutoAction = Literal["pause", "resume", "rotate-code"]


async def change_auto_registration(
    pool: Pool, account: Account, registration_id: str, action: AutoAction
) -> Registration:
    if action == "rotate-code":
        await registrations.rotate_code(pool, account, registration_id)
    else:
        status = {"pause": "paused", "resume": "active"}[action]
        await registrations.set_registration_status(pool, account, AUTO, registration_id, status)
    return await registrations.get_registration(pool, account.id, AUTO, registration_id)


# ---------------------------------------------------------------- query parameters


def _only(query: dict[str, str], known: tuple[str, ...]) -> None:
    """Refuse a query parameter the listing does not know: silently ignored, a filter
    such as ``category_a=x`` would return everything."""
    unknown = sorted(set(query) - set(known))
    if unknown:
        raise InvalidInput(
            f"unknown query parameter {shortened(unknown[0])!r}: this listing takes {', '.join(known)}",
            field=shortened(unknown[0]),
            rule="known_parameters",
        )


def _choice(query: dict[str, str], name: str, allowed: tuple[str, ...]) -> str | None:
    """An optional query parameter that must be one of ``allowed``."""
    value = query.get(name) or None
    if value is not None and value not in allowed:
        raise InvalidInput(f"{name} must be one of {', '.join(allowed)}", field=name, rule="enum")
    return value


def _page_limit(query: dict[str, str], page_limit_max: int) -> int:
    """The page size asked for (default 100), within 1..page_limit_max."""
    try:
        limit = int(query.get("limit", str(min(100, page_limit_max))))
    except ValueError as exc:
        raise InvalidInput("limit must be a whole number", field="limit", rule="type=integer") from exc
    if not 1 <= limit <= page_limit_max:
        raise InvalidInput(
            f"limit must be 1-{page_limit_max}", field="limit", rule=f"range=1..{page_limit_max}"
        )
    return limit


# ---------------------------------------------------------------- devices


def _shown(device: Device, now: datetime, online_ttl_s: float) -> ShownDevice:
    state = shown_state(
        disabled=device.disabled,
        lifecycle=device.lifecycle,
        last_seen_at=device.last_seen_at,
        now=now,
        online_ttl_s=online_ttl_s,
    )
    return ShownDevice(device, state)


async def list_devices(
    pool: Pool,
    account: Account,
    query: dict[str, str],
    *,
    page_limit_max: int,
    online_ttl_s: float,
    count_exact_max: int,
    now: datetime | None = None,
) -> DevicePage:
    """A page of the account's devices matching the query's filters, in its sort order
    (shared.domain.device_search), with the total count of matches; the state filter and
    the states shown follow one rule (shared.domain.devices) at one moment, ``now``.
    Unknown parameters, bad values and a cursor of another sort are InvalidInput."""
    _only(query, (*SEARCH_PARAMETERS, *PAGE_PARAMETERS))
    search = parse_search(query)
    limit = _page_limit(query, page_limit_max)
    after = decode_cursor(search, query["after"]) if query.get("after") else None
    at = now or datetime.now(UTC)
    cutoff = online_cutoff(at, online_ttl_s)
    found = await devices.search_devices(
        pool, account.id, search, online_cutoff=cutoff, after=after, limit=limit
    )
    count = await devices.count_devices(
        pool, account.id, search, online_cutoff=cutoff, exact_max=count_exact_max
    )
    return DevicePage(
        devices=[_shown(d, at, online_ttl_s) for d in found],
        next_after=_cursor(search, found[-1]) if len(found) == limit else None,
        total=count.total,
        total_exact=count.exact,
    )


def _cursor(search: DeviceSearch, last: Device) -> str:
    key = sort_value(
        search.sort,
        device_id=last.id,
        hardware_id=last.hardware_id,
        name=last.name,
        created_at=last.created_at,
        registered_at=last.registered_at,
        last_seen_at=last.last_seen_at,
    )
    return encode_cursor(search, Cursor(key, last.id))


def export_format(query: dict[str, str]) -> str:
    """The export's ``format`` (csv, the default, or jsonl); the other parameters are
    checked by :func:`export_devices`."""
    _only(query, (*SEARCH_PARAMETERS, "format"))
    chosen = query.get("format") or "csv"
    if chosen not in EXPORT_FORMATS:
        raise InvalidInput(f"format must be one of {', '.join(EXPORT_FORMATS)}", field="format", rule="enum")
    return chosen


@contextlib.asynccontextmanager
async def export_devices(
    pool: Pool,
    account: Account,
    query: dict[str, str],
    *,
    online_ttl_s: float,
    now: datetime | None = None,
) -> AsyncIterator[Callable[[], AsyncIterator[list[ShownDevice]]]]:
    """A reader of every device of the account matching the query's filters (no page size,
    no cursor), in its sort order, as batches: each call reads one snapshot of the
    registry, the same for every call, with bounded memory, and shows it as of one instant
    (repositories ``export_devices``). The query is validated before anything is read."""
    export_format(query)
    search = parse_search(query)
    at = now or datetime.now(UTC)
    async with devices.export_devices(
        pool, account.id, search, online_cutoff=online_cutoff(at, online_ttl_s)
    ) as batches:

        async def shown() -> AsyncIterator[list[ShownDevice]]:
            async for batch in batches():
                yield [_shown(d, at, online_ttl_s) for d in batch]

        yield shown


async def get_device(
    pool: Pool, account: Account, device_id: str, *, online_ttl_s: float, now: datetime | None = None
) -> DeviceDetail:
    device = await devices.get_device(pool, account.id, device_id)
    history = await devices.device_history(pool, device.id)
    trail = await audit.list_events(
        pool, account.id, audit.AuditFilter(target_id=device.id), limit=DEVICE_AUDIT_EVENTS
    )
    return DeviceDetail(_shown(device, now or datetime.now(UTC), online_ttl_s), history, trail)


async def change_device(
    pool: Pool,
    account: Account,
    device_id: str,
    action: DeviceAction,
    *,
    online_ttl_s: float,
    now: datetime | None = None,
) -> DeviceDetail:
    """Disable, enable or reset one device (an unknown one is not found; a disabled one
    cannot be reset); the device as it is then."""
    await devices.change_device(pool, account, device_id, action)
    return await get_device(pool, account, device_id, online_ttl_s=online_ttl_s, now=now)


async def delete_device(
    pool: Pool, account: Account, device_id: str, *, online_ttl_s: float, now: datetime | None = None
) -> ShownDevice:
    """Decommission one device: its hardware ID is free again; the device as it was."""
    before = await devices.get_device(pool, account.id, device_id)
    await devices.change_device(pool, account, device_id, "delete")
    return _shown(before, now or datetime.now(UTC), online_ttl_s)


MOVE_FIELDS = ("product_id",)
RENAME_FIELDS = ("name",)


def move_request(body: dict[str, Any]) -> str:
    """The target ``product_id`` of a ``POST /v1/devices/{id}/move`` body (a product ID);
    InvalidInput naming the field otherwise, or naming an unknown field."""
    refuse_unknown_fields(body, MOVE_FIELDS, what="a move")
    product_id = body.get("product_id")
    if product_id is None or product_id == "":
        raise InvalidInput("product_id is required", field="product_id", rule="required")
    if not isinstance(product_id, str) or not is_uuid(product_id):
        raise InvalidInput("product_id is not a product ID", field="product_id", rule="format=uuid")
    return product_id.lower()


def rename_request(body: dict[str, Any]) -> str:
    """The ``name`` of a ``POST /v1/devices/{id}/rename`` body, by the rule every device name
    follows (a bulk CSV's DEVICE_NAME: shared.domain.identifiers.validate_device_name;
    surrounding spaces trimmed); InvalidInput naming the field otherwise."""
    refuse_unknown_fields(body, RENAME_FIELDS, what="a rename")
    return validate_device_name(body.get("name"), "name")


async def move_device(
    pool: Pool,
    account: Account,
    device_id: str,
    body: dict[str, Any],
    *,
    online_ttl_s: float,
    now: datetime | None = None,
) -> DeviceDetail:
    """Move one device to another product of the account, reset for re-provisioning there
    (repositories ``move_device``: NotFound, Conflict); the device as it is then."""
    product_id = move_request(body)
    await devices.move_device(pool, account, device_id, product_id)
    return await get_device(pool, account, device_id, online_ttl_s=online_ttl_s, now=now)


async def rename_device(
    pool: Pool,
    account: Account,
    keyring: Keyring,
    device_id: str,
    body: dict[str, Any],
    *,
    online_ttl_s: float,
    now: datetime | None = None,
) -> DeviceDetail:
    """Rename one device (its files rendered again with the name; credentials untouched:
    repositories ``rename_device``; NotFound); the device as it is then."""
    name = rename_request(body)
    await devices.rename_device(pool, account, keyring, device_id, name)
    return await get_device(pool, account, device_id, online_ttl_s=online_ttl_s, now=now)


def _device_ids(body: dict[str, Any]) -> list[str]:
    """``device_ids``: 1..BATCH_MAX_IDS distinct device IDs (UUIDs), lower-cased."""
    raw = body.get("device_ids")
    if raw is None:
        raise InvalidInput("device_ids is required", field="device_ids", rule="required")
    if not isinstance(raw, list):
        raise InvalidInput("device_ids must be a list of device IDs", field="device_ids", rule="type=array")
    if not 1 <= len(raw) <= BATCH_MAX_IDS:
        raise InvalidInput(
            f"device_ids must hold 1-{BATCH_MAX_IDS} IDs; it holds {len(raw)}",
            field="device_ids",
            rule=f"items=1..{BATCH_MAX_IDS}",
        )
    ids: list[str] = []
    seen: set[str] = set()
    for index, value in enumerate(raw):
        where = f"device_ids[{index}]"
        if not isinstance(value, str) or not is_uuid(value):
            raise InvalidInput(f"{where} is not a device ID", field=where, rule="format=uuid")
        device_id = value.lower()
        if device_id in seen:
            raise InvalidInput(f"{where} is given twice", field=where, rule="unique")
        seen.add(device_id)
        ids.append(device_id)
    return ids


async def change_devices(
    pool: Pool,
    account: Account,
    body: dict[str, Any],
    action: DeviceAction,
    *,
    online_ttl_s: float,
    now: datetime | None = None,
) -> DeviceChanges:
    """Disable, enable, reset or delete many devices in one transaction; one result per
    ID, in order: the outcome and the device as it is now (as it was, for a device
    deleted; None when not found in this account)."""
    ids = _device_ids(body)
    before = await devices.devices_by_id(pool, account.id, ids) if action == "delete" else {}
    changes = await devices.change_devices(pool, account, ids, action)
    found = {**before, **await devices.devices_by_id(pool, account.id, ids)}
    at = now or datetime.now(UTC)
    return DeviceChanges(
        action,
        [
            (c, _shown(found[c.device_id], at, online_ttl_s) if c.device_id in found else None)
            for c in changes
        ],
    )


# ---------------------------------------------------------------- audit trail and alerts


def _before(query: dict[str, str]) -> tuple[datetime | None, str | None]:
    """The optional cursor of a newest-first listing: ``before`` (ISO 8601 time) and
    ``before_id`` (the last ID seen at that time, from ``next_before_id``)."""
    before_id = query.get("before_id") or None
    if before_id is not None and not is_uuid(before_id):
        raise InvalidInput("before_id is not an ID", field="before_id", rule="format=uuid")
    when = _time_param(query, "before")
    if when is None and before_id is not None:
        raise InvalidInput("before_id needs before", field="before_id", rule="requires=before")
    return when, before_id


def _time_param(query: dict[str, str], name: str) -> datetime | None:
    """An optional ISO 8601 time parameter, in UTC (a time without an offset is UTC)."""
    raw = query.get(name)
    return parse_time(raw, name) if raw else None


def _newest_first(
    query: dict[str, str], filter_name: str, allowed: tuple[str, ...], page_limit_max: int
) -> tuple[str | None, int, datetime | None, str | None]:
    """The query of a newest-first listing with one enumerated filter: (filter value,
    page size, ``before`` time, ``before_id``); unknown parameters refused."""
    _only(query, (filter_name, "limit", "before", "before_id"))
    chosen = _choice(query, filter_name, allowed)
    limit = _page_limit(query, page_limit_max)
    before, before_id = _before(query)
    return chosen, limit, before, before_id


async def list_decisions(
    pool: Pool, account: Account, query: dict[str, str], *, page_limit_max: int
) -> DecisionPage:
    """The audit trail of registration decisions, newest first; ``before`` pages back."""
    decision, limit, before, before_id = _newest_first(query, "decision", DECISIONS, page_limit_max)
    found = await decisions.list_decisions(
        pool, account.id, decision=decision, before=before, limit=limit, before_id=before_id
    )
    full = len(found) == limit
    return DecisionPage(
        found,
        next_before=found[-1].decided_at if full else None,
        next_before_id=found[-1].request_id if full else None,
    )


async def list_security_alerts(
    pool: Pool, account: Account, query: dict[str, str], *, page_limit_max: int
) -> AlertPage:
    """The account's security alerts, most recently seen first; ``before`` pages back."""
    kind, limit, before, before_id = _newest_first(query, "kind", ALERT_KINDS, page_limit_max)
    found = await alerts.list_alerts(
        pool, account.id, kind=kind, before=before, limit=limit, before_id=before_id
    )
    full = len(found) == limit
    return AlertPage(
        found,
        next_before=found[-1].last_seen_at if full else None,
        next_before_id=found[-1].id if full else None,
    )


# ---------------------------------------------------------------- operator audit trail

# An action is ``noun.verb`` in lower case (``device.disabled``); a target ID is an ID or a
# name an operator typed, bounded so a filter cannot be a megabyte.
_ACTION = re.compile(r"[a-z_]{1,40}\.[a-z_]{1,40}")
_TARGET_ID_MAX = 200
AUDIT_PARAMETERS = ("action", "target_id", "api_key_id", "since", "until", "limit", "before", "before_id")


async def list_audit_events(
    pool: Pool, account: Account, query: dict[str, str], *, page_limit_max: int
) -> AuditPage:
    """The operator audit trail, newest first: every state-changing operator call of the
    account, filtered by ``action`` (exact), ``target_id``, ``api_key_id``, a time range
    ``since`` (inclusive) .. ``until`` (exclusive); ``before``/``before_id`` page back.
    InvalidInput (400) names a bad or unknown parameter."""
    _only(query, AUDIT_PARAMETERS)
    where = audit.AuditFilter(
        action=_audit_action(query.get("action") or None),
        target_id=_audit_target(query.get("target_id") or None),
        since=_time_param(query, "since"),
        until=_time_param(query, "until"),
        api_key_id=query.get("api_key_id") or None,
    )
    if where.api_key_id is not None and not is_uuid(where.api_key_id):
        raise InvalidInput("api_key_id is not an ID", field="api_key_id", rule="format=uuid")
    limit = _page_limit(query, page_limit_max)
    before, before_id = _before(query)
    found = await audit.list_events(
        pool, account.id, where, limit=limit, before=(before, before_id) if before else None
    )
    full = len(found) == limit
    return AuditPage(
        found,
        next_before=found[-1].at if full else None,
        next_before_id=found[-1].id if full else None,
    )


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


# ---------------------------------------------------------------- retention


async def prune_expired(
    pool: Pool,
    retention: RetentionSettings,
    now: datetime | None = None,
    stale_credential_seconds: float = DEFAULT_STALE_CREDENTIAL_SECONDS,
) -> dict[str, int]:
    """Delete the registration decisions and audit events past their keep time (a table
    kept for 0 days is kept forever), expired console sessions and deleted devices
    remembered longer than ``stale_credential_seconds``, batch after batch until none is
    left; return the rows deleted per table."""
    at = now or datetime.now(UTC)
    deleted: dict[str, int] = {}
    keep: tuple[tuple[retention_db.Table, int], ...] = (
        ("registration_decisions", retention.decisions_days),
        ("operator_audit_events", retention.audit_days),
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


# ---------------------------------------------------------------- API keys


async def list_api_keys(pool: Pool, account: Account) -> list[ApiKey]:
    return await accounts.list_api_keys(pool, account.id)


def api_key_request(body: dict[str, Any]) -> tuple[str, bool]:
    """The (label, read_only) a ``POST /v1/api-keys`` body asks for; InvalidInput naming the
    field for an unknown field (``readonly`` must never leave a full key), a label that is
    not up to 100 printable ASCII characters or only spaces, a read_only not a boolean."""
    refuse_unknown_fields(body, ("label", "read_only"), what="an API key")
    label = body.get("label", "")
    if not isinstance(label, str):
        raise InvalidInput("label must be a string", field="label", rule="type=string")
    if len(label) > 100 or not label.isascii() or not label.isprintable() or (label and not label.strip()):
        raise InvalidInput(
            "label must be up to 100 printable ASCII characters, not only spaces",
            field="label",
            rule="max_length=100",
        )
    read_only = body.get("read_only", False)
    if not isinstance(read_only, bool):
        raise InvalidInput("read_only must be true or false", field="read_only", rule="type=boolean")
    return label, read_only


async def create_api_key(
    pool: Pool, account: Account, body: dict[str, Any], *, max_active: int | None = None
) -> IssuedApiKey:
    label, read_only = api_key_request(body)
    return await accounts.create_api_key(pool, account, label, read_only=read_only, max_active=max_active)


async def revoke_api_key(pool: Pool, account: Account, key_id: str) -> None:
    await accounts.revoke_api_key(pool, account, key_id)


# ---------------------------------------------------------------- webhooks

WEBHOOK_FIELDS = ("url", "events")
RESOLVE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class IssuedWebhook:
    """A webhook just created: its signing secret exists in clear only here, once."""

    webhook: Webhook
    secret: str


@dataclass(frozen=True)
class DeliveryPage:
    deliveries: list[Delivery]
    next_before: datetime | None
    next_before_id: str | None


async def _check_addresses(target: webhook_rules.Target, allow_private: bool) -> None:
    """Refuse a URL whose host is, or resolves to, an address webhooks may not call (the
    notifier checks again before every connection: a DNS answer may change).

    With private addresses refused, a name that does not resolve and a name that resolves
    to a refused address get one answer (:func:`webhook_rules.name_refusal`): two answers
    would tell a caller which internal names exist. Resolving here, rather than only at
    delivery, tells an honest operator of a typo at once; the answer is the same either way."""
    literal = target.literal
    if literal is not None:
        refusal = webhook_rules.address_refusal(str(literal), allow_private=allow_private)
        if refusal is not None:  # the caller wrote the address: saying what it is tells nothing new
            raise InvalidInput(f"url: {refusal}", field="url", rule="public-address")
        return
    try:
        found = await asyncio.wait_for(
            asyncio.get_running_loop().getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM),
            timeout=RESOLVE_TIMEOUT_S,
        )
    except (OSError, TimeoutError, UnicodeError, ValueError) as exc:
        if allow_private:  # every address may be called: there is nothing to hide
            raise InvalidInput(
                f"url: the host {target.host} cannot be resolved", field="url", rule="resolvable-host"
            ) from exc
        raise InvalidInput(
            f"url: {webhook_rules.name_refusal(target.host)}", field="url", rule="public-address"
        ) from None
    for info in found:
        if webhook_rules.address_refusal(str(info[4][0]), allow_private=allow_private) is not None:
            raise InvalidInput(
                f"url: {webhook_rules.name_refusal(target.host)}", field="url", rule="public-address"
            )


async def create_webhook(
    pool: Pool,
    account: Account,
    body: dict[str, Any],
    *,
    secret_key: Secret,
    allow_private: bool,
    max_webhooks: int,
) -> IssuedWebhook:
    """A webhook for ``body`` (``url``, ``events``), with a new signing secret sealed at rest."""
    refuse_unknown_fields(body, WEBHOOK_FIELDS, what="a webhook")
    url, target = webhook_rules.checked_url(body.get("url"))
    events = webhook_rules.checked_events(body.get("events"))
    await _check_addresses(target, allow_private)
    webhook_id = webhooks.new_webhook_id()
    secret = webhook_rules.new_secret()
    sealed = webhook_rules.SecretBox(secret_key.reveal().encode()).seal(webhook_id, secret)
    created = await webhooks.create_webhook(
        pool, account, webhook_id, url, events, sealed, host=target.host, max_per_account=max_webhooks
    )
    return IssuedWebhook(created, secret)


async def list_webhooks(pool: Pool, account: Account) -> list[Webhook]:
    return await webhooks.list_webhooks(pool, account.id)


async def get_webhook(pool: Pool, account: Account, webhook_id: str) -> Webhook:
    return await webhooks.get_webhook(pool, account.id, webhook_id)


async def delete_webhook(pool: Pool, account: Account, webhook_id: str) -> None:
    await webhooks.delete_webhook(pool, account, webhook_id)


async def enable_webhook(pool: Pool, account: Account, webhook_id: str) -> Webhook:
    """Enable a webhook the notifier disabled (410 Gone, or failing for days); one that is
    enabled stays as it is. NotFound for another account's."""
    return await webhooks.enable_webhook(pool, account, webhook_id)


async def list_webhook_deliveries(
    pool: Pool, account: Account, webhook_id: str, query: dict[str, str], *, page_limit_max: int
) -> DeliveryPage:
    """A webhook's deliveries with their attempts, newest first; ``before`` pages back."""
    _only(query, ("limit", "before", "before_id"))
    limit = _page_limit(query, page_limit_max)
    before, before_id = _before(query)
    found = await webhooks.list_deliveries(
        pool, account.id, webhook_id, limit=limit, before=before, before_id=before_id
    )
    full = len(found) == limit
    return DeliveryPage(
        found,
        next_before=found[-1].created_at if full else None,
        next_before_id=found[-1].id if full else None,
    )


# ---------------------------------------------------------------- console sessions


async def console_account(pool: Pool, key_id: str) -> Account | None:
    """The account a console session acts for, through its key; None once the key is revoked."""
    return await accounts.account_for_key_id(pool, key_id)


async def console_sign_in(pool: Pool, key: str) -> Account:
    """The account of the key an operator signs in with (Unauthorized otherwise)."""
    account = await accounts.account_for_key(pool, key)
    if account is None:
        raise Unauthorized("unknown or revoked API key", field="api_key")
    return account


async def load_console_session(pool: Pool, digest: bytes) -> str | None:
    return await console_sessions.load(pool, digest)


async def create_console_session(
    pool: Pool, digest: bytes, account_id: str, key_id: str, data: str, expires_at: datetime
) -> None:
    await console_sessions.create(pool, digest, account_id, key_id, data, expires_at)


async def update_console_session(pool: Pool, digest: bytes, data: str) -> bool:
    return await console_sessions.update(pool, digest, data)


async def end_console_session(pool: Pool, digest: bytes) -> None:
    await console_sessions.delete(pool, digest)


# ---------------------------------------------------------------- console: the live storm view

# The live view's window and how long a decision may wait for its provisioning files
# before the pipeline is called degraded (a healthy pipeline takes milliseconds).
STORM_WINDOW_MIN_S = 10
STORM_WINDOW_MAX_S = 600
STORM_WAITING_S = 5.0
STORM_SERIES = ("registered", "provisioned", "clones", "refused", "online")


@dataclass(frozen=True)
class StormSecond:
    """One second of the account's storm: new devices registered, devices provisioned
    (confirmed their files), clones detected, requests refused (decided in that second),
    and devices online at its end (shared.domain.devices.is_online)."""

    second: datetime
    registered: int = 0
    provisioned: int = 0
    clones: int = 0
    refused: int = 0
    online: int = 0


@dataclass(frozen=True)
class Storm:
    """The last ``window_s`` seconds, oldest first (one entry per second, zeros included),
    the totals of the window (``online``: at its end), and the decisions of the window
    still waiting for their provisioning files after STORM_WAITING_S seconds."""

    seconds: list[StormSecond]
    totals: dict[str, int]
    waiting: int
    oldest_waiting_s: float | None


def storm_window(query: dict[str, str]) -> int:
    """The ``seconds`` query parameter (default 120), between STORM_WINDOW_MIN_S and
    STORM_WINDOW_MAX_S (InvalidInput otherwise)."""
    raw = query.get("seconds", "120")
    if not raw.isascii() or not raw.isdigit() or not STORM_WINDOW_MIN_S <= int(raw) <= STORM_WINDOW_MAX_S:
        raise InvalidInput(
            f"seconds must be a whole number from {STORM_WINDOW_MIN_S} to {STORM_WINDOW_MAX_S}",
            field="seconds",
        )
    return int(raw)


async def live_storm(
    pool: Pool, account: Account, window_s: int, online_ttl_s: float, now: datetime | None = None
) -> Storm:
    """The account's storm over the last ``window_s`` whole seconds up to ``now``; never
    another account's rows (both statements are bounded by the account: shared.db.storm)."""
    now = now or datetime.now(UTC)
    last = int(now.timestamp())
    first = last - window_s + 1
    start = datetime.fromtimestamp(first, UTC)
    counts = await storm.decisions_per_second(
        pool, account.id, start, now, now - timedelta(seconds=STORM_WAITING_S)
    )
    spans = await storm.devices_per_second(
        pool, account.id, first, last, online_ttl_s, online_cutoff(start, online_ttl_s)
    )
    return tally_storm(first, last, counts, spans, now)


def tally_storm(
    first: int, last: int, counts: list[storm.DecisionCount], spans: list[storm.DeviceSpan], now: datetime
) -> Storm:
    """The per-second series from the repository's groups: decisions are counted in their
    second; online devices by a difference array over [came, gone) (one pass, however many
    devices)."""
    size = last - first + 1
    series = {name: [0] * size for name in STORM_SERIES}
    kind = {"new": "registered", "clone": "clones", "refused": "refused"}
    waiting = 0
    oldest: datetime | None = None
    for c in counts:
        name = kind.get(c.decision)
        if name is not None and first <= c.second <= last:
            series[name][c.second - first] += c.count
        waiting += c.waiting
        if c.oldest_waiting is not None and (oldest is None or c.oldest_waiting < oldest):
            oldest = c.oldest_waiting
    delta = [0] * (size + 1)
    for s in spans:
        if s.provisioned_second is not None and first <= s.provisioned_second <= last:
            series["provisioned"][s.provisioned_second - first] += s.count
        came, gone = max(s.came, first), min(s.gone, last + 1)
        if s.disabled or gone <= came or came > last:
            continue
        delta[came - first] += s.count
        delta[gone - first] -= s.count
    running = 0
    for i in range(size):
        running += delta[i]
        series["online"][i] = running
    seconds = [
        StormSecond(
            datetime.fromtimestamp(first + i, UTC), **{name: series[name][i] for name in STORM_SERIES}
        )
        for i in range(size)
    ]
    totals = {name: sum(series[name]) for name in STORM_SERIES if name != "online"}
    totals["online"] = series["online"][-1]
    return Storm(seconds, totals, waiting, (now - oldest).total_seconds() if oldest is not None else None)


@dataclass(frozen=True)
class Probe:
    """One pipeline service's readiness: ``ok`` when its /readyz answered 200 in time;
    ``problem`` says what went wrong otherwise."""

    url: str
    ok: bool
    problem: str = ""


@dataclass(frozen=True)
class PipelineHealth:
    """healthy when every probe is ok and no decision waits too long; else degraded, with
    one reason per problem (in words an operator can act on)."""

    probes: list[Probe]
    reasons: list[str]

    @property
    def healthy(self) -> bool:
        return not self.reasons


async def probe_readiness(session: aiohttp.ClientSession, url: str, timeout_s: float) -> Probe:
    """GET ``url`` (a /readyz); never raises: a timeout or refused connection is a failed probe."""
    try:
        async with session.get(
            url, timeout=aiohttp.ClientTimeout(total=timeout_s), allow_redirects=False
        ) as response:
            if response.status == 200:
                return Probe(url, True)
            return Probe(url, False, f"answered {response.status}")
    except TimeoutError:
        return Probe(url, False, f"no answer within {timeout_s:g} s")
    except aiohttp.ClientError as exc:
        return Probe(url, False, f"unreachable ({type(exc).__name__})")


# How long the pipeline's probes are reused: the live view refreshes every second, and any
# number of tabs, sessions and accounts then costs each pipeline service at most one
# /readyz a second from each operator instance (1,145 refreshes in 20 s from one session
# were 3,435 probes).
PIPELINE_HEALTH_SECONDS = 1.0
# Longer than a service's own bound on its database check (shared.http.READINESS_TIMEOUT_SECONDS,
# 2 s): a silent registry then shows as "database: false" from the service's answer, not as
# a probe that timed out with no reason.
PIPELINE_PROBE_TIMEOUT_SECONDS = 2.5


async def probe_pipeline(
    session: aiohttp.ClientSession | None,
    urls: tuple[str, ...],
    timeout_s: float = PIPELINE_PROBE_TIMEOUT_SECONDS,
) -> tuple[Probe, ...]:
    """Each readiness URL probed at once (``timeout_s`` each); never raises. Counted in
    ``fleetreg_pipeline_health_checks_total``: the console shares one result a second
    (services/operator/resources.py)."""
    PIPELINE_HEALTH_CHECKS.inc()
    if session is None or not urls:
        return ()
    return tuple(await asyncio.gather(*(probe_readiness(session, url, timeout_s) for url in urls)))


def pipeline_health(probes: Sequence[Probe], storm_now: Storm) -> PipelineHealth:
    """The pipeline's readiness (``probes``, from :func:`probe_pipeline`) and, from the
    account's own storm, its decisions waiting for provisioning: never another account's."""
    reasons = [f"{_service_name(p.url)} is not ready: {p.problem}" for p in probes if not p.ok]
    if storm_now.waiting:
        oldest = f" (the oldest for {storm_now.oldest_waiting_s:.0f} s)" if storm_now.oldest_waiting_s else ""
        reasons.append(
            f"{storm_now.waiting} registration{'s' if storm_now.waiting != 1 else ''} waiting for "
            f"provisioning longer than {STORM_WAITING_S:g} s{oldest}"
        )
    return PipelineHealth(list(probes), reasons)


def _service_name(url: str) -> str:
    """host:port of a probe URL: the operator knows the services by where they run."""
    return urlsplit(url).netloc or url
