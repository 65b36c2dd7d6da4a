"""The two-call boot of a native device (issue 12, item 3): ``POST /v1/registrations?include=files``
answers the manifest with every file inline, so a device boots with register + ready. The
files hold service passwords: they go out only beside the device secret (registered, not
confirmed, not disabled). Without the flag the answer is what it always was."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from typing import Any

import aiohttp
import pytest

from tests.support.api import DeviceAnswer, Operator, register
from tests.support.system import System

pytestmark = pytest.mark.e2e

# What a ready answer held before the two-call boot (the device secret aside).
READY_FIELDS = {
    "status",
    "request_id",
    "device_id",
    "hardware_id",
    "claimed_hardware_id",
    "clone",
    "decision",
    "manifest_url",
}


def hardware_id() -> str:
    return uuid.uuid4().hex[:12]


def auth(answer: DeviceAnswer) -> dict[str, str]:
    return {"Authorization": f"Bearer {answer.body['device_secret']}"}


def checked_files(answer: DeviceAnswer) -> dict[str, bytes]:
    """What a device does with a two-call boot answer: every inline file checked against
    its size and SHA-256 before it is written; the files by name."""
    manifest = answer.body["manifest"]
    assert manifest["device_id"] == answer.body["device_id"]
    assert manifest["hardware_id"] == answer.body["hardware_id"]
    assert manifest["files"]
    written = {}
    for item in manifest["files"]:
        content = item["content"].encode("ascii")
        assert len(content) == item["size"], item["name"]
        assert hashlib.sha256(content).hexdigest() == item["sha256"], item["name"]
        written[item["name"]] = content
    return written


async def served(
    session: aiohttp.ClientSession, url: str, answer: DeviceAnswer
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The manifest and the files as the per-file endpoints serve them (the five-call way)."""
    base = answer.body["manifest_url"].removesuffix("/manifest")
    async with session.get(url + answer.body["manifest_url"], headers=auth(answer)) as r:
        assert r.status == 200, await r.text()
        manifest: dict[str, Any] = await r.json()
    files = {}
    for item in manifest["files"]:
        async with session.get(item["url"], headers=auth(answer)) as r:
            assert r.status == 200
            files[item["name"]] = await r.read()
        assert item["url"].endswith(f"{base}/files/{item['name']}")
    return manifest, files


async def confirm(
    session: aiohttp.ClientSession, system: System, operator: Operator, answer: DeviceAnswer
) -> None:
    """The device's "ready" (accepted: 202), then until the registry shows it provisioned."""
    url = system.device_url + answer.body["manifest_url"].replace("/manifest", "/ready")
    async with session.post(url, headers=auth(answer)) as r:
        assert r.status == 202
    await until_provisioned(operator, answer.body["device_id"])


async def until_provisioned(operator: Operator, device_id: str) -> None:
    for _ in range(100):
        device = await operator.call("GET", f"/v1/devices/{device_id}", expect=200)
        if device["lifecycle"] == "provisioned":
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the device never became provisioned")


async def test_a_device_boots_with_two_calls_and_its_inline_files_are_the_served_ones(
    system: System, session: aiohttp.ClientSession, operator: Operator
) -> None:
    registration = await operator.product([{"type": "ssh", "port": 22}, {"type": "web", "port": 80}])
    code, h = registration["bulk_identification_code"], hardware_id()
    calls: list[str] = []

    async def count(_: Any, __: Any, params: aiohttp.TraceRequestStartParams) -> None:
        calls.append(f"{params.method} {params.url.path}")

    tracing = aiohttp.TraceConfig()
    tracing.on_request_start.append(count)
    async with aiohttp.ClientSession(trace_configs=[tracing]) as device:
        body = {
            "bulk_identification_code": code,
            "hardware_id": h,
            "fingerprint": {"cpu_id": "c", "mac": "m"},
        }
        headers = {"Idempotency-Key": str(uuid.uuid4())}
        async with device.post(
            f"{system.device_url}/v1/registrations?include=files", json=body, headers=headers
        ) as r:
            answer = DeviceAnswer(r.status, await r.json())
        assert answer.status == 200, answer.body
        written = checked_files(answer)
        async with device.post(
            f"{system.device_url}/v1/devices/{answer.body['device_id']}/ready", headers=auth(answer)
        ) as r:
            assert r.status == 202
    assert calls == ["POST /v1/registrations", f"POST /v1/devices/{answer.body['device_id']}/ready"]

    assert set(answer.body) == READY_FIELDS | {"device_secret", "manifest"}
    assert answer.body["decision"] == "new" and answer.body["hardware_id"] == h
    # The bulk service, ssh and web; each file exactly what its endpoint serves.
    manifest, files = await served(session, system.device_url, answer)
    assert [f["type"] for f in answer.body["manifest"]["files"]] == ["rmt3", "ssh", "web"]
    assert written == files
    assert [
        {k: v for k, v in f.items() if k != "content"} for f in answer.body["manifest"]["files"]
    ] == manifest["files"]
    assert {k: v for k, v in answer.body["manifest"].items() if k != "files"} == {
        k: v for k, v in manifest.items() if k != "files"
    }
    await until_provisioned(operator, answer.body["device_id"])


