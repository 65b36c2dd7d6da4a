"""Scoped API keys and the operator audit trail, through the running services.

A read-only key (the viewer role) is refused (403) on every operation either API documents
above a viewer's (``x-fleetreg-role``: every state-changing one but making a key of its own
role; the list is read from the served OpenAPI documents, so an operation added later is
covered without editing this test), changes nothing, and never sees a code. Every role
against every route: tests/e2e/test_role_matrix.py. The audit
trail records each change once with the key that made it, and only for its account."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
import yaml

from tests.support.api import Operator
from tests.support.system import System

pytestmark = pytest.mark.e2e

WRITE_METHODS = ("post", "put", "patch", "delete")


async def _operations(session: aiohttp.ClientSession, url: str) -> list[tuple[str, str]]:
    """The state-changing operations above a viewer's role."""
    async with session.get(f"{url}/openapi.yaml") as response:
        document = yaml.safe_load(await response.text())
    return [
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in WRITE_METHODS and operation.get("x-fleetreg-role") != "viewer"
    ]


async def _read_only(operator: Operator) -> Operator:
    issued = await operator.call(
        "POST", "/v1/api-keys", {"label": "dashboard", "read_only": True}, expect=201
    )
    assert issued["read_only"] is True
    return Operator(operator.session, operator.url, issued["api_key"], operator.account_id)


async def _audit(operator: Operator, **query: str) -> list[dict[str, Any]]:
    page = await operator.call("GET", "/v1/audit-events?" + "&".join(f"{k}={v}" for k, v in query.items()))
    assert "audit_events" in page, page
    return list(page["audit_events"])


async def test_a_read_only_key_is_refused_every_change_and_changes_nothing(
    system: System, operator: Operator, session: aiohttp.ClientSession
) -> None:
    registration = await operator.product()
    product_id = registration["product_id"]
    reader = await _read_only(operator)
    keys = (await operator.call("GET", "/v1/api-keys", expect=200))["api_keys"]
    full_key_id = next(k["id"] for k in keys if not k["read_only"])
    before_audit = await _audit(operator, limit="1000")
    before_product = await operator.call("GET", f"/v1/products/{product_id}", expect=200)
    fill = {
        "product_id": product_id,
        "registration_id": registration["id"],
        "key_id": full_key_id,  # a read-only key must not revoke the full key
    }
    refused = []
    for url in (system.operator_url, system.bulk_url):
        for method, path in await _operations(session, url):
            concrete = path
            for name in [p.strip("{}") for p in path.split("/") if p.startswith("{")]:
                concrete = concrete.replace("{" + name + "}", fill.get(name, str(uuid.uuid4())))
            headers = {"Authorization": f"Bearer {reader.api_key}"}
            async with session.request(method, url + concrete, json={}, headers=headers) as response:
                body = await response.json()
                assert response.status == 403, (method, path, response.status, body)
                assert (body["error"], body["rule"]) == ("forbidden", "scope=read-only"), body
            refused.append((method, path))

    assert len(refused) >= 12  # the operator API's changes and the bulk API's upload and publish
    # Revoking is a viewer's route for its own keys: the full key is another's, an admin's to revoke.
    others = await reader.call("DELETE", f"/v1/api-keys/{full_key_id}", expect=403)
    assert (others["field"], others["rule"]) == ("key_id", "role>=admin"), others
    assert ("POST", "/v1/bulk-registrations") in refused
    assert await _audit(operator, limit="1000") == before_audit
    assert await operator.call("GET", f"/v1/products/{product_id}", expect=200) == before_product
    assert [k["revoked_at"] for k in (await operator.call("GET", "/v1/api-keys"))["api_keys"]] == [None, None]


async def test_a_read_only_key_reads_everything_but_never_a_code(operator: Operator) -> None:
    registration = await operator.product()
    reader = await _read_only(operator)

    product = await reader.call("GET", f"/v1/products/{registration['product_id']}", expect=200)
    listed = (await reader.call("GET", "/v1/products", expect=200))["products"][0]
    auto = await reader.call("GET", f"/v1/auto-registrations/{registration['id']}", expect=200)
    autos = (await reader.call("GET", "/v1/auto-registrations", expect=200))["auto_registrations"][0]
    for shown in (product, listed):
        assert (shown["bulk_identification_code"], shown["product_code"]) == ("********", "********")
    assert auto["bulk_identification_code"] == autos["bulk_identification_code"] == "********"
    code = registration["bulk_identification_code"]
    for path in (
        "/v1/devices",
        "/v1/audit-events",
        "/v1/api-keys",
        "/v1/registration-decisions",
        "/v1/account",
    ):
        assert code not in str(await reader.call("GET", path, expect=200)), path
    assert (await operator.call("GET", f"/v1/auto-registrations/{registration['id']}"))[
        "bulk_identification_code"
    ] == code  # the full key still sees it


