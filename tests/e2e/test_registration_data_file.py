"""The registration hook's enrichment data file (issue 27: an allow's ``data`` "delivered to
the device as one more provisioning file (in the manifest, with its SHA-256, in the
two-call answer and to the agent)"; "native-only"), against the running system on the real
broker and database.

These tests were written before the hook's decision path (dedup's reservation, the
notifier's call and its ruling writing ``devices.hook_data``) was merged: most of them write
``devices.hook_data`` directly in Postgres, as the ruling does, with the ``device:<id>``
invalidation the intakes' device cache listens to, which drives what no hook answer can
(data changed or removed on a device in service, a reference device with data). The last
one goes through a real hook and the merged decision path; the lead's end-to-end tests of
the hook (tests/e2e/test_registration_hook_decisions.py) may take over from it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from shared.db.pool import Pool
from tests.support.agent import Agent
from tests.support.api import DeviceAnswer, Operator, register
from tests.support.reference_client import ReferenceClient, ReferenceDevice, read_answer
from tests.support.system import System, free_port

pytestmark = pytest.mark.e2e

DATA_FILE = "registration-data.conf"
DATA_SERVICE = "registration-data"
# What an operator's hook may hand a device: spaces, '=', quotes, a newline, Unicode.
DATA = {
    "site": 'Berlin "North"',
    "rack=row": "3 = C",
    "note": "first line\nsecond line",
    "city": "Zürich 東京",
}


def hardware_id() -> str:
    return uuid.uuid4().hex[:12]


async def set_hook_data(pool: Pool, device_id: str, data: dict[str, str] | None) -> None:
    """What the hook's ruling writes (a JSON object of strings, or NULL), with the device's
    invalidation in the same transaction, as every statement that changes what a device is
    served sends it (shared/db/devices.py)."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "UPDATE devices SET hook_data = $2::jsonb WHERE id = $1",
            device_id,
            None if data is None else json.dumps(data),
        )
        await conn.execute("SELECT pg_notify('fleetreg_invalidate', 'device:' || $1::text)", device_id)


async def until_served(
    session: aiohttp.ClientSession, url: str, device_id: str, secret: str, data: dict[str, str] | None
) -> None:
    """Until the native API serves ``data`` (None: no data file) to the device: the change
    reaches the intakes' device cache within the delivery time of its invalidation
    (milliseconds; docs/device-api.md), so a call sent at once may still be answered as
    before."""
    headers = {"Authorization": f"Bearer {secret}"}
    served: object = "nothing"
    for _ in range(200):
        async with session.get(f"{url}/v1/devices/{device_id}/manifest", headers=headers) as r:
            assert r.status == 200, await r.text()
            entry = data_entry(await r.json())
        if entry is None:
            served = None
        else:
            async with session.get(entry["url"], headers=headers) as r:
                served = data_of(await r.read())[1] if r.status == 200 else "a failed download"
        if served == data:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"the intake serves {served!r}, not {data!r}")


def data_of(content: bytes) -> tuple[str, dict[str, str]]:
    """The provisioning ID and the data a device reads from the file: the frame every
    provisioning file has (#begin, its ID, key value lines, #end), one ``data`` line of JSON
    read with the standard JSON parser."""
    lines = content.decode("ascii").split("\n")
    assert lines[0] == "#begin" and lines[3:] == ["#end", ""], content
    key, _, value = lines[2].partition(" ")
    assert key == "data"
    data: dict[str, str] = json.loads(value)
    return lines[1], data


def auth(answer: DeviceAnswer) -> dict[str, str]:
    return {"Authorization": f"Bearer {answer.body['device_secret']}"}


async def manifest_of(session: aiohttp.ClientSession, url: str, answer: DeviceAnswer) -> dict[str, Any]:
    async with session.get(url + answer.body["manifest_url"], headers=auth(answer)) as r:
        assert r.status == 200, await r.text()
        manifest: dict[str, Any] = await r.json()
    return manifest


async def download(session: aiohttp.ClientSession, url: str, answer: DeviceAnswer) -> tuple[int, bytes]:
    files = answer.body["manifest_url"].removesuffix("/manifest") + "/files/"
    async with session.get(url + files + DATA_FILE, headers=auth(answer)) as r:
        return r.status, await r.read()


