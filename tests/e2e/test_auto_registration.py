"""Auto registration end to end: the running services on the real broker and database."""

from __future__ import annotations

import asyncio
import uuid

import aiohttp

from shared.db.pool import Pool
from tests.support.api import Operator, new_operator, provision, register
from tests.support.system import System

CLONES = 200


def hardware_id() -> str:
    return uuid.uuid4().hex[:12]


async def test_a_device_registers_downloads_its_files_and_confirms(
    system: System, session: aiohttp.ClientSession, operator: Operator
) -> None:
    registration = await operator.product([{"type": "ssh", "port": 22}, {"type": "web", "port": 80}])
    h = hardware_id()
    answer = await register(
        session, system.device_url, registration["bulk_identification_code"], h, cpu_id="cpu-1", mac="mac-1"
    )
    assert answer.status == 200, answer.body
    assert answer.body["status"] == "ready"
    assert answer.body["hardware_id"] == h
    assert answer.body["decision"] == "new"
    assert answer.body["clone"] is False

    manifest = await provision(session, system.device_url, answer.body)
    # One file per enabled service: the bulk service, ssh and web.
    assert [f["type"] for f in manifest["files"]] == ["rmt3", "ssh", "web"]

    devices = await operator.devices()
    assert [(d["hardware_id"], d["name"]) for d in devices] == [(h, h)]
    for _ in range(100):
        device = await operator.call("GET", f"/v1/devices/{answer.body['device_id']}", expect=200)
        if device["lifecycle"] == "provisioned":
            break
        await asyncio.sleep(0.1)
    assert device["lifecycle"] == "provisioned"
    assert device["state"] == "online"  # the confirmation counts as a sign of life
    assert [h["kind"] for h in device["history"]] == ["registration", "ready"]


async def test_200_clones_booting_at_once_get_h_and_h1_to_h199_exactly_once(
    system: System, session: aiohttp.ClientSession, operator: Operator
) -> None:
    code = (await operator.product())["bulk_identification_code"]
    h = hardware_id()
    answers = await asyncio.gather(
        *[
            register(session, system.device_url, code, h, cpu_id=f"cpu-{i}", mac=f"mac-{i}")
            for i in range(CLONES)
        ]
    )
    assert all(a.status == 200 for a in answers), [a.body for a in answers if a.status != 200][:3]
    assigned = sorted(a.body["hardware_id"] for a in answers)
    expected = sorted([h] + [f"{h}-{n}" for n in range(1, CLONES)])
    assert assigned == expected
    assert sum(1 for a in answers if a.body["clone"]) == CLONES - 1
    stored = await operator.devices()
    assert sorted(d["hardware_id"] for d in stored) == expected


async def test_a_retry_whose_response_was_lost_gets_the_same_registration(
    system: System, session: aiohttp.ClientSession, operator: Operator
) -> None:
    code = (await operator.product())["bulk_identification_code"]
    h = hardware_id()
    first = await register(session, system.device_url, code, h, cpu_id="c", mac="m", idempotency_key="boot-1")
    # Same idempotency key: same answer.
    again = await register(session, system.device_url, code, h, cpu_id="c", mac="m", idempotency_key="boot-1")
    # A device that sends no key: the same fingerprint, before confirmation, is still the
    # same device (never H-1), with new credentials (docs/security.md, "The window before ready").
    h2 = hardware_id()
    unkeyed = await register(session, system.device_url, code, h2, cpu_id="c2", mac="m2")
    retry = await register(session, system.device_url, code, h2, cpu_id="c2", mac="m2")
    for original, answer in ((first, again), (unkeyed, retry)):
        assert answer.status == 200
        assert answer.body["device_id"] == original.body["device_id"]
        assert answer.body["hardware_id"] == original.body["hardware_id"]
        assert answer.body["decision"] == "same"
    assert again.body["device_secret"] == first.body["device_secret"]
    assert retry.body["device_secret"] != unkeyed.body["device_secret"]
    assert len(await operator.devices()) == 2


async def test_a_clone_retrying_a_lost_response_keeps_its_index(
    system: System, session: aiohttp.ClientSession, operator: Operator
) -> None:
    code = (await operator.product())["bulk_identification_code"]
    h = hardware_id()
    await register(session, system.device_url, code, h, cpu_id="original", mac="m0")
    clone = await register(session, system.device_url, code, h, cpu_id="clone", mac="m1")
    retry = await register(session, system.device_url, code, h, cpu_id="clone", mac="m1")
    assert clone.body["hardware_id"] == f"{h}-1"
    assert retry.body["hardware_id"] == f"{h}-1"
    assert retry.body["device_id"] == clone.body["device_id"]
    assert retry.body["clone"] is True  # the device is told its new hardware ID again
    assert sorted(d["hardware_id"] for d in await operator.devices()) == [h, f"{h}-1"]


async def test_a_device_presenting_its_secret_after_a_reboot_is_recognised(
    system: System, session: aiohttp.ClientSession, operator: Operator
) -> None:
    code = (await operator.product())["bulk_identification_code"]
    h = hardware_id()
    first = await register(session, system.device_url, code, h, cpu_id="c", mac="m")
    await provision(session, system.device_url, first.body)
    await _until_provisioned(operator, first.body["device_id"])

    reboot = await register(
        session, system.device_url, code, h, cpu_id="c", mac="m", secret=first.body["device_secret"]
    )
    assert reboot.body["decision"] == "same"
    assert reboot.body["device_id"] == first.body["device_id"]
    # After confirmation, the same fingerprint without the secret is a factory reset: a clone.
    wiped = await register(session, system.device_url, code, h, cpu_id="c", mac="m")
    assert wiped.body["decision"] == "clone"
    assert wiped.body["hardware_id"] == f"{h}-1"
    history = (await operator.call("GET", f"/v1/devices/{first.body['device_id']}", expect=200))["history"]
    decisions = [e["decision"] for e in history if e["kind"] == "registration"]
    assert decisions == ["new", "same"]


