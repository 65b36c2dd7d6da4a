"""Devices: the search and its export, one device with its history, and the operator's
changes to one device or to many at once (disable, enable, reset, delete, move, rename)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from services.operator.handlers.query import only, page_limit
from shared.db import audit, certificates, devices
from shared.db.audit import AuditEvent
from shared.db.devices import Device, DeviceChange, DeviceHistoryEntry
from shared.db.devices import DeviceAction as DeviceAction  # the routes name the actions
from shared.db.pool import Pool
from shared.domain.accounts import Account
from shared.domain.credentials import Keyring
from shared.domain.device_search import (
    PAGE_PARAMETERS,
    SEARCH_PARAMETERS,
    Cursor,
    DeviceSearch,
    decode_cursor,
    encode_cursor,
    parse_search,
    sort_value,
)
from shared.domain.devices import ShownState, online_cutoff, shown_state
from shared.domain.identifiers import is_uuid, validate_device_name
from shared.domain.inputs import refuse_unknown_fields
from shared.errors import InvalidInput

# Device IDs one batch action takes: one transaction, an answer of bounded size.
BATCH_MAX_IDS = 1000
# Operator actions shown with a device: the newest; the whole trail is /v1/audit-events.
DEVICE_AUDIT_EVENTS = 50
EXPORT_FORMATS = ("csv", "jsonl")
MOVE_FIELDS = ("product_id",)
RENAME_FIELDS = ("name",)


@dataclass(frozen=True)
class Fleet:
    """One account's devices as a handler reads and changes them: the registry, the account
    acting, the online TTL in seconds that a device's shown state follows
    (shared.domain.devices.shown_state) and the moment shown (``now``: the time of the call
    when None, one moment for a whole answer)."""

    pool: Pool
    account: Account
    online_ttl_s: float
    now: datetime | None = None

    def moment(self) -> datetime:
        return self.now or datetime.now(UTC)


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
    certificate: certificates.IssuedCertificate | None = None  # its newest, revoked or not


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
    fleet: Fleet, query: dict[str, str], *, page_limit_max: int, count_exact_max: int
) -> DevicePage:
    """A page of the account's devices matching the query's filters, in its sort order
    (shared.domain.device_search), with the total count of matches; the state filter and
    the states shown follow one rule (shared.domain.devices) at one moment, ``fleet.now``.
    Unknown parameters, bad values and a cursor of another sort are InvalidInput."""
    only(query, (*SEARCH_PARAMETERS, *PAGE_PARAMETERS))
    search = parse_search(query)
    limit = page_limit(query, page_limit_max)
    after = decode_cursor(search, query["after"]) if query.get("after") else None
    at = fleet.moment()
    cutoff = online_cutoff(at, fleet.online_ttl_s)
    account_id = fleet.account.id
    found = await devices.search_devices(
        fleet.pool, account_id, search, online_cutoff=cutoff, after=after, limit=limit
    )
    count = await devices.count_devices(
        fleet.pool, account_id, search, online_cutoff=cutoff, exact_max=count_exact_max
    )
    return DevicePage(
        devices=[_shown(d, at, fleet.online_ttl_s) for d in found],
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
    only(query, (*SEARCH_PARAMETERS, "format"))
    chosen = query.get("format") or "csv"
    if chosen not in EXPORT_FORMATS:
        raise InvalidInput(f"format must be one of {', '.join(EXPORT_FORMATS)}", field="format", rule="enum")
    return chosen


@contextlib.asynccontextmanager
async def export_devices(
    fleet: Fleet, query: dict[str, str]
) -> AsyncIterator[Callable[[], AsyncIterator[list[ShownDevice]]]]:
    """A reader of every device of the account matching the query's filters (no page size,
    no cursor), in its sort order, as batches: each call reads one snapshot of the
    registry, the same for every call, with bounded memory, and shows it as of one instant
    (repositories ``export_devices``). The query is validated before anything is read."""
    export_format(query)
    search = parse_search(query)
    at, ttl = fleet.moment(), fleet.online_ttl_s
    async with devices.export_devices(
        fleet.pool, fleet.account.id, search, online_cutoff=online_cutoff(at, ttl)
    ) as batches:

        async def shown() -> AsyncIterator[list[ShownDevice]]:
            async for batch in batches():
                yield [_shown(d, at, ttl) for d in batch]

        yield shown


async def get_device(fleet: Fleet, device_id: str) -> DeviceDetail:
    device = await devices.get_device(fleet.pool, fleet.account.id, device_id)
    history = await devices.device_history(fleet.pool, device.id)
    trail = await audit.list_events(
        fleet.pool, fleet.account.id, audit.AuditFilter(target_id=device.id), limit=DEVICE_AUDIT_EVENTS
    )
    certificate = await certificates.current_certificate(fleet.pool, device.id)
    return DeviceDetail(_shown(device, fleet.moment(), fleet.online_ttl_s), history, trail, certificate)


async def change_device(fleet: Fleet, device_id: str, action: DeviceAction) -> DeviceDetail:
    """Disable, enable or reset one device (an unknown one is not found; a disabled one
    cannot be reset); the device as it is then."""
    await devices.change_device(fleet.pool, fleet.account, device_id, action)
    return await get_device(fleet, device_id)


async def delete_device(fleet: Fleet, device_id: str) -> ShownDevice:
    """Decommission one device: its hardware ID is free again; the device as it was."""
    before = await devices.get_device(fleet.pool, fleet.account.id, device_id)
    await devices.change_device(fleet.pool, fleet.account, device_id, "delete")
    return _shown(before, fleet.moment(), fleet.online_ttl_s)


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


async def move_device(fleet: Fleet, device_id: str, body: dict[str, Any]) -> DeviceDetail:
    """Move one device to another product of the account, reset for re-provisioning there
    (repositories ``move_device``: NotFound, Conflict); the device as it is then."""
    product_id = move_request(body)
    await devices.move_device(fleet.pool, fleet.account, device_id, product_id)
    return await get_device(fleet, device_id)


async def rename_device(fleet: Fleet, keyring: Keyring, device_id: str, body: dict[str, Any]) -> DeviceDetail:
    """Rename one device (its files rendered again with the name, the service passwords
    derived with ``keyring``; credentials untouched: repositories ``rename_device``;
    NotFound); the device as it is then."""
    name = rename_request(body)
    await devices.rename_device(fleet.pool, fleet.account, keyring, device_id, name)
    return await get_device(fleet, device_id)


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


async def change_devices(fleet: Fleet, body: dict[str, Any], action: DeviceAction) -> DeviceChanges:
    """Disable, enable, reset or delete many devices in one transaction; one result per
    ID, in order: the outcome and the device as it is now (as it was, for a device
    deleted; None when not found in this account)."""
    ids = _device_ids(body)
    pool, account = fleet.pool, fleet.account
    before = await devices.devices_by_id(pool, account.id, ids) if action == "delete" else {}
    changes = await devices.change_devices(pool, account, ids, action)
    found = {**before, **await devices.devices_by_id(pool, account.id, ids)}
    at = fleet.moment()
    return DeviceChanges(
        action,
        [
            (c, _shown(found[c.device_id], at, fleet.online_ttl_s) if c.device_id in found else None)
            for c in changes
        ],
    )