def data_entry(manifest: dict[str, Any]) -> dict[str, Any] | None:
    found = [f for f in manifest["files"] if f["name"] == DATA_FILE]
    assert len(found) <= 1
    return found[0] if found else None


async def test_the_data_file_is_in_the_manifest_the_two_call_answer_and_the_download(
    system: System, session: aiohttp.ClientSession, operator: Operator, pool: Pool
) -> None:
    registration = await operator.product([{"type": "ssh", "port": 22}])
    code = registration["bulk_identification_code"]
    answer = await register(
        session, system.device_url, code, hardware_id(), cpu_id="c", mac="m", include="files"
    )
    assert answer.status == 200, answer.body
    device_id, request_id = answer.body["device_id"], answer.body["request_id"]
    # Without hook data: no such file anywhere.
    assert data_entry(answer.body["manifest"]) is None
    assert data_entry(await manifest_of(session, system.device_url, answer)) is None
    assert (await download(session, system.device_url, answer))[0] == 404

    await set_hook_data(pool, device_id, DATA)

    # The two-call boot's poll (before ready): the file inline, last, checked as a device checks.
    async with session.get(f"{system.device_url}/v1/registrations/{request_id}?include=files") as r:
        assert r.status == 200
        polled = DeviceAnswer(r.status, await r.json())
    inline = polled.body["manifest"]["files"]
    assert [f["service"] for f in inline] == ["bulk", "ssh", DATA_SERVICE]
    entry = inline[-1]
    content = entry["content"].encode("ascii")
    assert len(content) == entry["size"] and hashlib.sha256(content).hexdigest() == entry["sha256"]
    provisioning_id, data = data_of(content)
    assert data == DATA
    assert provisioning_id == entry["provisioning_id"]
    assert provisioning_id == str(uuid.UUID(provisioning_id)).upper()
    assert {k: entry[k] for k in ("type", "type_code", "port")} == {"type": "data", "type_code": 0, "port": 0}
    assert provisioning_id not in {f["provisioning_id"] for f in inline[:-1]}

    # The manifest lists it with the same digest; its URL serves the same bytes.
    manifest = await manifest_of(session, system.device_url, answer)
    listed = data_entry(manifest)
    assert listed == {k: v for k, v in entry.items() if k != "content"}
    async with session.get(listed["url"], headers=auth(answer)) as r:
        assert r.status == 200 and r.content_type == "text/plain"
        assert await r.read() == content

    # New data: a new digest (the provisioning ID stays the device's); the same data again:
    # the same bytes.
    secret = answer.body["device_secret"]
    await set_hook_data(pool, device_id, {**DATA, "site": "Hamburg"})
    await until_served(session, system.device_url, device_id, secret, {**DATA, "site": "Hamburg"})
    changed = data_entry(await manifest_of(session, system.device_url, answer))
    assert changed is not None and changed["sha256"] != listed["sha256"]
    assert changed["provisioning_id"] == provisioning_id
    status, served = await download(session, system.device_url, answer)
    assert status == 200 and data_of(served)[1]["site"] == "Hamburg"
    assert hashlib.sha256(served).hexdigest() == changed["sha256"]
    await set_hook_data(pool, device_id, dict(reversed(list(DATA.items()))))
    await until_served(session, system.device_url, device_id, secret, DATA)
    assert data_entry(await manifest_of(session, system.device_url, answer)) == listed

    # An empty object is a file too; NULL is none.
    await set_hook_data(pool, device_id, {})
    await until_served(session, system.device_url, device_id, secret, {})
    status, served = await download(session, system.device_url, answer)
    assert status == 200 and data_of(served) == (provisioning_id, {})
    await set_hook_data(pool, device_id, None)
    await until_served(session, system.device_url, device_id, secret, None)
    assert data_entry(await manifest_of(session, system.device_url, answer)) is None
    assert (await download(session, system.device_url, answer))[0] == 404
    # The text form (an agent's) lists it like the other files.
    await set_hook_data(pool, device_id, DATA)
    await until_served(session, system.device_url, device_id, secret, DATA)
    async with session.get(
        system.device_url + answer.body["manifest_url"], headers={**auth(answer), "Accept": "text/plain"}
    ) as r:
        text = await r.text()
    assert f"files.2.name {DATA_FILE}\n" in text and f"files.2.sha256 {listed['sha256']}\n" in text


