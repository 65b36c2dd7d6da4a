"""What a device holder cannot do, on the running services: keep using a secret after
the operator's reset or disable (on two intake instances), learn a code from any ID a
device is given, or get a look-alike's secret; and what the reference protocol says to
an address it throttles."""

from __future__ import annotations

import asyncio
import ssl
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.support.api import Operator, provision, register
from tests.support.system import ServiceProcess, System

pytestmark = pytest.mark.e2e

RESETS = 10


@pytest.fixture(scope="module")
async def second_intake(system: System) -> AsyncIterator[ServiceProcess]:
    process = await system.add_instance("intake")
    yield process
    process.stop()
    system.extra.remove(process)


async def status_of(session: aiohttp.ClientSession, url: str, secret: str) -> int:
    async with session.get(url, headers={"Authorization": f"Bearer {secret}"}) as response:
        return response.status


# The promise is the invalidation's delivery time (docs/security.md): milliseconds on a
# quiet machine; a loaded 2-core CI runner can deliver the notification after the very
# next request, so the refusal is awaited up to this bound, never longer.
DELIVERY_BOUND_S = 1.0


async def refused_within(session: aiohttp.ClientSession, url: str, secret: str, expected: int) -> float:
    """Seconds until ``url`` answers ``expected`` to the old secret (fails past the bound)."""
    started = time.perf_counter()
    while (status := await status_of(session, url, secret)) != expected:
        assert status == 200, status
        assert time.perf_counter() - started < DELIVERY_BOUND_S, f"{url} still served the old secret"
        await asyncio.sleep(0.005)
    return time.perf_counter() - started


async def test_reset_and_disable_bite_at_once_on_every_intake(
    system: System, second_intake: ServiceProcess, operator: Operator, session: aiohttp.ClientSession
) -> None:
    """After the operator's answer, both instances see the change within the invalidation's
    delivery time: the old secret is refused and the new one served. Each round first
    warms both instances' caches with the current secret."""
    code = (await operator.product())["bulk_identification_code"]
    intakes = [system.device_url, second_intake.url]
    hardware_id = uuid.uuid4().hex[:12]
    answer = await register(session, intakes[0], code, hardware_id, cpu_id="c", mac="m")
    await provision(session, intakes[0], answer.body)
    device_id, secret = answer.body["device_id"], answer.body["device_secret"]
    manifest = [f"{url}/v1/devices/{device_id}/manifest" for url in intakes]
    delays: list[float] = []
    for _ in range(RESETS):
        assert [await status_of(session, url, secret) for url in manifest] == [200, 200]  # cached now
        await operator.call("POST", f"/v1/devices/{device_id}/reset", expect=200)
        delays.extend([await refused_within(session, url, secret, 401) for url in manifest])
        again = await register(
            session, intakes[1], code, hardware_id, cpu_id="c", mac="m", idempotency_key=str(uuid.uuid4())
        )
        assert again.status == 200, again.body
        secret = again.body["device_secret"]
        assert [await status_of(session, url, secret) for url in manifest] == [200, 200]
    await operator.call("POST", f"/v1/devices/{device_id}/disable", expect=200)
    for url in manifest:
        await refused_within(session, url, secret, 403)
    print(f"old secret refused after reset, {RESETS} rounds x 2 instances: max {max(delays) * 1000:.1f} ms")