async def test_without_the_flag_the_answer_has_no_files(
    system: System, session: aiohttp.ClientSession, operator: Operator
) -> None:
    code = (await operator.product())["bulk_identification_code"]
    answer = await register(session, system.device_url, code, hardware_id(), cpu_id="c", mac="m")
    assert answer.status == 200
    assert set(answer.body) == READY_FIELDS | {"device_secret"}
    async with session.get(f"{system.device_url}/v1/registrations/{answer.body['request_id']}") as r:
        polled = await r.json()
    assert r.status == 200 and set(polled) == READY_FIELDS | {"device_secret"}


async def test_a_pending_device_polling_with_the_flag_gets_its_files_when_ready(
    system: System, session: aiohttp.ClientSession, operator: Operator
) -> None:
    impatient = await system.add_instance("intake", {"FLEETREG_OUTCOME_WAIT_SECONDS": "0"})
    try:
        code = (await operator.product())["bulk_identification_code"]
        first = await register(
            session, impatient.url, code, hardware_id(), cpu_id="c", mac="m", include="files", settle=False
        )
        assert first.status == 202 and first.body["status"] == "pending", first.body
        answer = first
        for _ in range(300):
            async with session.get(
                f"{impatient.url}/v1/registrations/{first.body['request_id']}?include=files"
            ) as r:
                answer = DeviceAnswer(r.status, await r.json())
            if answer.status != 202:
                break
            await asyncio.sleep(0.1)
        assert answer.status == 200, answer.body
        written = checked_files(answer)
        assert written == (await served(session, impatient.url, answer))[1]
        # The same poll without the flag: the answer it always was.
        async with session.get(f"{impatient.url}/v1/registrations/{first.body['request_id']}") as r:
            assert set(await r.json()) == READY_FIELDS | {"device_secret"}
    finally:
        impatient.stop()
        system.extra.remove(impatient)


async def test_after_ready_neither_a_poll_nor_a_second_registration_gets_secrets_or_files(
    system: System, session: aiohttp.ClientSession, operator: Operator
) -> None:
    code = (await operator.product())["bulk_identification_code"]
    h, key = hardware_id(), str(uuid.uuid4())
    first = await register(
        session, system.device_url, code, h, cpu_id="c", mac="m", idempotency_key=key, include="files"
    )
    assert first.status == 200 and checked_files(first)
    await confirm(session, system, operator, first)

    async with session.get(
        f"{system.device_url}/v1/registrations/{first.body['request_id']}?include=files"
    ) as r:
        polled = await r.json()
    assert r.status == 200 and set(polled) == READY_FIELDS, polled

    # The same device again (its key, fingerprint and secret): recognised, handed nothing.
    again = await register(
        session,
        system.device_url,
        code,
        h,
        cpu_id="c",
        mac="m",
        idempotency_key=key,
        secret=first.body["device_secret"],
        include="files",
    )
    assert again.status == 200
    assert again.body["decision"] == "same" and again.body["device_id"] == first.body["device_id"]
    assert set(again.body) == READY_FIELDS, again.body