async def test_the_reference_protocol_neither_lists_nor_serves_the_data_file(
    system: System, session: aiohttp.ClientSession, operator: Operator, pool: Pool
) -> None:
    """Native-only (issue 27): a reference device gets the hook's name and categories, never
    the file; its data file's provisioning ID is unknown to the reference download."""
    code = (await operator.product([{"type": "ssh", "port": 22}]))["bulk_identification_code"]
    client = ReferenceClient(session, system.compat_url, system.tls_ca)
    device = ReferenceDevice(code, hardware_id())
    assert await client.boot(device) == "provisioned"
    [found] = await operator.devices()
    files = dict(device.files)
    await set_hook_data(pool, found["id"], DATA)
    await until_served(session, system.device_url, found["id"], device.device_secret, DATA)

    before = len(client.calls)
    assert await client.boot(device) == "provisioned"  # a reboot: its secret, its services
    assert device.files == files
    _, text = await client._call(
        "GET", f"/bulk/registration/device/friendly/configuration/{device.code}/{device.hardware_id}/"
    )
    listed = read_answer(text)["projects"].split(",")
    assert sorted(listed) == sorted(files)
    # The native API, asked with the same device secret, lists the file for this device...
    async with session.get(
        f"{system.device_url}/v1/devices/{found['id']}/manifest",
        headers={"Authorization": f"Bearer {device.device_secret}"},
    ) as r:
        assert r.status == 200, await r.text()
        entry = data_entry(await r.json())
    assert entry is not None
    # ... the reference protocol does not serve it, and no answer of it mentions it.
    status, _ = await client._call("GET", f"/project/provisioning/download/{entry['provisioning_id']}")
    assert status == 404
    for _, _, _, answered in client.calls[before:]:
        assert entry["provisioning_id"] not in answered and "Berlin" not in answered


async def test_the_agent_writes_the_data_file_and_a_check_in_delivers_new_data(
    system: System, session: aiohttp.ClientSession, operator: Operator, pool: Pool, tmp_path: Path, shell: str
) -> None:
    """agent/fleetreg-agent writes the data file as any provisioning file (the frame it
    checks, size, SHA-256, provisioning ID), into FILES_DIR/registration-data/, runs the
    on-change scripts with ``registration-data``, and a check-in after the data changed
    writes the new file; data removed, the file is removed."""
    code = (await operator.product([{"type": "ssh", "port": 22}]))["bulk_identification_code"]
    (tmp_path / "board").mkdir()
    board = Agent(
        tmp_path / "board",
        shell,
        {
            "SERVER_URL": system.device_url,
            "CODE": code,
            "HARDWARE_ID": hardware_id(),
            "CPU_ID": "c1",
            "MAC": "m1",
        },
    )
    board.install_hook()
    first = await board.boot()
    assert first.code == 0, first.log
    device_id, secret = str(board.state("device_id")), str(board.state("secret"))
    assert sorted(board.files()) == ["bulk/00-bulk.conf", "ssh/01-ssh.conf"]

    await set_hook_data(pool, device_id, DATA)
    await until_served(session, system.device_url, device_id, secret, DATA)
    second = await board.boot()
    assert second.code == 0, second.log
    assert "register" not in second.events and "checkin" in second.events, second.log
    written = board.files()[f"{DATA_SERVICE}/{DATA_FILE}"]
    assert data_of(written)[1] == DATA
    assert (board.files_dir / DATA_SERVICE / DATA_FILE).stat().st_mode & 0o777 == 0o600
    assert board.hook_calls()[-1] == [DATA_SERVICE]

    await set_hook_data(pool, device_id, {**DATA, "site": "Hamburg"})
    await until_served(session, system.device_url, device_id, secret, {**DATA, "site": "Hamburg"})
    third = await board.boot()
    assert third.code == 0, third.log
    rewritten = board.files()[f"{DATA_SERVICE}/{DATA_FILE}"]
    assert data_of(rewritten)[1]["site"] == "Hamburg" and data_of(rewritten)[0] == data_of(written)[0]
    assert board.hook_calls()[-1] == [DATA_SERVICE]

    unchanged = await board.boot()
    assert unchanged.code == 0 and len(board.hook_calls()) == 3  # the first boot's, then two changes

    await set_hook_data(pool, device_id, None)
    await until_served(session, system.device_url, device_id, secret, None)
    assert (await board.boot()).code == 0
    assert sorted(board.files()) == ["bulk/00-bulk.conf", "ssh/01-ssh.conf"]
    assert board.hook_calls()[-1] == [DATA_SERVICE]