async def test_no_id_a_device_receives_reveals_a_code(
    system: System, operator: Operator, session: aiohttp.ClientSession
) -> None:
    registration = await operator.product([{"type": "ssh", "port": 22}, {"type": "web", "port": 80}])
    code = registration["bulk_identification_code"]
    answer = await register(session, system.device_url, code, uuid.uuid4().hex[:12], cpu_id="c", mac="m")
    manifest = await provision(session, system.device_url, answer.body)
    received: list[str] = [answer.body["device_id"], answer.body["request_id"]]
    received += [f["provisioning_id"] for f in manifest["files"]]
    texts: list[str] = [str(answer.body), str(manifest)]
    auth = {"Authorization": f"Bearer {answer.body['device_secret']}"}
    for item in manifest["files"]:
        async with session.get(item["url"], headers=auth) as r:
            texts.append(await r.text())
    rotated = await operator.call(
        "POST", f"/v1/auto-registrations/{registration['id']}/rotate-code", expect=200
    )
    new_code = rotated["bulk_identification_code"]
    ctx = ssl.create_default_context(cafile=str(system.tls_ca))
    for identifier in received:
        for variant in (identifier, identifier.upper(), identifier.lower()):
            async with session.get(
                f"{system.compat_url}/project/provisioning/download/{variant}", ssl=ctx
            ) as r:
                texts.append(await r.text())
            async with session.get(
                f"{system.compat_url}/bulk/registration/configuration/{variant}/x/", ssl=ctx
            ) as r:
                texts.append(await r.text())
    # The old code is revoked: it opens nothing any more, not even its own file.
    async with session.get(f"{system.compat_url}/project/provisioning/download/{code}", ssl=ctx) as r:
        assert r.status == 404
    for text in texts:
        assert new_code not in text.upper()
    assert all(code not in text.upper() for text in texts[2:])
    # The reference client, which holds the (new) code, still gets its file.
    async with session.get(f"{system.compat_url}/project/provisioning/download/{new_code}", ssl=ctx) as r:
        assert r.status == 200
        assert (await r.text()).splitlines()[1] == new_code


async def test_a_look_alike_before_ready_gets_no_secret_the_device_was_given(
    system: System, operator: Operator, session: aiohttp.ClientSession
) -> None:
    """docs/security.md, "The window before ready": the same Idempotency-Key is the same
    answer; a caller with the device's hardware ID and fingerprint but another key (or
    none) gets the device with new credentials, never the secret the device was given,
    which stops working (and the device, reclaiming, revokes the look-alike's in turn)."""
    code = (await operator.product())["bulk_identification_code"]
    hardware_id = uuid.uuid4().hex[:12]
    key = str(uuid.uuid4())
    first = await register(
        session, system.device_url, code, hardware_id, cpu_id="cpu", mac="mac", idempotency_key=key
    )
    retry = await register(
        session, system.device_url, code, hardware_id, cpu_id="cpu", mac="mac", idempotency_key=key
    )
    assert retry.body["device_id"] == first.body["device_id"]
    assert retry.body["device_secret"] == first.body["device_secret"]
    look_alike = await register(session, system.device_url, code, hardware_id, cpu_id="cpu", mac="mac")
    assert (look_alike.body["device_id"], look_alike.body["clone"]) == (first.body["device_id"], False)
    assert look_alike.body["device_secret"] != first.body["device_secret"]
    manifest = f"{system.device_url}/v1/devices/{first.body['device_id']}/manifest"
    assert await status_of(session, manifest, first.body["device_secret"]) == 401
    trail = await operator.call("GET", "/v1/registration-decisions?limit=100", expect=200)
    assert sorted(d["decision"] for d in trail["decisions"]) == ["new", "same", "same"]


def read(text: str) -> dict[str, Any]:
    """The reference client's way of reading an answer (flat key:value parts)."""
    parts = text.strip("{}").replace('"', "").split(",")
    return dict(p.split(":", 1) for p in parts if ":" in p)


async def test_the_reference_protocol_throttles_in_its_own_words(system: System) -> None:
    from tests.e2e.test_throttling import DEFAULTS
    from tests.support.sources import fresh_address, from_address

    intake = await system.add_instance("intake", DEFAULTS)
    try:
        base = f"https://127.0.0.1:{intake.env['FLEETREG_COMPAT_PORT']}/apv/v27"
        ctx = ssl.create_default_context(cafile=str(system.tls_ca))
        unknown = str(uuid.uuid4()).upper()
        async with from_address(fresh_address()) as guesser:
            answers = []
            for i in range(35):  # a code of its own each time: the address's limit, not a code's
                body = {"BulkIdentificationCode": str(uuid.uuid4()).upper(), "HardwareId": f"h{i}"}
                async with guesser.post(
                    f"{base}/bulk/registration/device/information/", json=body, ssl=ctx
                ) as r:
                    assert r.status == 200
                    answers.append(read(await r.text()))
            assert [a["status"] for a in answers] == ["false"] * 35
            assert answers[0]["reason"] == "unknown bulk identification code"
            assert answers[-1]["reason"].startswith("too many refused calls from this address")
            body = {"project_id": unknown, "hardware_id": "h", "registration_key": "k"}
            async with guesser.post(f"{base}/bulk/registration/register", json=body, ssl=ctx) as r:
                register_answer = read(await r.text())
            assert register_answer["status"] == "pending"
            assert register_answer["reason"].startswith("too many refused calls")
            async with guesser.get(f"{base}/project/provisioning/download/{unknown}", ssl=ctx) as r:
                assert r.status == 429 and int(r.headers["Retry-After"]) >= 1
    finally:
        intake.stop()
        system.extra.remove(intake)


