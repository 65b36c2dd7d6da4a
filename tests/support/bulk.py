"""Helpers for bulk registration tests: CSV files and the bulk API."""

from __future__ import annotations

import asyncio
import io
import uuid
from typing import Any

import aiohttp

from tests.support.api import Operator

HEADER = "REGISTRATION_KEY,HARDWARE_ID,DEVICE_NAME,CATEGORY_A,CATEGORY_B"


def csv_rows(count: int, *, prefix: str = "") -> list[tuple[str, str, str]]:
    """(registration key, hardware ID, name) of ``count`` distinct devices."""
    tag = prefix or uuid.uuid4().hex[:6]
    return [(f"key-{tag}-{i}", f"{tag}{i:06x}", f"Device {i}") for i in range(count)]


def csv_text(rows: list[tuple[str, str, str]], *, categories: tuple[str, str] = ("", "")) -> str:
    lines = [HEADER, *(f"{k},{h},{n},{categories[0]},{categories[1]}" for k, h, n in rows)]
    return "\r\n".join(lines) + "\r\n"


async def bulk_product(operator: Operator) -> str:
    product = await operator.call(
        "POST",
        "/v1/products",
        {"name": f"b-{uuid.uuid4().hex[:8]}", "services": [{"type": "ssh", "port": 22}]},
        expect=201,
    )
    await operator.call("POST", f"/v1/products/{product['id']}/lock", expect=200)
    return str(product["id"])


async def upload(
    session: aiohttp.ClientSession,
    bulk_url: str,
    operator: Operator,
    product_id: str,
    body: bytes,
    **hook: str,
) -> tuple[int, dict[str, Any]]:
    """Upload ``body`` as fleet.csv, with ``hook`` settings (``hook_url``, ...) as the query
    parameters they are."""
    async with session.post(
        f"{bulk_url}/v1/bulk-registrations",
        params={"product_id": product_id, "file_name": "fleet.csv", **hook},
        data=io.BytesIO(body),
        headers={"Authorization": f"Bearer {operator.api_key}", "Content-Type": "text/csv"},
    ) as response:
        return response.status, await response.json()


async def bulk_call(
    session: aiohttp.ClientSession, bulk_url: str, operator: Operator, method: str, path: str
) -> tuple[int, dict[str, Any]]:
    async with session.request(
        method, bulk_url + path, headers={"Authorization": f"Bearer {operator.api_key}"}
    ) as response:
        return response.status, await response.json()


async def publish_and_wait(
    session: aiohttp.ClientSession, bulk_url: str, operator: Operator, registration_id: str
) -> dict[str, Any]:
    """Publish a configured bulk registration and wait until its devices are preregistered."""
    status, body = await bulk_call(
        session, bulk_url, operator, "POST", f"/v1/bulk-registrations/{registration_id}/publish"
    )
    assert status == 202, body
    for _ in range(600):
        status, body = await bulk_call(
            session, bulk_url, operator, "GET", f"/v1/bulk-registrations/{registration_id}"
        )
        if body["status"] == "preregistered":
            return body
        await asyncio.sleep(0.1)
    raise AssertionError(f"not published: {body}")