async def test_an_operator_reset_lets_the_device_register_again_as_itself(
    system: System, session: aiohttp.ClientSession, operator: Operator
) -> None:
    code = (await operator.product())["bulk_identification_code"]
    h = hardware_id()
    first = await register(session, system.device_url, code, h, cpu_id="c", mac="m")
    await provision(session, system.device_url, first.body)
    await _until_provisioned(operator, first.body["device_id"])
    await operator.call("POST", f"/v1/devices/{first.body['device_id']}/reset", expect=200)

    again = await register(session, system.device_url, code, h, cpu_id="new-board", mac="m")
    assert again.body["device_id"] == first.body["device_id"]
    assert again.body["hardware_id"] == h
    assert again.body["device_secret"] != first.body["device_secret"]  # the old secret is void
    old = await register(session, system.device_url, code, h, secret=first.body["device_secret"])
    assert old.body["hardware_id"] == f"{h}-1"


async def test_a_disabled_device_is_refused(
    system: System, session: aiohttp.ClientSession, operator: Operator
) -> None:
    code = (await operator.product())["bulk_identification_code"]
    h = hardware_id()
    first = await register(session, system.device_url, code, h, cpu_id="c", mac="m")
    await operator.call("POST", f"/v1/devices/{first.body['device_id']}/disable", expect=200)
    again = await register(session, system.device_url, code, h, secret=first.body["device_secret"])
    assert again.status == 403
    assert again.body["reason"] == "device disabled by the operator"
    auth = {"Authorization": f"Bearer {first.body['device_secret']}"}
    async with session.get(
        f"{system.device_url}/v1/devices/{first.body['device_id']}/manifest", headers=auth
    ) as r:
        assert r.status == 403


async def test_paused_rotated_and_unknown_codes_are_refused_and_create_nothing(
    system: System, session: aiohttp.ClientSession, operator: Operator
) -> None:
    registration = await operator.product()
    code = registration["bulk_identification_code"]
    await operator.call("POST", f"/v1/auto-registrations/{registration['id']}/pause", expect=200)
    paused = await register(session, system.device_url, code, hardware_id())
    assert (paused.status, paused.body["reason"]) == (403, "auto registration paused by the operator")

    await operator.call("POST", f"/v1/auto-registrations/{registration['id']}/resume", expect=200)
    rotated = await operator.call(
        "POST", f"/v1/auto-registrations/{registration['id']}/rotate-code", expect=200
    )
    assert rotated["bulk_identification_code"] != code
    old = await register(session, system.device_url, code, hardware_id())
    assert (old.status, old.body["reason"]) == (
        403,
        "bulk identification code revoked: the operator rotated it",
    )

    unknown = await register(session, system.device_url, str(uuid.uuid4()).upper(), hardware_id())
    assert (unknown.status, unknown.body["reason"]) == (403, "unknown bulk identification code")
    assert await operator.devices() == []

    fresh = await register(session, system.device_url, rotated["bulk_identification_code"], hardware_id())
    assert fresh.status == 200


async def test_a_code_registers_into_its_own_account_only(
    system: System, session: aiohttp.ClientSession, operator: Operator, pool: Pool
) -> None:
    other = await new_operator(session, pool, system.operator_url)
    other_registration = await other.product()
    answer = await register(session, system.device_url, other_registration["bulk_identification_code"], "abc")
    assert answer.status == 200
    assert await operator.devices() == []
    assert [d["hardware_id"] for d in await other.devices()] == ["abc"]
    # Nor can one account see or change another's registration or devices.
    await operator.call("GET", f"/v1/auto-registrations/{other_registration['id']}", expect=404)
    await operator.call("POST", f"/v1/auto-registrations/{other_registration['id']}/pause", expect=404)
    await operator.call("GET", f"/v1/devices/{answer.body['device_id']}", expect=404)


async def test_a_heartbeat_keeps_a_device_online(
    system: System, session: aiohttp.ClientSession, operator: Operator
) -> None:
    code = (await operator.product())["bulk_identification_code"]
    first = await register(session, system.device_url, code, hardware_id(), cpu_id="c", mac="m")
    await provision(session, system.device_url, first.body)
    await _until_provisioned(operator, first.body["device_id"])
    auth = {"Authorization": f"Bearer {first.body['device_secret']}"}
    async with session.post(
        f"{system.device_url}/v1/devices/{first.body['device_id']}/heartbeat", headers=auth
    ) as r:
        assert r.status == 202
    online = await operator.devices(state="online")
    assert [d["id"] for d in online] == [first.body["device_id"]]
    assert await operator.devices(state="offline") == []


async def _until_provisioned(operator: Operator, device_id: str) -> None:
    for _ in range(200):
        device = await operator.call("GET", f"/v1/devices/{device_id}", expect=200)
        if device["lifecycle"] == "provisioned":
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"device {device_id} never became provisioned")
