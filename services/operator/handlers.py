"""The operator API's business logic: plain functions of the account and validated input."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from shared.db import accounts, devices, products
from shared.db.accounts import Account
from shared.db.pool import Pool
from shared.domain.identifiers import is_uuid
from shared.domain.products import validate_product, validate_service
from shared.errors import InvalidInput

AUTO = "auto"


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
    registration_id = await products.create_registration(pool, account.id, product_id, AUTO, "active")
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
    state = _choice(query, "state", DEVICE_STATES)
    limit = _page_limit(query, page_limit_max)
    for name in ("after", "registration_id"):
        if query.get(name) and not is_uuid(query[name]):
            raise InvalidInput(f"{name} must be an ID", field=name, rule="format=uuid")
    found = await devices.list_devices(
        pool,
        account.id,
        state=state,
        hardware_id=query.get("hardware_id") or None,
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


async def list_decisions(
    pool: Pool, account: Account, query: dict[str, str], *, page_limit_max: int
) -> dict[str, Any]:
    """The audit trail of registration decisions, newest first; ``before`` pages back."""
    decision = _choice(query, "decision", DECISIONS)
    limit = _page_limit(query, page_limit_max)
    before = None
    if query.get("before"):
        try:
            before = datetime.fromisoformat(query["before"])
        except ValueError as exc:
            raise InvalidInput(
                "before must be an ISO 8601 time", field="before", rule="format=date-time"
            ) from exc
    found = await devices.list_decisions(pool, account.id, decision=decision, before=before, limit=limit)
    return {"decisions": found, "next_before": found[-1]["decided_at"] if len(found) == limit else None}