async def test_the_reference_protocol_gives_a_keyed_device_s_secret_to_no_look_alike(
    system: System, operator: Operator, session: aiohttp.ClientSession
) -> None:
    """A native device registered with an Idempotency-Key, not yet ready. Someone with
    the code and the device's hardware ID, CPU ID and MAC reports them at apv/v27 step 1
    and asks step 5 for the bulk service and a service: no secret of that device."""
    registration = await operator.product()
    code = registration["bulk_identification_code"]
    hardware_id = uuid.uuid4().hex[:12]
    victim = await register(
        session, system.device_url, code, hardware_id, cpu_id="cpu-v", mac="mac-v", idempotency_key="k-v"
    )
    manifest = await session.get(
        f"{system.device_url}/v1/devices/{victim.body['device_id']}/manifest",
        headers={"Authorization": f"Bearer {victim.body['device_secret']}"},
    )
    services = [f["provisioning_id"] for f in (await manifest.json())["files"]]
    ctx = ssl.create_default_context(cafile=str(system.tls_ca))
    base = system.compat_url
    info = {
        "BulkIdentificationCode": code,
        "HardwareId": hardware_id,
        "CPUId": "cpu-v",
        "MACAddress": "mac-v",
    }
    async with session.post(f"{base}/bulk/registration/device/information/", json=info, ssl=ctx) as r:
        assert read(await r.text())["status"] == "true"
    answers = []
    for project_id in [code, *services]:
        body = {"project_id": project_id, "hardware_id": hardware_id, "registration_key": ""}
        async with session.post(f"{base}/bulk/registration/register", json=body, ssl=ctx) as r:
            answers.append(await r.text())
    for text in answers:
        assert read(text)["status"] == "false", text
        assert victim.body["device_secret"] not in text
        assert "secret" not in read(text)


@pytest.mark.parametrize(
    "spelling",
    [
        "{{{id}}}",
        "urn:uuid:{id}",
        "{id}-",
        "{hex}",
    ],
)
async def test_no_spelling_of_an_id_makes_a_server_error(
    system: System, operator: Operator, session: aiohttp.ClientSession, spelling: str
) -> None:
    """Python's uuid.UUID takes these spellings, Postgres does not: each is a 4xx."""
    registration = await operator.product()
    answer = await register(
        session, system.device_url, registration["bulk_identification_code"], uuid.uuid4().hex[:12]
    )
    device_id = answer.body["device_id"]
    odd = spelling.format(id=device_id, hex=device_id.replace("-", ""))
    auth = {"Authorization": f"Bearer {answer.body['device_secret']}"}
    statuses = []
    async with session.get(f"{system.device_url}/v1/devices/{odd}/manifest", headers=auth) as r:
        statuses.append(r.status)
    async with session.get(f"{system.device_url}/v1/registrations/{odd}") as r:
        statuses.append(r.status)
    op = {"Authorization": f"Bearer {operator.api_key}"}
    async with session.get(f"{operator.url}/v1/devices/{odd}", headers=op) as r:
        statuses.append(r.status)
    async with session.patch(
        f"{operator.url}/v1/auto-registrations/{spelling.format(id=registration['id'], hex='x')}",
        json={"max_devices": 5},
        headers=op,
    ) as r:
        statuses.append(r.status)
    async with session.post(f"{operator.url}/v1/devices/reset", json={"device_ids": [odd]}, headers=op) as r:
        statuses.append(r.status)
    async with session.get(f"{operator.url}/v1/devices?registration_id={odd}", headers=op) as r:
        statuses.append(r.status)
    async with session.get(f"{system.bulk_url}/v1/bulk-registrations/{odd}", headers=op) as r:
        statuses.append(r.status)
    assert all(400 <= s < 500 for s in statuses), statuses


