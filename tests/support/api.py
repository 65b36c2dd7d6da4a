"""Thin helpers to drive the public APIs from tests, as a device or an operator would."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any

import aiohttp

from shared.db import accounts
from shared.db.pool import Pool


@dataclass
class Operator:
    session: aiohttp.ClientSession
    url: str
    api_key: str
    account_id: str

    async def call(self, method: str, path: str, body: Any = None, expect: int | None = None) -> Any:
        headers = {"Authorization": f"Bearer {self.api_key}"}
        async with self.session.request(method, self.url + path, json=body, headers=headers) as response:
            payload = await response.json()
            if expect is not None:
                assert response.status == expect, (response.status, payload)
            return payload

    async def product(self, services: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """A locked product with an active auto registration; returns the registration."""
        product = await self.call(
            "POST",
            "/v1/products",
            {"name": f"p-{uuid.uuid4().hex[:8]}", "services": services or [{"type": "ssh", "port": 22}]},
            expect=201,
        )
        await self.call("POST", f"/v1/products/{product['id']}/lock", expect=200)
        registration: dict[str, Any] = await self.call(
            "POST", "/v1/auto-registrations", {"product_id": product["id"]}, expect=201
        )
        return registration

    async def devices(self, **query: str) -> list[dict[str, Any]]:
        params = "&".join(f"{k}={v}" for k, v in query.items())
        page = await self.call("GET", f"/v1/devices?limit=1000&{params}", expect=200)
        return list(page["devices"])


async def new_operator(session: aiohttp.ClientSession, pool: Pool, url: str) -> Operator:
    account, key = await accounts.create_account(pool, f"acct-{uuid.uuid4().hex[:10]}")
    return Operator(session, url, key, account.id)


@dataclass
class DeviceAnswer:
    status: int
    body: dict[str, Any]


async def register(
    session: aiohttp.ClientSession,
    device_url: str,
    code: str,
    hardware_id: str,
    *,
    cpu_id: str = "",
    mac: str = "",
    secret: str = "",
    key: str = "",
    idempotency_key: str = "",
    registration_key: str = "",
    settle: bool = True,
    include: str = "",
) -> DeviceAnswer:
    """Register as a device; with ``settle`` poll a pending answer until it is final;
    ``include`` is sent as the ``include`` query flag of the call and of every poll."""
    body: dict[str, Any] = {"bulk_identification_code": code, "hardware_id": hardware_id}
    if cpu_id or mac:
        body["fingerprint"] = {"cpu_id": cpu_id, "mac": mac}
    if secret:
        body["device_secret"] = secret
    if registration_key:
        body["registration_key"] = registration_key
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    query = f"?include={include}" if include else ""
    deadline = time.monotonic() + 90
    while True:  # 503: a part is unreachable for a moment; the device tries again, as a real one would
        async with session.post(
            f"{device_url}/v1/registrations{query}", json=body, headers=headers
        ) as response:
            answer = DeviceAnswer(response.status, await response.json())
        if answer.status != 503 or not settle or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    request_id = answer.body.get("request_id")
    while (
        settle
        and time.monotonic() < deadline
        and (
            answer.body.get("status") == "pending" or answer.status == 503  # 503: registry unreachable, retry
        )
    ):
        await asyncio.sleep(0.3)
        async with session.get(f"{device_url}/v1/registrations/{request_id}{query}") as response:
            answer = DeviceAnswer(response.status, await response.json())
    return answer


async def provision(
    session: aiohttp.ClientSession, device_url: str, answer: dict[str, Any]
) -> dict[str, Any]:
    """Download the manifest and every file (checking digests), then confirm (ready)."""
    import hashlib

    auth = {"Authorization": f"Bearer {answer['device_secret']}"}
    async with session.get(f"{device_url}/v1/devices/{answer['device_id']}/manifest", headers=auth) as r:
        assert r.status == 200, await r.text()
        manifest: dict[str, Any] = await r.json()
    for item in manifest["files"]:
        async with session.get(item["url"], headers=auth) as r:
            content = await r.read()
        assert r.status == 200
        assert len(content) == item["size"]
        assert hashlib.sha256(content).hexdigest() == item["sha256"]
    async with session.post(f"{device_url}/v1/devices/{answer['device_id']}/ready", headers=auth) as r:
        assert r.status == 202
    return manifest
