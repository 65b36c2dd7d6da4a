"""Undo, edit, cancel and delete (issue 13) through the running system: a disabled device
enabled again registers again; a service enabled after locking reaches a native device's
manifest and a reference-client device at their next boot, without a reset; a deleted
device's hardware ID is free; an unused product is deleted and a configured bulk upload
cancelled; each operator action is in the audit trail once, with its key; a read-only key
changes nothing; bad input is a clear 4xx."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import sys
import time
import uuid
from collections import Counter
from typing import Any

import aiohttp
import pytest

from shared.db import audit
from shared.db.audit import AuditFilter
from shared.db.pool import Pool
from tests.support.api import Operator, provision, register
from tests.support.bulk import bulk_call, bulk_product, csv_rows, csv_text, publish_and_wait, upload
from tests.support.reference_client import ReferenceClient, ReferenceDevice
from tests.support.system import ROOT, System

pytestmark = pytest.mark.e2e


@pytest.fixture
def client(system: System, session: aiohttp.ClientSession) -> ReferenceClient:
    return ReferenceClient(session, system.compat_url, system.tls_ca)


def _hardware_id() -> str:
    return uuid.uuid4().hex[:12]


async def _device_call(
    session: aiohttp.ClientSession, system: System, method: str, path: str, secret: str
) -> tuple[int, Any]:
    async with session.request(
        method, system.device_url + path, headers={"Authorization": f"Bearer {secret}"}
    ) as response:
        return response.status, await response.json(content_type=None)


async def _manifest(
    session: aiohttp.ClientSession, system: System, device_id: str, secret: str
) -> dict[str, Any]:
    """The device's manifest, every file downloaded and checked against it."""
    status, manifest = await _device_call(session, system, "GET", f"/v1/devices/{device_id}/manifest", secret)
    assert status == 200, manifest
    for item in manifest["files"]:
        async with session.get(item["url"], headers={"Authorization": f"Bearer {secret}"}) as response:
            content = await response.read()
            assert response.status == 200
        assert hashlib.sha256(content).hexdigest() == item["sha256"]
        assert f"proxy_dest_port {item['port']}\n".encode() in content
    return manifest


# The promise is the invalidation's delivery time (docs/security.md, the same bound as
# tests/e2e/test_face_the_internet.py): a service edit drops every intake's cached devices
# when its notification arrives, which a loaded machine can deliver after the very next
# request; the new manifest is awaited up to this bound, never longer.
DELIVERY_BOUND_S = 1.0


async def _manifest_showing(
    session: aiohttp.ClientSession, system: System, device: dict[str, Any], expected: list[tuple[str, int]]
) -> dict[str, Any]:
    """The device's manifest once it lists ``expected`` (service, port) (fails past the
    bound), every file then downloaded and checked against it."""
    started = time.perf_counter()
    while True:
        status, manifest = await _device_call(
            session, system, "GET", f"/v1/devices/{device['device_id']}/manifest", device["device_secret"]
        )
        assert status == 200, manifest
        shown = [(f["service"], f["port"]) for f in manifest["files"]]
        if shown == expected:
            break
        assert time.perf_counter() - started < DELIVERY_BOUND_S, f"the manifest still lists {shown}"
        await asyncio.sleep(0.005)
    DELAYS.append(time.perf_counter() - started)
    return await _manifest(session, system, device["device_id"], device["device_secret"])


DELAYS: list[float] = []


async def _booted(
    operator: Operator, session: aiohttp.ClientSession, system: System, code: str
) -> dict[str, Any]:
    """A native device registered and provisioned (confirmed); its registration answer."""
    answer = await register(session, system.device_url, code, _hardware_id(), cpu_id="c1", mac="m1")
    assert answer.status == 200, answer.body
    await provision(session, system.device_url, answer.body)
    for _ in range(200):
        device = await operator.call("GET", f"/v1/devices/{answer.body['device_id']}", expect=200)
        if device["lifecycle"] == "provisioned":
            return answer.body
        await asyncio.sleep(0.05)
    raise AssertionError("the device's ready never reached the registry")


async def _service(operator: Operator, product_id: str, name: str) -> dict[str, Any]:
    product = await operator.call("GET", f"/v1/products/{product_id}", expect=200)
    return next(s for s in product["services"] if s["name"] == name)