async def test_nobody_elsewhere_can_swap_a_rebooting_device_s_step_1_record(
    system: System, operator: Operator, session: aiohttp.ClientSession
) -> None:
    """apv/v27 steps 1 and 2 are linked only by code and hardware ID. An attacker who
    writes step 1 for a provisioned device's hardware ID between the device's own steps
    1 and 2 (from another address) must not turn the real device into a clone."""
    from tests.support.reference_client import ReferenceClient, ReferenceDevice
    from tests.support.sources import fresh_address, from_address

    code = (await operator.product())["bulk_identification_code"]
    client = ReferenceClient(session, system.compat_url, system.tls_ca)
    device = ReferenceDevice(code, uuid.uuid4().hex[:12])
    assert await client.boot(device) == "provisioned"
    ctx = ssl.create_default_context(cafile=str(system.tls_ca))
    info = {
        "BulkIdentificationCode": code,
        "HardwareId": device.hardware_id,
        "CPUId": device.cpu_id,
        "MACAddress": device.mac,
        "DeviceSecret": device.device_secret,
    }
    await client._call("POST", "/bulk/registration/device/information/", info)  # the reboot's step 1
    forged = {**info, "CPUId": "attacker", "MACAddress": "attacker", "DeviceSecret": ""}
    async with (
        from_address(fresh_address()) as attacker,
        attacker.post(
            f"{system.compat_url}/bulk/registration/device/information/", json=forged, ssl=ctx
        ) as r,
    ):
        assert read(await r.text())["status"] == "true"
    _, text = await client._call(
        "GET", f"/bulk/registration/device/friendly/configuration/{code}/{device.hardware_id}/"
    )
    assert read(text)["status"] == "true", text  # not "reset": still the same device
    assert [d["hardware_id"] for d in await operator.devices()] == [device.hardware_id]


async def test_a_disabled_device_is_refused_at_the_reference_ready_step(
    system: System, operator: Operator, session: aiohttp.ClientSession
) -> None:
    from tests.support.reference_client import ReferenceClient, ReferenceDevice

    code = (await operator.product())["bulk_identification_code"]
    client = ReferenceClient(session, system.compat_url, system.tls_ca)
    device = ReferenceDevice(code, uuid.uuid4().hex[:12])
    assert await client.boot(device) == "provisioned"
    (found,) = await operator.devices(hardware_id=device.hardware_id)
    await operator.call("POST", f"/v1/devices/{found['id']}/disable", expect=200)
    ready = {
        "BulkIdentificationCode": code,
        "HardwareId": device.hardware_id,
        "DeviceSecret": device.device_secret,
    }
    _, text = await client._call("POST", "/bulk/registration/device/ready/", ready)
    assert read(text) == {"status": "false", "reason": "device disabled by the operator"}


async def test_old_step_1_records_are_forgotten_and_fresh_ones_kept(operator: Operator, pool: Any) -> None:
    """Anyone with the code can write a step-1 record for any hardware ID: the intake
    deletes those older than the retention, so the table stays bounded."""
    from shared.db import compat

    code = (await operator.product())["bulk_identification_code"]
    for hardware_id in ("old-one", "fresh-one"):
        assert await compat.record_information(pool, code, hardware_id, "fp", "", "", "192.0.2.1")
    await pool.execute(
        "UPDATE device_information SET updated_at = now() - interval '2 days'"
        " WHERE bulk_identification_code = $1 AND hardware_id = 'old-one'",
        code,
    )
    assert await compat.forget_information(pool, 86400, batch=1) >= 1
    left = await pool.fetch(
        "SELECT hardware_id FROM device_information WHERE bulk_identification_code = $1", code
    )
    assert [r["hardware_id"] for r in left] == ["fresh-one"]
