"""Moving a device to another product and renaming it (issue 22, item 3), on the running
system: the operator API, the device API and the ``fleetreg`` command.

* An auto device moved to another auto product: its old secret is refused at once; a
  claim with the target product's code gets the same device ID back, with the target
  product's files; its old product's code, claiming its hardware ID, never gets it.
* A bulk device moved to another bulk product claims with its key and the target's code;
  its old product's code and key no longer take it.
* A rename shows in the device, the search and its files (every download still matches
  its manifest); its credentials stay.
* Refusals: another account's device or product 404, a read-only key 403, a bad body 400
  naming the field, a move into a bulk product of a device without a key 409.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from typing import Any

import aiohttp
import pytest

from shared.db.pool import Pool
from tests.e2e.test_cli import fleetreg, fleetreg_json
from tests.e2e.test_face_the_internet import refused_within
from tests.support.api import DeviceAnswer, Operator, new_operator, provision, register
from tests.support.bulk import bulk_product, csv_text, publish_and_wait, upload
from tests.support.system import System

pytestmark = pytest.mark.e2e


@pytest.fixture
async def stranger(session: aiohttp.ClientSession, pool: Pool, system: System) -> Operator:
    """Another account, with its own products and devices."""
    return await new_operator(session, pool, system.operator_url)


async def _auto_product(operator: Operator, services: list[dict[str, Any]]) -> tuple[str, str]:
    """A locked product with an active auto registration: (product ID, its code)."""
    registration = await operator.product(services)
    return registration["product_id"], registration["bulk_identification_code"]


async def _code(operator: Operator, product_id: str) -> str:
    return str(
        (await operator.call("GET", f"/v1/products/{product_id}", expect=200))["bulk_identification_code"]
    )


async def _manifest(
    session: aiohttp.ClientSession, system: System, device_id: str, secret: str
) -> tuple[int, dict[str, Any]]:
    async with session.get(
        f"{system.device_url}/v1/devices/{device_id}/manifest", headers={"Authorization": f"Bearer {secret}"}
    ) as response:
        return response.status, await response.json(content_type=None)


async def _files(session: aiohttp.ClientSession, manifest: dict[str, Any], secret: str) -> dict[str, bytes]:
    """Every file of the manifest, downloaded and checked against its digest, by service."""
    found = {}
    for item in manifest["files"]:
        async with session.get(item["url"], headers={"Authorization": f"Bearer {secret}"}) as response:
            content = await response.read()
            assert response.status == 200, content
        assert hashlib.sha256(content).hexdigest() == item["sha256"]
        found[item["service"]] = content
    return found


async def _provisioned(operator: Operator, device_id: str) -> dict[str, Any]:
    """The device once its confirmation (ready, applied through the pipeline) shows."""
    for _ in range(100):
        device: dict[str, Any] = await operator.call("GET", f"/v1/devices/{device_id}", expect=200)
        if device["lifecycle"] == "provisioned":
            return device
        await asyncio.sleep(0.1)
    raise AssertionError(f"device {device_id} not provisioned within 10 s: {device}")


def _claimed(answer: DeviceAnswer) -> dict[str, Any]:
    assert answer.status == 200, answer.body
    assert answer.body["status"] == "ready", answer.body
    return answer.body


async def test_an_auto_device_moved_to_another_product_comes_back_there_with_its_files(
    system: System, session: aiohttp.ClientSession, operator: Operator
) -> None:
    source, source_code = await _auto_product(operator, [{"type": "ssh", "port": 22}])
    target, target_code = await _auto_product(operator, [{"type": "web", "port": 8080}])
    hardware_id = uuid.uuid4().hex[:12]
    first = _claimed(
        await register(session, system.device_url, source_code, hardware_id, cpu_id="c", mac="m")
    )
    await provision(session, system.device_url, first)
    # Its confirmation applied first: a move is of a provisioned device, and the history's
    # order is that of the transactions' start (a confirmation applied while the move's
    # transaction ran would be listed after it).
    await _provisioned(operator, first["device_id"])

    moved = await operator.call(
        "POST", f"/v1/devices/{first['device_id']}/move", {"product_id": target}, expect=200
    )

    assert (moved["product_id"], moved["lifecycle"], moved["state"]) == (target, "preregistered", "offline")
    assert moved["history"][-1]["kind"] == "moved"
    assert [e["action"] for e in moved["audit_events"]][:1] == ["device.moved"]
    assert moved["audit_events"][0]["changes"]["product_id"] == {"from": source, "to": target}
    # Its old secret is refused at once: within the invalidation's delivery time, as after a
    # reset (the intake's cache of it is dropped when the move's notification arrives).
    manifest_url = f"{system.device_url}/v1/devices/{first['device_id']}/manifest"
    await refused_within(session, manifest_url, first["device_secret"], 401)
    # The target product's code takes it over: the same device, the target's files.
    again = _claimed(
        await register(session, system.device_url, target_code, hardware_id, cpu_id="c", mac="m")
    )
    assert (again["device_id"], again["hardware_id"]) == (first["device_id"], hardware_id)
    assert again["device_secret"] != first["device_secret"]
    manifest = await provision(session, system.device_url, again)
    assert {(f["service"], f["port"]) for f in manifest["files"]} == {("bulk", 65535), ("web", 8080)}
    device = await _provisioned(operator, first["device_id"])
    assert device["product_id"] == target
    # Its old product's code never gets it back (without its secret: a clone in the old product).
    stale = await register(session, system.device_url, source_code, hardware_id, cpu_id="c2", mac="m2")
    assert stale.body.get("device_id") != first["device_id"], stale.body
    # Moving it to where it is is refused, not a silent reset.
    same = await operator.call(
        "POST", f"/v1/devices/{first['device_id']}/move", {"product_id": target}, expect=409
    )
    assert same["rule"] == "same_product"
    assert (await operator.call("GET", f"/v1/devices/{first['device_id']}"))["lifecycle"] == "provisioned"


async def test_a_bulk_device_moved_to_another_bulk_product_claims_there_with_its_key(
    system: System, session: aiohttp.ClientSession, operator: Operator
) -> None:
    tag = uuid.uuid4().hex[:6]
    source, target = await bulk_product(operator), await bulk_product(operator)
    row = (f"key-{tag}", f"{tag}b0a1", "Pump 1")
    status, registration = await upload(session, system.bulk_url, operator, source, csv_text([row]).encode())
    assert status == 201, registration
    await publish_and_wait(session, system.bulk_url, operator, registration["id"])
    other = (f"key-{tag}-t", f"{tag}b0a2", "Pump 2")
    status, target_registration = await upload(
        session, system.bulk_url, operator, target, csv_text([other]).encode()
    )
    assert status == 201, target_registration
    await publish_and_wait(session, system.bulk_url, operator, target_registration["id"])
    (device,) = await operator.devices(hardware_id=row[1])
    auto_product, auto_code = await _auto_product(operator, [{"type": "ssh", "port": 22}])
    auto_device = _claimed(await register(session, system.device_url, auto_code, uuid.uuid4().hex[:12]))

    moved = await operator.call(
        "POST", f"/v1/devices/{device['id']}/move", {"product_id": target}, expect=200
    )
    assert (moved["product_id"], moved["registration_id"]) == (target, target_registration["id"])
    claim = _claimed(
        await register(
            session,
            system.device_url,
            await _code(operator, target),
            row[1],
            cpu_id="c",
            registration_key=row[0],
        )
    )
    assert claim["device_id"] == device["id"]
    await provision(session, system.device_url, claim)
    # The old product's code with the key no longer takes it.
    old = await register(
        session, system.device_url, await _code(operator, source), row[1], cpu_id="c", registration_key=row[0]
    )
    assert (old.status, old.body["status"]) == (403, "refused"), old.body
    # A device from an auto registration has no key: it cannot claim in a bulk product.
    refused = await operator.call(
        "POST", f"/v1/devices/{auto_device['device_id']}/move", {"product_id": target}, expect=409
    )
    assert (refused["rule"], refused["field"]) == ("registration_key_required", "product_id")
    assert (await operator.call("GET", f"/v1/devices/{auto_device['device_id']}"))[
        "product_id"
    ] == auto_product


async def test_after_a_move_the_old_products_code_never_takes_the_device(
    system: System, session: aiohttp.ClientSession, operator: Operator
) -> None:
    """A move and a claim stay in their products together: the old product's code gets
    nothing of a moved device, whatever it presents (the device's current secret, the
    Idempotency-Key of its first registration, before it confirms in its new product), and
    a bulk device moved before it was ever claimed is not taken by its old code and key."""
    _, source_code = await _auto_product(operator, [{"type": "ssh", "port": 22}])
    target, target_code = await _auto_product(operator, [{"type": "web", "port": 8080}])
    hardware_id, key = uuid.uuid4().hex[:12], f"boot-{uuid.uuid4().hex}"
    first = _claimed(
        await register(
            session, system.device_url, source_code, hardware_id, cpu_id="c", mac="m", idempotency_key=key
        )
    )
    await operator.call("POST", f"/v1/devices/{first['device_id']}/move", {"product_id": target}, expect=200)
    # Claimed in its new product, not confirmed there yet.
    moved = _claimed(
        await register(session, system.device_url, target_code, hardware_id, cpu_id="c", mac="m")
    )
    assert moved["device_id"] == first["device_id"]
    for presented in (
        {"secret": moved["device_secret"]},  # its current secret, with the old product's code
        {"idempotency_key": key},  # the key of its first registration, in the old product
    ):
        answer = await register(
            session, system.device_url, source_code, hardware_id, cpu_id="c", mac="m", **presented
        )
        assert answer.body.get("device_id") != first["device_id"], (presented.keys(), answer.body)
        assert answer.body.get("device_secret") != moved["device_secret"]
    # The device itself is untouched by those claims: its secret still proves it.
    status, _ = await _manifest(session, system, first["device_id"], moved["device_secret"])
    assert status == 200

    tag = uuid.uuid4().hex[:6]
    old_bulk, new_bulk = await bulk_product(operator), await bulk_product(operator)
    row = (f"key-{tag}", f"{tag}c0a1", "Valve 1")
    for product, rows in ((old_bulk, [row]), (new_bulk, [(f"key-{tag}-n", f"{tag}c0a2", "Valve 2")])):
        status, registration = await upload(
            session, system.bulk_url, operator, product, csv_text(rows).encode()
        )
        assert status == 201, registration
        await publish_and_wait(session, system.bulk_url, operator, registration["id"])
    (listed,) = await operator.devices(hardware_id=row[1])
    await operator.call("POST", f"/v1/devices/{listed['id']}/move", {"product_id": new_bulk}, expect=200)
    old = await register(
        session,
        system.device_url,
        await _code(operator, old_bulk),
        row[1],
        cpu_id="c",
        registration_key=row[0],
    )
    assert (old.status, old.body["status"]) == (403, "refused"), old.body
    claim = _claimed(
        await register(
            session,
            system.device_url,
            await _code(operator, new_bulk),
            row[1],
            cpu_id="c",
            registration_key=row[0],
        )
    )
    assert claim["device_id"] == listed["id"]


async def test_a_rename_shows_everywhere_and_keeps_the_device_working(
    system: System, session: aiohttp.ClientSession, operator: Operator
) -> None:
    _, code = await _auto_product(operator, [{"type": "ssh", "port": 22}])
    hardware_id = uuid.uuid4().hex[:12]
    claim = _claimed(await register(session, system.device_url, code, hardware_id))
    await provision(session, system.device_url, claim)
    name = f"Lobby {hardware_id[:6]}"

    renamed = await operator.call(
        "POST", f"/v1/devices/{claim['device_id']}/rename", {"name": f" {name} "}, expect=200
    )

    assert renamed["name"] == name
    assert renamed["audit_events"][0]["changes"]["name"] == {"from": hardware_id, "to": name}
    found = await operator.devices(name_prefix=name[:9].replace(" ", "%20"))
    assert [d["id"] for d in found] == [claim["device_id"]]
    # Same credentials: the manifest is there, its files name the device anew and match.
    status, manifest = await _manifest(session, system, claim["device_id"], claim["device_secret"])
    assert status == 200, manifest
    files = await _files(session, manifest, claim["device_secret"])
    assert all(f"device_name {name}\n".encode() in content for content in files.values())
    await _provisioned(operator, claim["device_id"])


async def test_refusals_name_what_is_wrong_and_change_nothing(
    system: System, session: aiohttp.ClientSession, operator: Operator, stranger: Operator
) -> None:
    product, code = await _auto_product(operator, [{"type": "ssh", "port": 22}])
    target, _ = await _auto_product(operator, [{"type": "ssh", "port": 22}])
    theirs_product, theirs_code = await _auto_product(stranger, [{"type": "ssh", "port": 22}])
    mine = _claimed(await register(session, system.device_url, code, uuid.uuid4().hex[:12]))["device_id"]
    theirs = _claimed(await register(session, system.device_url, theirs_code, uuid.uuid4().hex[:12]))[
        "device_id"
    ]
    reader = Operator(
        session,
        operator.url,
        (await operator.call("POST", "/v1/api-keys", {"read_only": True}, expect=201))["api_key"],
        operator.account_id,
    )

    async def refused(path: str, body: Any, status: int, who: Operator = operator) -> dict[str, Any]:
        answer: dict[str, Any] = await who.call("POST", path, body, expect=status)
        return answer

    assert (await refused(f"/v1/devices/{theirs}/move", {"product_id": target}, 404))["error"] == "not_found"
    assert (await refused(f"/v1/devices/{mine}/move", {"product_id": theirs_product}, 404))[
        "field"
    ] == "product_id"
    assert (await refused(f"/v1/devices/{theirs}/rename", {"name": "x"}, 404))["error"] == "not_found"
    assert (await refused(f"/v1/devices/{mine}/move", {"product_id": target}, 403, reader))[
        "rule"
    ] == "scope=read-only"
    assert (await refused(f"/v1/devices/{mine}/rename", {"name": "x"}, 403, reader))[
        "rule"
    ] == "scope=read-only"
    for path, body, field, rule in (
        ("move", {}, "product_id", "required"),
        ("move", {"product_id": "nope"}, "product_id", "format=uuid"),
        ("move", {"product_id": target, "force": True}, "force", "known_fields"),
        ("rename", {}, "name", "required"),
        ("rename", {"name": 7}, "name", "type=string"),
        ("rename", {"name": "x" * 101}, "name", "max_length=100"),
        ("rename", {"name": "caf\u00e9"}, "name", "charset=[A-Za-z0-9 _.-]"),
        ("rename", {"name": "a", "title": "b"}, "title", "known_fields"),
    ):
        answer = await refused(f"/v1/devices/{mine}/{path}", body, 400)
        assert (answer["field"], answer["rule"]) == (field, rule), answer
    # A name given twice is refused, not the last one taken (the device moved to the second).
    twice = f'{{"product_id": "{target}", "product_id": "{product}"}}'.encode()
    headers = {"Authorization": f"Bearer {operator.api_key}", "Content-Type": "application/json"}
    async with session.post(f"{operator.url}/v1/devices/{mine}/move", data=twice, headers=headers) as r:
        answer = await r.json()
        assert r.status == 400 and (answer["field"], answer["rule"]) == ("product_id", "unique_fields")
    # A path ID is quoted shortened: a 5,000-character one came back whole.
    async with session.post(f"{operator.url}/v1/devices/{'7' * 5000}/move", json={}, headers=headers) as r:
        assert r.status == 404 and len((await r.json())["message"]) < 120
    device = await operator.call("GET", f"/v1/devices/{mine}", expect=200)
    assert (device["product_id"], device["name"], device["audit_events"]) == (
        product,
        device["hardware_id"],
        [],
    )
    assert (await stranger.call("GET", f"/v1/devices/{theirs}", expect=200))["audit_events"] == []


async def test_the_command_moves_and_renames(
    system: System, session: aiohttp.ClientSession, operator: Operator
) -> None:
    _, code = await _auto_product(operator, [{"type": "ssh", "port": 22}])
    target, _ = await _auto_product(operator, [{"type": "web", "port": 80}])
    device_id = _claimed(await register(session, system.device_url, code, uuid.uuid4().hex[:12]))["device_id"]

    renamed = await fleetreg_json(operator, system, "devices", "rename", device_id, "--name", "Pump 9")
    assert renamed["name"] == "Pump 9"
    code_, out, err = await fleetreg(operator, system, "devices", "move", device_id, "--product", target)
    assert code_ == 0, err
    assert f"to product {target}" in out and "old secret no longer works" in out
    code_, out, err = await fleetreg(operator, system, "devices", "move", device_id, "--product", target)
    assert (code_, out) == (1, "") and "409" in err and "already in product" in err