async def _edit(operator: Operator, product_id: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
    service = await _service(operator, product_id, name)
    product = await operator.call(
        "PATCH", f"/v1/products/{product_id}/services/{service['provisioning_id']}", body, expect=200
    )
    return next(s for s in product["services"] if s["name"] == name)


async def test_enable_after_disable_lets_the_device_register_again(
    operator: Operator, session: aiohttp.ClientSession, system: System
) -> None:
    code = (await operator.product())["bulk_identification_code"]
    booted = await _booted(operator, session, system, code)
    device_id, secret, hardware_id = booted["device_id"], booted["device_secret"], booted["hardware_id"]

    disabled = await operator.call("POST", f"/v1/devices/{device_id}/disable", expect=200)
    assert disabled["state"] == "disabled"
    refused = await register(
        session, system.device_url, code, hardware_id, cpu_id="c1", mac="m1", secret=secret
    )
    assert (refused.status, refused.body["reason"]) == (403, "device disabled by the operator")
    assert (await _device_call(session, system, "GET", f"/v1/devices/{device_id}/manifest", secret))[0] == 403

    enabled = await operator.call("POST", f"/v1/devices/{device_id}/enable", expect=200)
    assert enabled["disabled"] is False and enabled["state"] != "disabled"
    kinds = [h["kind"] for h in enabled["history"]]
    assert kinds[-1] == "enabled" and kinds.index("disabled") < len(kinds) - 1
    again = await register(
        session, system.device_url, code, hardware_id, cpu_id="c1", mac="m1", secret=secret
    )
    assert again.status == 200, again.body
    assert (again.body["device_id"], again.body["decision"]) == (device_id, "same")
    await _manifest(session, system, device_id, secret)
    # Enabling an enabled device changes nothing; the batch says so.
    batch = await operator.call("POST", "/v1/devices/enable", {"device_ids": [device_id]}, expect=200)
    assert [r["outcome"] for r in batch["results"]] == ["unchanged"]
    # The device's page shows the operator's two actions, newest first, with the key.
    shown = await operator.call("GET", f"/v1/devices/{device_id}", expect=200)
    assert [(e["action"], e["api_key_label"]) for e in shown["audit_events"]] == [
        ("device.enabled", "first key"),
        ("device.disabled", "first key"),
    ]


async def test_a_service_enabled_after_locking_reaches_both_kinds_of_device_at_their_next_boot(
    operator: Operator, session: aiohttp.ClientSession, system: System, client: ReferenceClient
) -> None:
    registration = await operator.product([{"type": "ssh", "port": 22}])
    code, product_id = registration["bulk_identification_code"], registration["product_id"]
    native = await _booted(operator, session, system, code)
    reference = ReferenceDevice(code, _hardware_id())
    assert await client.boot(reference) == "provisioned"
    ssh = await _service(operator, product_id, "ssh")
    locked_at = (await client.configuration(reference, ssh["provisioning_id"]))["timestamp"]

    added = await operator.call(
        "POST",
        f"/v1/products/{product_id}/services",
        {"name": "admin", "type": "web", "port": 80},
        expect=201,
    )
    web = next(s for s in added["services"] if s["name"] == "admin")
    assert not web["enabled"]  # added after locking: disabled [ref]
    manifest = await _manifest(session, system, native["device_id"], native["device_secret"])
    assert [f["service"] for f in manifest["files"]] == ["bulk", "ssh"]
    assert (await client.configuration(reference, web["provisioning_id"]))["enabled"] == "0"

    assert (await _edit(operator, product_id, "admin", {"enabled": True}))["enabled"]

    # The native device's next boot: its manifest lists the new service's file (no reset,
    # no registration call), rendered with a service UID of its own.
    await _manifest_showing(session, system, native, [("bulk", 65535), ("ssh", 22), ("admin", 80)])
    # The reference client's next boot: the project list names the service, its
    # configuration says enabled with a new timestamp, and its register call succeeds.
    calls_before = len(client.calls)
    assert await client.boot(reference) == "provisioned"
    assert web["provisioning_id"] in reference.credentials
    uid, secret = reference.credentials[web["provisioning_id"]]
    assert uid.startswith("80:00:") and len(secret) == 32
    configuration = await client.configuration(reference, web["provisioning_id"])
    assert configuration["enabled"] == "1"
    assert int(configuration["timestamp"]) > int(locked_at)
    registered = [c for c in client.calls[calls_before:] if c[1] == "/bulk/registration/register"]
    assert len(registered) == 1 and '"status":"true"' in registered[0][3]
    # Both devices are the same devices as before: nothing was reset, no new device made.
    assert len(await operator.devices()) == 2

    # Disabled again: it drops out of the manifest and the project list; the timestamp moves.
    await _edit(operator, product_id, "admin", {"enabled": False})
    await _manifest_showing(session, system, native, [("bulk", 65535), ("ssh", 22)])
    disabled = await client.configuration(reference, web["provisioning_id"])
    assert disabled["enabled"] == "0" and int(disabled["timestamp"]) > int(configuration["timestamp"])
    calls_before = len(client.calls)
    assert await client.boot(ReferenceDevice(code, _hardware_id())) == "provisioned"
    listed = [c for c in client.calls[calls_before:] if "/friendly/configuration/" in c[1]]
    assert web["provisioning_id"] not in listed[0][3]

    # A port change: the native file is rendered again (and checked), the reference
    # configuration answers the new port with a new timestamp.
    await _edit(operator, product_id, "ssh", {"port": 2222})
    await _manifest_showing(session, system, native, [("bulk", 65535), ("ssh", 2222)])
    reported = await client.configuration(reference, ssh["provisioning_id"])
    assert reported["content_port"] == "2222" and int(reported["timestamp"]) > int(locked_at)
    print(f"service edits seen by the intake after {max(DELAYS) * 1000:.1f} ms at most ({len(DELAYS)} edits)")


async def test_a_bulk_reference_device_gets_a_service_enabled_after_it_confirmed(
    operator: Operator, session: aiohttp.ClientSession, system: System, client: ReferenceClient
) -> None:
    product_id = await bulk_product(operator)
    rows = csv_rows(1)
    status, configured = await upload(session, system.bulk_url, operator, product_id, csv_text(rows).encode())
    assert status == 201, configured
    await publish_and_wait(session, system.bulk_url, operator, configured["id"])
    code = (await operator.call("GET", f"/v1/products/{product_id}", expect=200))["bulk_identification_code"]
    key, hardware_id, _ = rows[0]
    device = ReferenceDevice(code, hardware_id, registration_key=key)
    assert await client.boot(device) == "provisioned"
    for _ in range(200):
        if (await operator.devices(hardware_id=hardware_id))[0]["lifecycle"] == "provisioned":
            break
        await asyncio.sleep(0.05)
    added = await operator.call(
        "POST", f"/v1/products/{product_id}/services", {"name": "cam", "type": "tcp", "port": 554}, expect=201
    )
    cam = next(s for s in added["services"] if s["name"] == "cam")
    await _edit(operator, product_id, "cam", {"enabled": True})

    assert await client.boot(device) == "provisioned"

    assert cam["provisioning_id"] in device.credentials
    (found,) = await operator.devices(hardware_id=hardware_id)
    assert found["lifecycle"] == "provisioned"  # the same device, not reset
    # Another board with the same hardware ID and key but no secret gets nothing of it.
    impostor = ReferenceDevice(code, hardware_id, registration_key=key)
    assert (await client.boot(impostor)).startswith("failed: ")
    assert cam["provisioning_id"] not in impostor.credentials


async def test_a_deleted_device_frees_its_hardware_id_and_its_secret_stops_working(
    operator: Operator, session: aiohttp.ClientSession, system: System
) -> None:
    code = (await operator.product())["bulk_identification_code"]
    booted = await _booted(operator, session, system, code)
    device_id, secret, hardware_id = booted["device_id"], booted["device_secret"], booted["hardware_id"]

    gone = await operator.call("DELETE", f"/v1/devices/{device_id}", expect=200)

    assert (gone["deleted"], gone["id"], gone["hardware_id"]) == (True, device_id, hardware_id)
    await operator.call("GET", f"/v1/devices/{device_id}", expect=404)
    await operator.call("DELETE", f"/v1/devices/{device_id}", expect=404)
    # Its secret stops working (within the invalidation's delivery time, as a disable does).
    started = time.perf_counter()
    while (
        status := (await _device_call(session, system, "GET", f"/v1/devices/{device_id}/manifest", secret))[0]
    ) != 401:
        assert status == 200 and time.perf_counter() - started < DELIVERY_BOUND_S, status
        await asyncio.sleep(0.005)
    # Its registration request is answered as refused now, with the reason.
    async with session.get(f"{system.device_url}/v1/registrations/{booted['request_id']}") as response:
        polled = await response.json()
    assert (polled["status"], polled["reason"]) == ("refused", "device deleted by the operator")
    # Another board claiming the hardware ID gets it as is: no index, a device of its own.
    claimed = await register(session, system.device_url, code, hardware_id.upper(), cpu_id="c2", mac="m2")
    assert claimed.status == 200, claimed.body
    assert claimed.body["hardware_id"].lower() == hardware_id and not claimed.body["clone"]
    assert claimed.body["device_id"] != device_id
    # The batch form, with an ID of no device.
    unknown = str(uuid.uuid4())
    batch = await operator.call(
        "POST", "/v1/devices/delete", {"device_ids": [claimed.body["device_id"], unknown]}, expect=200
    )
    assert [(r["outcome"], (r["device"] or {}).get("hardware_id")) for r in batch["results"]] == [
        ("deleted", claimed.body["hardware_id"]),
        ("not_found", None),
    ]
    assert batch["counts"] == {"deleted": 1, "not_found": 1}
    assert await operator.devices() == []


async def test_an_unused_product_is_deleted_and_a_configured_upload_cancelled(
    operator: Operator, session: aiohttp.ClientSession, system: System
) -> None:
    product_id = await bulk_product(operator)
    status, configured = await upload(
        session, system.bulk_url, operator, product_id, csv_text(csv_rows(3)).encode()
    )
    assert status == 201, configured

    refused = await operator.call("DELETE", f"/v1/products/{product_id}", expect=409)
    assert "1 bulk registration" in refused["message"] and refused["rule"] == "product_unused"
    status, cancelled = await bulk_call(
        session, system.bulk_url, operator, "POST", f"/v1/bulk-registrations/{configured['id']}/cancel"
    )
    assert (status, cancelled["status"], cancelled["rows"]) == (200, "cancelled", 3)
    for method, path in (("GET", ""), ("POST", "/cancel"), ("POST", "/publish")):
        status, body = await bulk_call(
            session, system.bulk_url, operator, method, f"/v1/bulk-registrations/{configured['id']}{path}"
        )
        assert status == 404, body
    gone = await operator.call("DELETE", f"/v1/products/{product_id}", expect=200)
    assert (gone["deleted"], gone["id"]) == (True, product_id)
    assert "bulk_identification_code" not in gone
    await operator.call("GET", f"/v1/products/{product_id}", expect=404)
    await operator.call("DELETE", f"/v1/products/{product_id}", expect=404)


async def test_a_published_upload_is_not_cancelled_and_its_product_not_deleted(
    operator: Operator, session: aiohttp.ClientSession, system: System
) -> None:
    product_id = await bulk_product(operator)
    status, configured = await upload(
        session, system.bulk_url, operator, product_id, csv_text(csv_rows(2)).encode()
    )
    assert status == 201, configured
    await publish_and_wait(session, system.bulk_url, operator, configured["id"])

    status, refused = await bulk_call(
        session, system.bulk_url, operator, "POST", f"/v1/bulk-registrations/{configured['id']}/cancel"
    )
    assert status == 409 and "preregistered" in refused["message"], refused
    in_use = await operator.call("DELETE", f"/v1/products/{product_id}", expect=409)
    assert "1 bulk registration(s), 2 device(s)" in in_use["message"]


async def test_every_operator_action_appears_once_in_the_audit_trail_with_its_key(
    operator: Operator, session: aiohttp.ClientSession, system: System, pool: Pool
) -> None:
    issued = await operator.call("POST", "/v1/api-keys", {"label": "ops-lifecycle"}, expect=201)
    ops = Operator(session, operator.url, issued["api_key"], operator.account_id)
    product = await ops.call(
        "POST", "/v1/products", {"name": "audited", "services": [{"type": "ssh", "port": 22}]}, expect=201
    )
    locked = await ops.call("POST", f"/v1/products/{product['id']}/lock", expect=200)
    await ops.call("POST", f"/v1/products/{product['id']}/services", {"type": "web", "port": 80}, expect=201)
    await _edit(ops, product["id"], "web", {"enabled": True, "port": 8080})
    await _edit(ops, product["id"], "web", {"enabled": True, "port": 8080})  # changes nothing: not recorded
    spare = await ops.call("POST", "/v1/products", {"name": "spare"}, expect=201)
    await ops.call("DELETE", f"/v1/products/{spare['id']}", expect=200)
    registration = await ops.call("POST", "/v1/auto-registrations", {"product_id": product["id"]}, expect=201)
    answer = await register(
        session, system.device_url, registration["bulk_identification_code"], _hardware_id()
    )
    device_id = answer.body["device_id"]
    for action in ("disable", "enable", "reset"):
        await ops.call("POST", f"/v1/devices/{device_id}/{action}", expect=200)
    await ops.call("POST", "/v1/devices/delete", {"device_ids": [device_id]}, expect=200)
    bulk_product_id = await bulk_product(ops)
    status, configured = await upload(
        session, system.bulk_url, ops, bulk_product_id, csv_text(csv_rows(2)).encode()
    )
    assert status == 201
    await bulk_call(
        session, system.bulk_url, ops, "POST", f"/v1/bulk-registrations/{configured['id']}/cancel"
    )
    status, second = await upload(
        session, system.bulk_url, ops, bulk_product_id, csv_text(csv_rows(2)).encode()
    )
    await publish_and_wait(session, system.bulk_url, ops, second["id"])

    events = await audit.list_events(
        pool, operator.account_id, AuditFilter(api_key_id=issued["id"]), limit=500
    )

    assert all(e.api_key_label == "ops-lifecycle" for e in events)
    assert Counter(e.action for e in events) == {
        "product.created": 3,  # audited, spare, the bulk product
        "product.service_added": 1,
        "product.locked": 2,
        "product.service_changed": 1,
        "product.deleted": 1,
        "device.disabled": 1,
        "device.enabled": 1,
        "device.reset": 1,
        "device.deleted": 1,
        "bulk.uploaded": 2,
        "bulk.cancelled": 1,
        "bulk.publish_requested": 1,
    } | {a: n for a, n in Counter(e.action for e in events).items() if a == "auto_registration.created"}
    targets = {(e.action, e.target_id) for e in events}
    assert ("device.deleted", device_id) in targets and ("bulk.cancelled", configured["id"]) in targets
    (changed,) = [e for e in events if e.action == "product.service_changed"]
    assert changed.changes["port"] == {"from": 80, "to": 8080}
    assert changed.changes["enabled"] == {"from": False, "to": True}
    # No code of any product in any event.
    codes = {locked["bulk_identification_code"], locked["product_code"]}
    assert not any(code in json.dumps(e.changes) for e in events for code in codes)


async def test_a_read_only_key_changes_nothing(
    operator: Operator, session: aiohttp.ClientSession, system: System, pool: Pool
) -> None:
    registration = await operator.product([{"type": "ssh", "port": 22}])
    product_id = registration["product_id"]
    answer = await register(
        session, system.device_url, registration["bulk_identification_code"], _hardware_id()
    )
    device_id = answer.body["device_id"]
    await operator.call("POST", f"/v1/devices/{device_id}/disable", expect=200)
    bulk_id = await bulk_product(operator)
    status, configured = await upload(
        session, system.bulk_url, operator, bulk_id, csv_text(csv_rows(2)).encode()
    )
    assert status == 201
    spare = await operator.call("POST", "/v1/products", {"name": "spare"}, expect=201)
    issued = await operator.call("POST", "/v1/api-keys", {"label": "auditor", "read_only": True}, expect=201)
    reader = Operator(session, operator.url, issued["api_key"], operator.account_id)
    ssh = await _service(operator, product_id, "ssh")
    before = (
        await operator.call("GET", f"/v1/products/{product_id}", expect=200),
        await operator.call("GET", f"/v1/devices/{device_id}", expect=200),
    )

    for method, path, body in (
        ("PATCH", f"/v1/products/{product_id}/services/{ssh['provisioning_id']}", {"enabled": False}),
        ("DELETE", f"/v1/products/{spare['id']}", None),
        ("POST", f"/v1/devices/{device_id}/enable", None),
        ("POST", "/v1/devices/enable", {"device_ids": [device_id]}),
        ("DELETE", f"/v1/devices/{device_id}", None),
        ("POST", "/v1/devices/delete", {"device_ids": [device_id]}),
    ):
        refused = await reader.call(method, path, body, expect=403)
        assert refused["rule"] == "scope=read-only", (method, path)
    status, refused = await bulk_call(
        session,
        system.bulk_url,
        reader,
        "POST",
        f"/v1/bulk-registrations/{configured['id']}/cancel",
    )
    assert status == 403, refused

    after = (
        await operator.call("GET", f"/v1/products/{product_id}", expect=200),
        await operator.call("GET", f"/v1/devices/{device_id}", expect=200),
    )
    assert after == before
    await operator.call("GET", f"/v1/products/{spare['id']}", expect=200)
    status, still = await bulk_call(
        session, system.bulk_url, operator, "GET", f"/v1/bulk-registrations/{configured['id']}"
    )
    assert (status, still["status"]) == (200, "configured")
    assert (
        await audit.list_events(pool, operator.account_id, AuditFilter(api_key_id=issued["id"]), limit=10)
        == []
    )


async def test_bad_input_to_the_new_calls_is_a_clear_4xx(
    operator: Operator, session: aiohttp.ClientSession, system: System, pool: Pool
) -> None:
    registration = await operator.product([{"type": "ssh", "port": 22}])
    product_id = registration["product_id"]
    ssh = await _service(operator, product_id, "ssh")
    bulk_service = await _service(operator, product_id, "bulk")
    path = f"/v1/products/{product_id}/services/{ssh['provisioning_id']}"
    headers = {"Authorization": f"Bearer {operator.api_key}", "Content-Type": "application/json"}

    async def raw(method: str, url: str, data: bytes) -> tuple[int, dict[str, Any]]:
        async with session.request(
            method, system.operator_url + url, data=io.BytesIO(data), headers=headers
        ) as response:
            return response.status, await response.json()

    for data, status, field in (
        (b"not json", 400, "body"),
        (b"[1, 2]", 400, "body"),
        (b'{"type": "web"}', 400, "type"),
        (b'{"enabled": "true"}', 400, "enabled"),
        (b'{"enabled": null}', 400, "enabled"),
        (b'{"port": 1e3}', 400, "port"),
        (b'{"port": 99999999999999999999999}', 400, "port"),
        (b'{"name": "a\\u0000b"}', 400, "name"),
        ('{"name": "caf\u00e9"}'.encode(), 400, "name"),
        (b'{"owner": "x"}', 400, "owner"),
        (b"{}", 400, None),
        (b'{"name": "shell"}', 409, "name"),  # locked: the name stays
        (b'{"enabled": "' + b"x" * 2_000_000 + b'"}', 413, None),
    ):
        answered, body = await raw("PATCH", path, data)
        assert answered == status and body.get("field") == field and body["message"], (data[:40], body)
    answered, body = await raw(
        "PATCH", f"/v1/products/{product_id}/services/{bulk_service['provisioning_id']}", b'{"port": 1}'
    )
    assert (answered, body["rule"]) == (409, "bulk_service_fixed")
    # Another account's product and service, unknown IDs, a malformed ID: not found.
    stranger = Operator(session, operator.url, *(await _other_account(pool)))
    await stranger.call("PATCH", path, {"enabled": False}, expect=404)
    await stranger.call("DELETE", f"/v1/products/{product_id}", expect=404)
    await operator.call(
        "PATCH", f"/v1/products/{product_id}/services/{uuid.uuid4()}", {"enabled": False}, expect=404
    )
    await operator.call("PATCH", f"/v1/products/{product_id}/services/ssh", {"enabled": False}, expect=404)
    await operator.call(
        "PATCH", f"/v1/products/{uuid.uuid4()}/services/{ssh['provisioning_id']}", {"port": 1}, expect=404
    )
    for path_, body_ in (
        ("/v1/devices/enable", {"device_ids": "x"}),
        ("/v1/devices/delete", {"device_ids": []}),
        ("/v1/devices/delete", {"device_ids": ["not-an-id"]}),
        ("/v1/devices/enable", {}),
    ):
        await operator.call("POST", path_, body_, expect=400)
    await operator.call("POST", "/v1/devices/not-an-id/enable", expect=404)
    await operator.call("DELETE", f"/v1/devices/{uuid.uuid4()}", expect=404)
    status, body = await bulk_call(
        session, system.bulk_url, operator, "POST", f"/v1/bulk-registrations/{uuid.uuid4()}/cancel"
    )
    assert status == 404, body
    assert (await _service(operator, product_id, "ssh")) == ssh  # nothing changed


async def _other_account(pool: Pool) -> tuple[str, str]:
    from shared.db import accounts

    account, key = await accounts.create_account(pool, f"acct-{uuid.uuid4().hex[:10]}")
    return key, account.id


# ---------------------------------------------------------------- the CLI


async def _fleetreg(operator: Operator, system: System, *args: str) -> tuple[int, str, str]:
    """The CLI, with no terminal to confirm on (as in a script)."""
    env = {
        **os.environ,
        "FLEETREG_ENDPOINTS_FILE": "/nonexistent",
        "FLEETREG_ADMIN_URL": system.operator_url,
        "FLEETREG_ADMIN_TOKEN": operator.api_key,
        "FLEETREG_DEVICE_URL": system.device_url,
        "FLEETREG_BULK_URL": system.bulk_url,
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cli.main",
        *args,
        cwd=ROOT,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_the_cli_enables_deletes_edits_and_cancels(
    operator: Operator, session: aiohttp.ClientSession, system: System
) -> None:
    registration = await operator.product([{"type": "ssh", "port": 22}])
    product_id = registration["product_id"]
    answer = await register(
        session, system.device_url, registration["bulk_identification_code"], _hardware_id()
    )
    device_id = answer.body["device_id"]

    code, out, err = await _fleetreg(operator, system, "devices", "disable", device_id)
    assert code == 0, err
    code, out, err = await _fleetreg(operator, system, "devices", "enable", device_id)
    assert code == 0 and "enabled" in out, err
    code, out, err = await _fleetreg(
        operator, system, "product", "service", product_id, "ssh", "--disable", "--port", "2222", "--json"
    )
    assert code == 0, err
    assert [(s["name"], s["enabled"], s["port"]) for s in json.loads(out)["services"]][1] == (
        "ssh",
        False,
        2222,
    )
    code, out, err = await _fleetreg(operator, system, "product", "service", product_id, "nope", "--enable")
    assert code == 1 and "no service named 'nope'" in err and "ssh" in err

    # Deleting without a terminal to confirm on, and without --yes: refused, nothing deleted.
    code, out, err = await _fleetreg(operator, system, "devices", "delete", device_id)
    assert code == 1 and "--yes" in err
    await operator.call("GET", f"/v1/devices/{device_id}", expect=200)
    code, out, err = await _fleetreg(operator, system, "devices", "delete", device_id, "--yes")
    assert code == 0 and "deleted" in out, err
    await operator.call("GET", f"/v1/devices/{device_id}", expect=404)

    # A product in use: the refusal says why; an unused one goes.
    code, out, err = await _fleetreg(operator, system, "product", "delete", product_id, "--yes")
    assert code == 1 and "in use by 1 auto registration" in err
    spare = await operator.call("POST", "/v1/products", {"name": "spare"}, expect=201)
    code, out, err = await _fleetreg(operator, system, "product", "delete", spare["id"], "--yes", "--json")
    assert code == 0 and json.loads(out)["deleted"] is True, err

    bulk_id = await bulk_product(operator)
    status, configured = await upload(
        session, system.bulk_url, operator, bulk_id, csv_text(csv_rows(2)).encode()
    )
    assert status == 201
    code, out, err = await _fleetreg(operator, system, "bulk", "cancel", configured["id"])
    assert code == 1 and "--yes" in err
    code, out, err = await _fleetreg(operator, system, "bulk", "cancel", configured["id"], "--yes")
    assert code == 0 and "cancelled" in out, err
    code, out, err = await _fleetreg(operator, system, "bulk", "cancel", configured["id"], "--yes")
    assert code == 1 and "404" in err
