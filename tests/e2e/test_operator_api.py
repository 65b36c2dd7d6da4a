"""The operator API: authentication, products and codes, bad input, the audit trail."""

from __future__ import annotations

import asyncio
from urllib.parse import quote

import aiohttp
import pytest

from tests.support.api import Operator, register
from tests.support.system import System


async def test_every_call_needs_a_valid_api_key(system: System, session: aiohttp.ClientSession) -> None:
    for headers in ({}, {"Authorization": "Bearer frk_wrong"}, {"Authorization": "Basic x"}):
        async with session.get(f"{system.operator_url}/v1/products", headers=headers) as response:
            assert response.status == 401
            assert (await response.json())["error"] == "unauthorized"


async def test_a_revoked_key_stops_working(
    system: System, operator: Operator, session: aiohttp.ClientSession
) -> None:
    created = await operator.call("POST", "/v1/api-keys", {"label": "ci"}, expect=201)
    keys = (await operator.call("GET", "/v1/api-keys", expect=200))["api_keys"]
    new = next(k for k in keys if k["label"] == "ci")
    assert new["id"] == created["id"]
    assert created["api_key"].startswith(new["prefix"])
    assert "api_key" not in new  # listed keys never show the key itself
    await operator.call("DELETE", f"/v1/api-keys/{new['id']}", expect=200)
    async with session.get(
        f"{system.operator_url}/v1/products", headers={"Authorization": f"Bearer {created['api_key']}"}
    ) as response:
        assert response.status == 401


async def test_products_lock_once_and_serve_one_kind_of_registration(operator: Operator) -> None:
    product = await operator.call(
        "POST",
        "/v1/products",
        {
            "name": "cam",
            "services": [
                {"type": "ssh", "port": 22},
                {"name": "admin", "type": "webs", "port": 443, "enabled": False},
            ],
        },
        expect=201,
    )
    assert [s["type_code"] for s in product["services"]] == [35, 28, 33]
    assert "bulk_identification_code" not in product
    await operator.call("POST", "/v1/auto-registrations", {"product_id": product["id"]}, expect=409)
    locked = await operator.call("POST", f"/v1/products/{product['id']}/lock", expect=200)
    await operator.call("POST", f"/v1/products/{product['id']}/lock", expect=409)
    late = await operator.call(
        "POST",
        f"/v1/products/{product['id']}/services",
        {"name": "vnc", "type": "vnc", "port": 5900},
        expect=201,
    )
    assert late["services"][-1]["enabled"] is False  # added after locking: disabled by default
    assert late["bulk_identification_code"] == locked["bulk_identification_code"]
    await operator.call("POST", "/v1/auto-registrations", {"product_id": product["id"]}, expect=201)
    second = await operator.call("POST", "/v1/auto-registrations", {"product_id": product["id"]}, expect=409)
    assert second["field"] == "product_id"


async def test_bad_product_input_names_the_field(operator: Operator) -> None:
    cases = [
        ({"services": []}, "name"),
        ({"name": "x", "services": [{"type": "telnet", "port": 23}]}, "services[0].type"),
        ({"name": "x", "services": [{"type": "ssh", "port": 70000}]}, "services[0].port"),
        ({"name": "x", "services": [{"type": "rmt3", "port": 1}]}, "services[0].type"),
        (
            {"name": "x", "services": [{"type": "ssh", "port": 22}, {"type": "ssh", "port": 2222}]},
            "services[1].name",
        ),
    ]
    for body, field in cases:
        answer = await operator.call("POST", "/v1/products", body, expect=400)
        assert answer["field"] == field, (body, answer)
    await operator.call("GET", "/v1/devices?state=sleeping", expect=400)
    await operator.call("GET", "/v1/devices?limit=0", expect=400)
    await operator.call("GET", "/v1/devices?after=zzz", expect=400)
    assert (await operator.call("GET", "/v1/products", expect=200))["products"] == []