async def test_each_change_is_audited_once_with_its_key_and_pages_newest_first(
    operator: Operator, pool: Any, session: aiohttp.ClientSession, system: System
) -> None:
    start = datetime.now(UTC) - timedelta(seconds=1)
    registration = await operator.product()
    path = f"/v1/auto-registrations/{registration['id']}"
    await operator.call("PATCH", path, {"max_devices": 5}, expect=200)
    await operator.call("POST", f"{path}/pause", expect=200)
    await operator.call("POST", f"{path}/resume", expect=200)
    await operator.call("POST", f"{path}/rotate-code", expect=200)
    issued = await operator.call("POST", "/v1/api-keys", {"label": "ci"}, expect=201)
    await operator.call("DELETE", f"/v1/api-keys/{issued['id']}", expect=200)
    await operator.call("POST", f"{path}/pause", {}, expect=200)
    keys = (await operator.call("GET", "/v1/api-keys"))["api_keys"]
    first = next(k for k in keys if k["label"] == "first key")

    mine = await _audit(operator, target_id=registration["id"], limit="1000")
    assert [e["action"] for e in reversed(mine)] == [
        "auto_registration.created",
        "auto_registration.quota_changed",
        "auto_registration.paused",
        "auto_registration.resumed",
        "auto_registration.code_rotated",
        "auto_registration.paused",
    ]
    assert {(e["api_key_id"], e["api_key_label"]) for e in mine} == {(first["id"], "first key")}
    assert mine[-2]["changes"] == {"max_devices": {"from": None, "to": 5}}
    # Filters: one action, a time range, the key; paging with the cursor reaches every event once.
    paused = await _audit(operator, action="auto_registration.paused")
    assert len(paused) == 2
    assert await _audit(operator, since=quote_time(datetime.now(UTC) + timedelta(minutes=1))) == []
    everything = await _audit(operator, since=quote_time(start), api_key_id=first["id"], limit="1000")
    paged: list[dict[str, Any]] = []
    query = {"limit": "3", "since": quote_time(start)}
    while True:
        page = await operator.call(
            "GET", "/v1/audit-events?" + "&".join(f"{k}={v}" for k, v in query.items())
        )
        paged.extend(page["audit_events"])
        if page["next_before"] is None:
            break
        query.update(
            before=quote_time(datetime.fromisoformat(page["next_before"])), before_id=page["next_before_id"]
        )
    assert [e["id"] for e in paged] == [e["id"] for e in everything]
    # Each change once (the product's own creation and lock are recorded as product.*).
    assert sorted(e["action"] for e in everything if not e["action"].startswith("product.")) == sorted(
        [e["action"] for e in mine] + ["api_key.created", "api_key.revoked"]
    )
    assert registration["bulk_identification_code"] not in str(everything)
    assert issued["api_key"] not in str(everything)
    # Another account sees none of it, even by target.
    stranger = Operator(operator.session, operator.url, *(await _stranger(pool)))
    assert await _audit(stranger, target_id=registration["id"]) == []


def quote_time(when: datetime) -> str:
    return when.isoformat().replace("+", "%2B")


async def _stranger(pool: Any) -> tuple[str, str]:
    from shared.db import accounts

    account, key = await accounts.create_account(pool, f"acct-{uuid.uuid4().hex[:10]}")
    return key, account.id


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("action=DROP%20TABLE", "action"),
        ("since=yesterday", "since"),
        ("until=2026-13-01", "until"),
        ("api_key_id=x", "api_key_id"),
        ("target_id=a%00b", "target_id"),
        ("target_id=" + "x" * 201, "target_id"),
        ("before_id=" + str(uuid.uuid4()), "before_id"),
        ("limit=0", "limit"),
        ("category=x", "category"),
    ],
)
async def test_bad_audit_queries_name_the_parameter(operator: Operator, query: str, field: str) -> None:
    answer = await operator.call("GET", f"/v1/audit-events?{query}", expect=400)
    assert answer["field"] == field, answer
