"""The operator API's business logic: plain functions of the account and validated input."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from shared.db import accounts, alerts, decisions, devices, products
from shared.db.accounts import Account
from shared.db.pool import Pool
from shared.domain.identifiers import is_uuid, validate_hardware_id
from shared.domain.products import validate_product, validate_service
from shared.errors import InvalidInput

AUTO = "auto"
# The column's range (a Postgres integer): a larger quota is no quota, so it is refused.
MAX_DEVICES_LIMIT = 2_147_483_647
# Device IDs one batch action takes: one transaction, an answer of bounded size.
BATCH_MAX_IDS = 1000


async def create_product(pool: Pool, account: Account, body: dict[str, Any]) -> dict[str, Any]:
    name, services = validate_product(body)
    return await products.create_product(pool, account.id, name, services)


async def add_service(pool: Pool, account: Account, product_id: str, body: dict[str, Any]) -> dict[str, Any]:
    return await products.add_service(pool, account.id, product_id, validate_service(body, 0))


async def create_auto_registration(pool: Pool, account: Account, body: dict[str, Any]) -> dict[str, Any]:
    product_id = body.get("product_id")
    if not isinstance(product_id, str) or not product_id:
        raise InvalidInput("product_id is required", field="product_id", rule="required")
    if not is_uuid(product_id):
        raise InvalidInput("product_id is not a product ID", field="product_id", rule="format=uuid")
    max_devices = _max_devices(body.get("max_devices")) if "max_devices" in body else None
    registration_id = await products.create_registration(
        pool, account.id, product_id, AUTO, "active", max_devices
    )
    return await products.get_registration(pool, account.id, AUTO, registration_id)


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


async def update_auto_registration(
    pool: Pool, account: Account, registration_id: str, body: dict[str, Any]
) -> dict[str, Any]:
    """Change an auto registration's settings: ``max_devices`` (null clears the quota)."""
    unknown = sorted(set(body) - {"max_devices"})
    if unknown:
        raise InvalidInput(
            f"{unknown[0]} cannot be changed here (only max_devices)", field=unknown[0], rule="unknown_field"
        )
    if "max_devices" not in body:
        raise InvalidInput("max_devices is required", field="max_devices", rule="required")
    await products.set_max_devices(pool, account.id, registration_id, _max_devices(body["max_devices"]))
    return await products.get_registration(pool, account.id, AUTO, registration_id)


async def change_auto_registration(
    pool: Pool, account: Account, registration_id: str, action: str
) -> dict[str, Any]:
    if action == "rotate-code":
        await products.rotate_code(pool, account.id, registration_id)
    else:
        status = {"pause": "paused", "resume": "active"}[action]
        await products.set_registration_status(pool, account.id, AUTO, registration_id, status)
    return await products.get_registration(pool, account.id, AUTO, registration_id)