async def test_the_audit_trail_records_every_decision(
    system: System, operator: Operator, session: aiohttp.ClientSession
) -> None:
    registration = await operator.product()
    code = registration["bulk_identification_code"]
    first = await register(session, system.device_url, code, "cafe01", cpu_id="a", mac="a")
    await register(session, system.device_url, code, "cafe01", cpu_id="a", mac="a")
    clone = await register(session, system.device_url, code, "cafe01", cpu_id="b", mac="b")
    original = await operator.call("GET", f"/v1/devices/{first.body['device_id']}", expect=200)
    # Every decision, in order; the second claim (its fingerprint, no Idempotency-Key) was a
    # reclaim before "ready", which the history also shows as the generation it made.
    assert [
        (e["decision"], e["claimed_hardware_id"]) for e in original["history"] if e["kind"] == "registration"
    ] == [("new", "cafe01"), ("same", "cafe01")]
    assert [
        (e["kind"], e["credential_generation"]) for e in original["history"] if e["kind"] != "registration"
    ] == [("reclaimed", 2)]
    cloned = await operator.call("GET", f"/v1/devices/{clone.body['device_id']}", expect=200)
    assert [(e["decision"], e["assigned_hardware_id"]) for e in cloned["history"]] == [("clone", "cafe01-1")]
    assert "belongs to another device" in cloned["history"][0]["reason"]


async def test_the_operator_api_serves_its_openapi_document(
    system: System, session: aiohttp.ClientSession
) -> None:
    async with session.get(f"{system.operator_url}/openapi.yaml") as response:
        assert response.status == 200
        assert (await response.text()).startswith("openapi: 3.1")


async def test_refusals_that_created_no_device_are_in_the_audit_trail(
    system: System, operator: Operator, session: aiohttp.ClientSession
) -> None:
    registration = await operator.product()
    code = registration["bulk_identification_code"]
    await register(session, system.device_url, code, "cafe02", cpu_id="a", mac="a")
    await operator.call("POST", f"/v1/auto-registrations/{registration['id']}/pause", expect=200)
    await register(session, system.device_url, code, "cafe03", cpu_id="b", mac="b")

    everything = (await operator.call("GET", "/v1/registration-decisions", expect=200))["decisions"]
    assert [(d["decision"], d["claimed_hardware_id"]) for d in everything] == [
        ("refused", "cafe03"),
        ("new", "cafe02"),
    ]
    refused = (await operator.call("GET", "/v1/registration-decisions?decision=refused", expect=200))[
        "decisions"
    ]
    assert [(d["reason"], d["device_id"]) for d in refused] == [
        ("auto registration paused by the operator", None)
    ]
    page = await operator.call("GET", "/v1/registration-decisions?limit=1", expect=200)
    older = await operator.call(
        "GET",
        f"/v1/registration-decisions?limit=1&before={page['next_before'].replace('+', '%2B')}",
        expect=200,
    )
    assert [d["claimed_hardware_id"] for d in older["decisions"]] == ["cafe02"]
    await operator.call("GET", "/v1/registration-decisions?decision=maybe", expect=400)


async def test_paging_the_audit_trail_skips_no_decision_that_shares_a_time(
    system: System, session: aiohttp.ClientSession, operator: Operator
) -> None:
    """Deduplication records a batch's decisions with one time; the cursor carries the
    last request ID too, so a page boundary inside such a group loses nothing."""
    code = (await operator.product())["bulk_identification_code"]
    await asyncio.gather(
        *(register(session, system.device_url, code, f"tie{i:02d}", cpu_id=f"c{i}") for i in range(25))
    )
    everything = (await operator.call("GET", "/v1/registration-decisions?limit=1000", expect=200))[
        "decisions"
    ]
    assert len(everything) == 25
    assert len({d["decided_at"] for d in everything}) < 25  # some share a time (one batch)
    seen: list[str] = []
    query = "limit=2"
    while True:
        page = await operator.call("GET", f"/v1/registration-decisions?{query}", expect=200)
        seen += [d["request_id"] for d in page["decisions"]]
        if page["next_before"] is None:
            break
        query = f"limit=2&before={quote(page['next_before'])}&before_id={page['next_before_id']}"
    assert seen == [d["request_id"] for d in everything]


@pytest.mark.parametrize("before", ["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+14:00", "yesterday"])
async def test_a_cursor_time_out_of_range_is_a_400(operator: Operator, before: str) -> None:
    for path in ("/v1/registration-decisions", "/v1/security-alerts"):
        answer = await operator.call("GET", f"{path}?before={quote(before)}", expect=400)
        assert answer["field"] == "before"
    answer = await operator.call("GET", "/v1/security-alerts?before_id=x", expect=400)
    assert answer["field"] == "before_id"