async def test_a_disabled_device_gets_no_secrets_or_files_from_a_poll(
    system: System, session: aiohttp.ClientSession, operator: Operator
) -> None:
    code = (await operator.product())["bulk_identification_code"]
    first = await register(
        session, system.device_url, code, hardware_id(), cpu_id="c", mac="m", include="files"
    )
    assert first.status == 200 and checked_files(first)
    await operator.call("POST", f"/v1/devices/{first.body['device_id']}/disable", expect=200)
    async with session.get(
        f"{system.device_url}/v1/registrations/{first.body['request_id']}?include=files"
    ) as r:
        polled = await r.json()
    assert r.status == 200 and set(polled) == READY_FIELDS, polled


async def test_after_an_operator_reset_a_request_id_from_before_it_yields_no_secret_or_files(
    system: System, session: aiohttp.ClientSession, operator: Operator
) -> None:
    code = (await operator.product())["bulk_identification_code"]
    h = hardware_id()
    first = await register(session, system.device_url, code, h, cpu_id="c", mac="m", include="files")
    assert first.status == 200 and checked_files(first)
    await confirm(session, system, operator, first)
    await operator.call("POST", f"/v1/devices/{first.body['device_id']}/reset", expect=200)
    # The device registers again after the reset: new credentials, not yet confirmed.
    again = await register(session, system.device_url, code, h, cpu_id="c2", mac="m", include="files")
    assert again.body["device_id"] == first.body["device_id"]
    assert again.body["device_secret"] != first.body["device_secret"] and checked_files(again)

    # Whoever kept the first request ID (the old image, a clone of it) polls it now.
    async with session.get(
        f"{system.device_url}/v1/registrations/{first.body['request_id']}?include=files"
    ) as r:
        polled = await r.json()
    assert r.status == 200 and set(polled) == READY_FIELDS, polled
    # The new request's own poll still hands its device the new secret and files.
    async with session.get(
        f"{system.device_url}/v1/registrations/{again.body['request_id']}?include=files"
    ) as r:
        mine = await r.json()
    assert mine["device_secret"] == again.body["device_secret"] and mine["manifest"]["files"]


async def test_a_clone_gets_files_of_its_own(
    system: System, session: aiohttp.ClientSession, operator: Operator
) -> None:
    code = (await operator.product())["bulk_identification_code"]
    h = hardware_id()
    original = await register(session, system.device_url, code, h, cpu_id="c0", mac="m0", include="files")
    clone = await register(session, system.device_url, code, h, cpu_id="c1", mac="m1", include="files")
    assert clone.body["clone"] is True and clone.body["hardware_id"] == f"{h}-1"
    assert clone.body["device_id"] != original.body["device_id"]
    mine, theirs = checked_files(clone), checked_files(original)
    assert mine == (await served(session, system.device_url, clone))[1]
    assert set(mine) == set(theirs)  # the same services ...
    for name, content in mine.items():  # ... rendered for the clone: its ID, its UID and password
        assert content != theirs[name]
        assert f"hardware_id {h}-1\n".encode() in content
        assert f"hardware_id {h}\n".encode() in theirs[name]
    passwords = [
        {line for line in files[name].split(b"\n") if line.startswith((b"password ", b"UID "))}
        for files in (mine, theirs)
        for name in sorted(files)
    ]
    assert not set().union(*passwords[: len(mine)]) & set().union(*passwords[len(mine) :])


@pytest.mark.parametrize(
    "query", ["include=manifest", "include=", "include=FILES", "include=files&include=files"]
)
async def test_an_unknown_include_value_is_a_400(
    system: System, session: aiohttp.ClientSession, operator: Operator, query: str
) -> None:
    code = (await operator.product())["bulk_identification_code"]
    body = {"bulk_identification_code": code, "hardware_id": hardware_id()}
    async with session.post(f"{system.device_url}/v1/registrations?{query}", json=body) as r:
        assert r.status == 400, await r.text()
        refused = await r.json()
    assert (refused["field"], refused["rule"]) == ("include", "enum=files")
    answer = await register(session, system.device_url, code, hardware_id())
    async with session.get(f"{system.device_url}/v1/registrations/{answer.body['request_id']}?{query}") as r:
        assert r.status == 400
        assert (await r.json())["field"] == "include"
    assert len(await operator.devices()) == 1  # the refused call registered nothing
