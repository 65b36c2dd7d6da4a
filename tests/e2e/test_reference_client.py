"""Devices running the reference client (apv/v27 over https), driven exactly as the
protocol page describes, against the running system."""

from __future__ import annotations

import asyncio
import uuid

import aiohttp
import pytest

from tests.support.api import Operator
from tests.support.bulk import bulk_call, bulk_product, csv_rows, csv_text, upload
from tests.support.reference_client import KEYS, ReferenceClient, ReferenceDevice, read_answer
from tests.support.system import System


@pytest.fixture
def client(system: System, session: aiohttp.ClientSession) -> ReferenceClient:
    return ReferenceClient(session, system.compat_url, system.tls_ca)


async def _lifecycle(operator: Operator, hardware_id: str) -> str:
    for _ in range(100):
        found = await operator.devices(hardware_id=hardware_id)
        if found and found[0]["lifecycle"] == "provisioned":
            return "provisioned"
        await asyncio.sleep(0.05)
    return found[0]["lifecycle"] if found else "absent"


def _every_answer_is_readable(client: ReferenceClient) -> None:
    for _method, path, _status, text in client.calls:
        if "/project/provisioning/download/" in path:
            continue
        assert text.startswith("{") and text.endswith("}"), (path, text)
        assert ": " not in text and ", " not in text, (path, text)  # flat and compact
        assert read_answer(text).get("status"), (path, text)


async def test_a_fresh_auto_device_then_a_rerun_then_a_clone_of_its_image(
    client: ReferenceClient, operator: Operator
) -> None:
    code = (await operator.product([{"type": "ssh", "port": 22}, {"type": "web", "port": 80}]))[
        "bulk_identification_code"
    ]
    h = uuid.uuid4().hex[:12]
    device = ReferenceDevice(code, h)
    assert await client.boot(device) == "provisioned"
    assert len(device.files) == 3 and len(device.credentials) == 3
    assert device.hardware_id == h
    assert await _lifecycle(operator, h) == "provisioned"

    # The same device re-run with its files and secret: recognised, not reset, nothing new.
    calls_before = len(client.calls)
    assert await client.boot(device) == "provisioned"
    assert not any("/download/" in c[1] for c in client.calls[calls_before:])
    assert [d["hardware_id"] for d in await operator.devices()] == [h]

    # Another board booting a copy of the SD card (files and secret included): reset to H-1.
    clone = device.clone_image()
    assert await client.boot(clone) == "reset"
    assert clone.hardware_id == f"{h}-1" and clone.files == {}
    assert await client.boot(clone) == "provisioned"
    assert await _lifecycle(operator, f"{h}-1") == "provisioned"
    assert sorted(d["hardware_id"] for d in await operator.devices()) == [h, f"{h}-1"]
    _every_answer_is_readable(client)


async def test_a_factory_reset_device_is_given_the_next_index(
    client: ReferenceClient, operator: Operator
) -> None:
    code = (await operator.product())["bulk_identification_code"]
    h = uuid.uuid4().hex[:12]
    device = ReferenceDevice(code, h)
    assert await client.boot(device) == "provisioned"
    await _lifecycle(operator, h)
    device.factory_reset()  # same board, files and secret wiped
    assert await client.boot(device) == "reset"
    assert device.hardware_id == f"{h}-1"
    assert await client.boot(device) == "provisioned"


async def test_bulk_devices_with_the_right_key_a_wrong_key_and_not_in_the_csv(
    system: System, session: aiohttp.ClientSession, client: ReferenceClient, operator: Operator
) -> None:
    product_id = await bulk_product(operator)
    rows = csv_rows(3)
    status, registration = await upload(
        session, system.bulk_url, operator, product_id, csv_text(rows).encode()
    )
    assert status == 201
    await bulk_call(
        session, system.bulk_url, operator, "POST", f"/v1/bulk-registrations/{registration['id']}/publish"
    )
    for _ in range(100):
        _, state = await bulk_call(
            session, system.bulk_url, operator, "GET", f"/v1/bulk-registrations/{registration['id']}"
        )
        if state["status"] == "preregistered":
            break
        await asyncio.sleep(0.1)
    code = (await operator.call("GET", f"/v1/products/{product_id}", expect=200))["bulk_identification_code"]

    key, hardware_id, name = rows[0]
    listed = ReferenceDevice(code, hardware_id, registration_key=key)
    assert await client.boot(listed) == "provisioned"
    device = (await operator.devices(hardware_id=hardware_id))[0]
    assert device["name"] == name
    assert await _lifecycle(operator, hardware_id) == "provisioned"

    wrong_key = ReferenceDevice(code, rows[1][1], registration_key="wrong")
    unlisted = ReferenceDevice(code, "0badc0ffee00", registration_key=rows[2][0])
    wrong, missing = await client.boot(wrong_key), await client.boot(unlisted)
    assert wrong.startswith("failed: ")
    assert wrong == missing  # the same answer: no hint whether the hardware ID is listed
    assert (await operator.devices(hardware_id=rows[1][1]))[0]["lifecycle"] == "preregistered"
    _every_answer_is_readable(client)


async def test_a_paused_registration_and_an_unknown_code_are_refused_with_a_reason(
    client: ReferenceClient, operator: Operator
) -> None:
    registration = await operator.product()
    await operator.call("POST", f"/v1/auto-registrations/{registration['id']}/pause", expect=200)
    paused = await client.boot(ReferenceDevice(registration["bulk_identification_code"], "aabbccddeeff"))
    assert paused == "failed: auto registration paused by the operator"
    unknown = await client.boot(ReferenceDevice(str(uuid.uuid4()).upper(), "aabbccddeeff"))
    assert unknown == "failed: unknown bulk identification code"
    assert await operator.devices() == []
    _every_answer_is_readable(client)


async def test_the_provisioning_download_is_200_only_with_a_valid_file(
    system: System, session: aiohttp.ClientSession, client: ReferenceClient, operator: Operator
) -> None:
    code = (await operator.product())["bulk_identification_code"]
    status, content = await client._call("GET", f"/project/provisioning/download/{code}")
    assert status == 200 and content.splitlines()[:2] == ["#begin", code]
    for unknown in (str(uuid.uuid4()).upper(), "not-an-id"):
        status, _ = await client._call("GET", f"/project/provisioning/download/{unknown}")
        assert status == 404


async def test_the_https_endpoint_needs_the_local_ca(system: System, session: aiohttp.ClientSession) -> None:
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        async with session.get(system.compat_url + "/project/provisioning/download/x"):
            pass


def test_the_reference_key_words_are_the_protocol_pages() -> None:
    assert {"status", "uid", "secret", "projects", "reason", "HardwareId"} <= set(KEYS)