async def test_the_agents_first_boot_path_writes_the_data_file_from_the_two_call_answer(
    system: System, operator: Operator, pool: Pool, tmp_path: Path, shell: str
) -> None:
    """The first-boot path (register with include=files, the files inline): after the
    operator's reset the agent registers again, and the data the device has by then
    (written here after the reset, as the ruling writes it before the device is released)
    comes inline with the services' files."""
    code = (await operator.product([{"type": "ssh", "port": 22}]))["bulk_identification_code"]
    (tmp_path / "board").mkdir()
    board = Agent(
        tmp_path / "board",
        shell,
        {
            "SERVER_URL": system.device_url,
            "CODE": code,
            "HARDWARE_ID": hardware_id(),
            "CPU_ID": "c2",
            "MAC": "m2",
        },
    )
    assert (await board.boot()).code == 0
    device_id = str(board.state("device_id"))
    for _ in range(100):
        found = await operator.call("GET", f"/v1/devices/{device_id}", expect=200)
        if found["lifecycle"] == "provisioned":
            break
        await asyncio.sleep(0.05)
    await operator.call("POST", f"/v1/devices/{device_id}/reset", expect=200)
    await set_hook_data(pool, device_id, DATA)

    for _ in range(20):  # the reset reaches every intake within its delivery time
        again = await board.boot()
        assert again.code == 0, again.log
        if "register" in again.events:
            break
        await asyncio.sleep(0.1)
    assert "reason_code=credentials_replaced" in again.log, again.log
    assert board.state("device_id") == device_id
    assert data_of(board.files()[f"{DATA_SERVICE}/{DATA_FILE}"])[1] == DATA
    assert "file_written service=registration-data name=registration-data.conf" in again.log


async def test_through_the_hook_the_agent_boots_with_the_data_it_answered(
    system: System, session: aiohttp.ClientSession, operator: Operator, pool: Pool, tmp_path: Path, shell: str
) -> None:
    """The whole path, now that the decision path is in: the registration's hook allows the
    board with ``data``, and the agent's first boot writes the data file from the two-call
    answer."""
    port = free_port()
    answer = {"allow": True, "name": "pump 7", "data": DATA}

    async def allow(request: web.Request) -> web.Response:
        return web.json_response(answer)

    app = web.Application()
    app.router.add_post("/hook", allow)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        product = await operator.call(
            "POST",
            "/v1/products",
            {"name": f"p-{uuid.uuid4().hex[:8]}", "services": [{"type": "ssh", "port": 22}]},
            expect=201,
        )
        await operator.call("POST", f"/v1/products/{product['id']}/lock", expect=200)
        registration = await operator.call(
            "POST",
            "/v1/auto-registrations",
            {"product_id": product["id"], "hook_url": f"http://127.0.0.1:{port}/hook"},
            expect=201,
        )
        (tmp_path / "board").mkdir()
        board = Agent(
            tmp_path / "board",
            shell,
            {
                "SERVER_URL": system.device_url,
                "CODE": registration["bulk_identification_code"],
                "HARDWARE_ID": hardware_id(),
                "CPU_ID": "c3",
                "MAC": "m3",
            },
        )
        booted = await board.boot()
    finally:
        await runner.cleanup()
    assert booted.code == 0, booted.log
    assert "register" in booted.events
    assert data_of(board.files()[f"{DATA_SERVICE}/{DATA_FILE}"])[1] == DATA
    assert sorted(board.files()) == ["bulk/00-bulk.conf", f"{DATA_SERVICE}/{DATA_FILE}", "ssh/01-ssh.conf"]
    found = await operator.call("GET", f"/v1/devices/{board.state('device_id')}", expect=200)
    assert found["name"] == "pump 7"