def _only(query: dict[str, str], known: tuple[str, ...]) -> None:
    """Refuse a query parameter the listing does not know: silently ignored, a filter
    such as ``category_a=x`` would return everything."""
    unknown = sorted(set(query) - set(known))
    if unknown:
        raise InvalidInput(
            f"unknown query parameter {unknown[0]!r}: this listing takes {', '.join(known)}",
            field=unknown[0],
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


DEVICE_STATES = ("preregistered", "registered", "online", "offline", "disabled")


async def list_devices(
    pool: Pool, account: Account, query: dict[str, str], *, page_limit_max: int, online_ttl: float
) -> dict[str, Any]:
    _only(query, ("state", "hardware_id", "registration_id", "after", "limit"))
    state = _choice(query, "state", DEVICE_STATES)
    limit = _page_limit(query, page_limit_max)
    for name in ("after", "registration_id"):
        if query.get(name) and not is_uuid(query[name]):
            raise InvalidInput(f"{name} must be an ID", field=name, rule="format=uuid")
    found = await devices.list_devices(
        pool,
        account.id,
        state=state,
        hardware_id=validate_hardware_id(query["hardware_id"]) if query.get("hardware_id") else None,
        registration_id=query.get("registration_id") or None,
        after=query.get("after") or None,
        limit=limit,
        online_ttl=online_ttl,
    )
    return {"devices": found, "next_after": found[-1]["id"] if len(found) == limit else None}


async def create_api_key(pool: Pool, account: Account, body: dict[str, Any]) -> dict[str, Any]:
    label = body.get("label", "")
    if not isinstance(label, str) or len(label) > 100 or not label.isascii():
        raise InvalidInput("label must be up to 100 ASCII characters", field="label", rule="max_length=100")
    key_id, key = await accounts.create_api_key(pool, account.id, label)
    return {
        "id": key_id,
        "api_key": key,
        "label": label,
        "note": "shown once: store it now, it cannot be shown again",
    }


DECISIONS = ("new", "same", "clone", "refused")


def _before(query: dict[str, str]) -> tuple[datetime | None, str | None]:
    """The optional cursor of a newest-first listing: ``before`` (ISO 8601 time) and
    ``before_id`` (the last ID seen at that time, from ``next_before_id``)."""
    raw = query.get("before")
    before_id = query.get("before_id") or None
    if before_id is not None and not is_uuid(before_id):
        raise InvalidInput("before_id is not an ID", field="before_id", rule="format=uuid")
    if not raw:
        if before_id is not None:
            raise InvalidInput("before_id needs before", field="before_id", rule="requires=before")
        return None, None
    try:
        when = datetime.fromisoformat(raw)
        when = (when if when.tzinfo else when.replace(tzinfo=UTC)).astimezone(UTC)
    except ValueError as exc:
        raise InvalidInput(
            "before must be an ISO 8601 time", field="before", rule="format=date-time"
        ) from exc
    except OverflowError as exc:  # e.g. year 9999 with a negative offset: past what a time can hold
        raise InvalidInput(
            "before is out of range: years 1 to 9999 in UTC", field="before", rule="range=date-time"
        ) from exc
    return when, before_id


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
) -> dict[str, Any]:
    """The audit trail of registration decisions, newest first; ``before`` pages back."""
    decision, limit, before, before_id = _newest_first(query, "decision", DECISIONS, page_limit_max)
    found = await decisions.list_decisions(
        pool, account.id, decision=decision, before=before, limit=limit, before_id=before_id
    )
    full = len(found) == limit
    return {
        "decisions": [
            {
                "request_id": d.request_id,
                "decided_at": d.decided_at.isoformat(),
                "decision": d.decision,
                "reason": d.reason,
                "claimed_hardware_id": d.claimed_hardware_id,
                "assigned_hardware_id": d.assigned_hardware_id,
                "device_id": d.device_id,
                "product_id": d.product_id,
                "protocol": d.protocol,
            }
            for d in found
        ],
        "next_before": found[-1].decided_at.isoformat() if full else None,
        "next_before_id": found[-1].request_id if full else None,
    }


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
    pool: Pool, account: Account, body: dict[str, Any], action: devices.DeviceAction, *, online_ttl: float
) -> dict[str, Any]:
    """Disable or reset many devices in one transaction; one result per ID, in order: the
    outcome and the device as it is now (null when not found in this account)."""
    ids = _device_ids(body)
    changes = await devices.change_devices(pool, account.id, ids, action)
    now = await devices.devices_by_id(pool, account.id, ids, online_ttl)
    counts: dict[str, int] = {}
    for change in changes:
        counts[change.outcome] = counts.get(change.outcome, 0) + 1
    return {
        "action": action,
        "results": [
            {"id": c.device_id, "outcome": c.outcome, "device": now.get(c.device_id)} for c in changes
        ],
        "counts": counts,
    }


ALERT_KINDS = (alerts.BULK_KEY_GUESSING,)


async def list_security_alerts(
    pool: Pool, account: Account, query: dict[str, str], *, page_limit_max: int
) -> dict[str, Any]:
    """The account's security alerts, most recently seen first; ``before`` pages back."""
    kind, limit, before, before_id = _newest_first(query, "kind", ALERT_KINDS, page_limit_max)
    found = await alerts.list_alerts(
        pool, account.id, kind=kind, before=before, limit=limit, before_id=before_id
    )
    return {
        "security_alerts": [
            {
                "id": a.id,
                "kind": a.kind,
                "product_id": a.product_id,
                "hardware_id": a.hardware_id,
                "listed": a.listed,
                "wrong_keys": a.wrong_keys,
                "window_seconds": a.window_seconds,
                "first_seen_at": a.first_seen_at.isoformat(),
                "last_seen_at": a.last_seen_at.isoformat(),
            }
            for a in found
        ],
        "next_before": found[-1].last_seen_at.isoformat() if len(found) == limit else None,
        "next_before_id": found[-1].id if len(found) == limit else None,
    }
