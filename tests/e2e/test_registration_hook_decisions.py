"""The registration hook decides (docs/registration-hook.md), against the real pipeline: a
hook server in the test process answers the notifier's signed calls; devices register
through the intake. Allow (with enrichment), deny (told to the device, the reservation
released), clones asked about with their H-N, one answered call per Idempotency-Key,
reboots never calling, fail closed answering pending and deciding once the hook is back,
fail open deciding without it, and the secret in no log."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from standardwebhooks.webhooks import Webhook as Verifier

from services.intake.compat.handlers import PENDING
from shared.db.pool import Pool
from shared.domain import hooks, webhooks
from tests.support.api import Operator, register
from tests.support.bulk import bulk_product, csv_rows, csv_text, publish_and_wait, upload
from tests.support.reference_client import ReferenceClient, ReferenceDevice, read_answer
from tests.support.system import LOGS, TEST_SECRET_KEY, System, free_port


@dataclass
class HookServer:
    """A registration hook: answers ``answer`` (a JSON object) with ``status``, after
    ``delay_s``; records every call's headers and body."""

    url: str
    status: int = 200
    answer: dict[str, Any] = field(default_factory=lambda: {"allow": True})
    delay_s: float = 0.0
    raw: bytes | None = None  # sent instead of ``answer`` (garbage)
    headers: dict[str, str] = field(default_factory=dict)  # e.g. a redirect's Location
    calls: list[tuple[dict[str, str], bytes]] = field(default_factory=list)

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.calls]


@pytest.fixture
async def hook() -> AsyncIterator[HookServer]:
    port = free_port()
    server = HookServer(url=f"http://127.0.0.1:{port}/approve?token=receiver-token")

    async def answer(request: web.Request) -> web.Response:
        server.calls.append((dict(request.headers), await request.read()))
        if server.delay_s:
            await asyncio.sleep(server.delay_s)
        if server.raw is not None:
            return web.Response(body=server.raw, status=server.status, headers=server.headers)
        return web.json_response(server.answer, status=server.status, headers=server.headers)

    app = web.Application()
    app.router.add_post("/approve", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield server
    await runner.cleanup()


async def _hooked(operator: Operator, hook: HookServer, **settings: Any) -> dict[str, Any]:
    """An auto registration (of a product of its own) with ``hook`` as its hook."""
    product = await operator.call(
        "POST",
        "/v1/products",
        {"name": f"p-{uuid.uuid4().hex[:8]}", "services": [{"type": "ssh", "port": 22}]},
        expect=201,
    )
    await operator.call("POST", f"/v1/products/{product['id']}/lock", expect=200)
    registration: dict[str, Any] = await operator.call(
        "POST",
        "/v1/auto-registrations",
        {"product_id": product["id"], "hook_url": hook.url, **settings},
        expect=201,
    )
    return registration


async def _device(pool: Pool, account_id: str, hardware_id: str) -> dict[str, Any] | None:
    row = await pool.fetchrow(
        "SELECT id::text, name, category_a, category_b, lifecycle, hook_data FROM devices"
        " WHERE account_id = $1 AND hardware_id = $2",
        account_id,
        hardware_id,
    )
    return dict(row) if row is not None else None


async def test_an_allow_enriches_the_device_and_the_call_is_signed(
    system: System, operator: Operator, session: aiohttp.ClientSession, pool: Pool, hook: HookServer
) -> None:
    registration = await _hooked(operator, hook)
    code, secret = registration["bulk_identification_code"], registration["hook_secret"]
    hook.answer = {
        "allow": True,
        "name": "Line 3 gateway",
        "category_a": "line-3",
        "category_b": "eu",
        "data": {"site": "Plant 7", "slot": "4"},
    }
    hardware_id = f"HK-{uuid.uuid4().hex[:8]}"
    answer = await register(session, system.device_url, code, hardware_id, cpu_id="c1", idempotency_key="k1")
    assert (answer.status, answer.body["status"], answer.body["decision"]) == (200, "ready", "new"), (
        answer.body
    )
    assert answer.body["device_secret"]

    assert len(hook.calls) == 1
    headers, body = hook.calls[0]
    Verifier(secret).verify(body, headers)  # raises on a bad signature
    sent = json.loads(body)
    assert sent["type"] == "registration.hook"
    data = sent["data"]
    assert (data["hardware_id"], data["decision"], data["assigned_hardware_id"]) == (
        hardware_id,
        "new",
        hardware_id,
    )
    assert (data["product_id"], data["registration_id"]) == (registration["product_id"], registration["id"])
    assert (data["attestation"], data["protocol"], data["source"]) == ("code", "native", "127.0.0.1")
    assert data["request_id"] == answer.body["request_id"] and data["fingerprint"]

    device = await _device(pool, operator.account_id, hardware_id)
    assert device is not None
    assert (device["name"], device["category_a"], device["category_b"]) == ("Line 3 gateway", "line-3", "eu")
    assert json.loads(device["hook_data"]) == {"site": "Plant 7", "slot": "4"}
    row = await pool.fetchrow(
        "SELECT outcome, attempts, latency_ms, http_status FROM registration_hook_calls WHERE device_id = $1",
        device["id"],
    )
    assert row is not None and (row["outcome"], row["attempts"], row["http_status"]) == ("allow", 1, 200)
    # The operator sees the call beside the decision, and the allow in the device's history.
    trail = await operator.call("GET", "/v1/registration-decisions?limit=20", expect=200)
    decided = next(d for d in trail["decisions"] if d["request_id"] == answer.body["request_id"])
    assert decided["hook"]["outcome"] == "allow" and decided["hook"]["latency_ms"] >= 0
    calls = await operator.call("GET", f"/v1/auto-registrations/{registration['id']}/hook/calls", expect=200)
    [listed] = calls["calls"]
    assert (listed["hardware_id"], listed["decision"], listed["outcome"]) == (hardware_id, "new", "allow")
    assert listed["request_id"] == answer.body["request_id"] and listed["device_id"] == device["id"]
    shown = await operator.call("GET", f"/v1/devices/{device['id']}", expect=200)
    assert "hook_allowed" in {entry["kind"] for entry in shown["history"]}, shown["history"]

    # The same attempt again (its Idempotency-Key): the answer is reused, no second call.
    again = await register(session, system.device_url, code, hardware_id, cpu_id="c1", idempotency_key="k1")
    assert (again.body["status"], again.body["device_id"]) == ("ready", answer.body["device_id"])
    # A reboot presenting the device secret never calls the hook.
    reboot = await register(
        session, system.device_url, code, hardware_id, cpu_id="c1", secret=answer.body["device_secret"]
    )
    assert (reboot.body["status"], reboot.body["decision"]) == ("ready", "same"), reboot.body
    assert len(hook.calls) == 1

    # A second board with the same hardware ID: the hook is asked about the clone, H-1.
    clone = await register(session, system.device_url, code, hardware_id, cpu_id="c2")
    assert clone.body["status"] == "ready" and clone.body["hardware_id"] == f"{hardware_id}-1"
    last = hook.bodies()[-1]["data"]
    assert (last["decision"], last["assigned_hardware_id"]) == ("clone", f"{hardware_id}-1")


async def test_a_denial_is_told_to_the_device_and_releases_the_hardware_id(
    system: System, operator: Operator, session: aiohttp.ClientSession, pool: Pool, hook: HookServer
) -> None:
    registration = await _hooked(operator, hook)
    code = registration["bulk_identification_code"]
    hook.answer = {"allow": False, "reason": "serial not in production records"}
    hardware_id = f"HD-{uuid.uuid4().hex[:8]}"
    answer = await register(
        session, system.device_url, code, hardware_id, cpu_id="c1", idempotency_key="try-1"
    )
    assert answer.status == 403, answer.body
    assert answer.body["reason_code"] == "hook_denied"
    assert "serial not in production records" in answer.body["reason"]
    assert await _device(pool, operator.account_id, hardware_id) is None  # nothing held
    # A poll of the request says the same.
    async with session.get(f"{system.device_url}/v1/registrations/{answer.body['request_id']}") as r:
        polled = await r.json()
    assert (r.status, polled["reason_code"]) == (403, "hook_denied")
    # The same attempt again: refused with the stored answer, the hook not asked again.
    again = await register(
        session, system.device_url, code, hardware_id, cpu_id="c1", idempotency_key="try-1"
    )
    assert (again.status, again.body["reason_code"]) == (403, "hook_denied")
    assert len(hook.calls) == 1
    # A new attempt once the maker's records list it: asked again, and allowed as H itself.
    hook.answer = {"allow": True}
    later = await register(
        session, system.device_url, code, hardware_id, cpu_id="c1", idempotency_key="try-2"
    )
    assert (later.body["status"], later.body["hardware_id"]) == ("ready", hardware_id), later.body
    assert len(hook.calls) == 2


async def test_boards_of_one_copied_image_sending_one_key_are_each_asked_about(
    system: System, operator: Operator, session: aiohttp.ClientSession, pool: Pool, hook: HookServer
) -> None:
    # The agent persists its Idempotency-Key until ready: boards made from an image copied
    # mid-registration send the same key with their own hardware IDs. Each is its own claim,
    # so each is its own call: one board's denial is not another's.
    registration = await _hooked(operator, hook)
    code = registration["bulk_identification_code"]
    unlisted, listed = f"HX-{uuid.uuid4().hex[:8]}", f"HY-{uuid.uuid4().hex[:8]}"
    hook.answer = {"allow": False, "reason": "not in our records"}
    denied = await register(session, system.device_url, code, unlisted, cpu_id="c1", idempotency_key="copied")
    assert (denied.status, denied.body["reason_code"]) == (403, "hook_denied"), denied.body
    hook.answer = {"allow": True, "name": "Listed board"}
    allowed = await register(session, system.device_url, code, listed, cpu_id="c2", idempotency_key="copied")
    assert (allowed.body["status"], allowed.body["hardware_id"]) == ("ready", listed), allowed.body
    assert [json.loads(body)["data"]["hardware_id"] for _, body in hook.calls] == [unlisted, listed]
    assert len({headers["webhook-id"] for headers, _ in hook.calls}) == 2
    device = await _device(pool, operator.account_id, listed)
    assert device is not None and device["name"] == "Listed board"


async def test_fail_closed_answers_pending_then_decides_once_the_hook_is_back(
    system: System, operator: Operator, session: aiohttp.ClientSession, pool: Pool, hook: HookServer
) -> None:
    registration = await _hooked(operator, hook, hook_timeout_ms=500)
    code = registration["bulk_identification_code"]
    hook.status, hook.answer = 500, {"error": "down for maintenance"}
    hardware_id = f"HC-{uuid.uuid4().hex[:8]}"
    first = await register(
        session, system.device_url, code, hardware_id, cpu_id="c1", idempotency_key="k", settle=False
    )
    assert first.status == 202 and first.body["status"] == "pending", first.body
    assert int(first.body["retry_after"]) > 0
    # Held for the hook: H is reserved (a registered device, no secret handed out).
    device = await _device(pool, operator.account_id, hardware_id)
    assert device is not None and device["lifecycle"] == "registered"
    failures = len(hook.calls)
    assert failures >= 1
    # The hook comes back: the notifier calls it again without the device doing anything
    # more than polling, and the device's poll gets its credentials.
    hook.status, hook.answer = 200, {"allow": True, "name": "after the outage"}
    done = await register(session, system.device_url, code, hardware_id, cpu_id="c1", idempotency_key="k")
    assert (done.status, done.body["status"], done.body["hardware_id"]) == (200, "ready", hardware_id), (
        done.body
    )
    device = await _device(pool, operator.account_id, hardware_id)
    assert device is not None and device["name"] == "after the outage"
    row = await pool.fetchrow(
        "SELECT outcome, attempts FROM registration_hook_calls WHERE device_id = $1", device["id"]
    )
    assert row is not None and row["outcome"] == "allow" and row["attempts"] >= 2


async def test_fail_open_decides_without_the_hook_and_records_it(
    system: System, operator: Operator, session: aiohttp.ClientSession, pool: Pool, hook: HookServer
) -> None:
    registration = await _hooked(operator, hook, hook_timeout_ms=200, hook_failure="open")
    code = registration["bulk_identification_code"]
    hook.delay_s = 1.0  # past the timeout
    hardware_id = f"HO-{uuid.uuid4().hex[:8]}"
    answer = await register(session, system.device_url, code, hardware_id, cpu_id="c1")
    assert (answer.status, answer.body["status"]) == (200, "ready"), answer.body
    row = await pool.fetchrow(
        "SELECT c.outcome, c.answer FROM registration_hook_calls c JOIN devices d ON d.id = c.device_id"
        " WHERE d.account_id = $1 AND d.hardware_id = $2",
        operator.account_id,
        hardware_id,
    )
    assert row is not None and row["outcome"] == "failed_open"
    assert json.loads(row["answer"])["failure"] == "timeout"


@pytest.mark.parametrize(
    ("status", "raw", "headers", "failure"),
    [
        (200, b"<html>not json</html>", {}, "malformed"),
        (200, b'{"allow": "yes"}', {}, "malformed"),
        (200, b"[true]", {}, "malformed"),
        (302, b"", {"Location": "http://127.0.0.1:9/elsewhere"}, "redirect"),
        (500, b"{}", {}, "http_error"),
    ],
)
async def test_a_hook_answering_garbage_a_redirect_or_500_is_a_failure_never_a_decision(
    system: System,
    operator: Operator,
    session: aiohttp.ClientSession,
    pool: Pool,
    hook: HookServer,
    status: int,
    raw: bytes,
    headers: dict[str, str],
    failure: str,
) -> None:
    """Under fail open the device is decided without the hook, and the call row says what
    the hook did wrong (under fail closed the same failures answer pending: above)."""
    registration = await _hooked(operator, hook, hook_failure="open")
    hook.status, hook.raw, hook.headers = status, raw, headers
    hardware_id = f"HG-{uuid.uuid4().hex[:8]}"
    answer = await register(session, system.device_url, registration["bulk_identification_code"], hardware_id)
    assert (answer.status, answer.body["status"]) == (200, "ready"), answer.body
    row = await pool.fetchrow(
        "SELECT c.outcome, c.answer, c.http_status FROM registration_hook_calls c"
        " JOIN devices d ON d.id = c.device_id WHERE d.account_id = $1 AND d.hardware_id = $2",
        operator.account_id,
        hardware_id,
    )
    assert row is not None and row["outcome"] == "failed_open"
    assert (json.loads(row["answer"])["failure"], row["http_status"]) == (failure, status)
    device = await _device(pool, operator.account_id, hardware_id)
    assert device is not None and device["hook_data"] is None  # no enrichment from a failure


async def test_a_registration_without_a_hook_never_waits_for_one(
    system: System, operator: Operator, session: aiohttp.ClientSession, pool: Pool, hook: HookServer
) -> None:
    registration = await _hooked(operator, hook)
    await operator.call(
        "PATCH", f"/v1/auto-registrations/{registration['id']}", {"hook_url": None}, expect=200
    )
    answer = await register(
        session, system.device_url, registration["bulk_identification_code"], f"HN-{uuid.uuid4().hex[:8]}"
    )
    assert answer.body["status"] == "ready" and hook.calls == []


async def test_the_reference_protocol_is_answered_at_step_2_and_waits_for_the_hook_at_step_5(
    system: System, operator: Operator, session: aiohttp.ClientSession, pool: Pool, hook: HookServer
) -> None:
    """apv/v27: step 2 answers as without a hook (H, then H-1 for a copied image); step 5
    is pending while the hook is down and hands out the secret once it allowed; a denied
    board is told it is not registered. Reference devices get the name, not the data file."""
    registration = await _hooked(operator, hook, hook_timeout_ms=300)
    code = registration["bulk_identification_code"]
    client = ReferenceClient(session, system.compat_url, system.tls_ca)
    hook.status, hook.answer = 503, {}
    board = ReferenceDevice(code, f"HR-{uuid.uuid4().hex[:8]}")
    # Down: step 2 answers at once, step 5 stays pending (the client gives up for this boot).
    assert await client.boot(board, pending_retries=3) == f"failed: {PENDING}"
    step2 = [text for method, path, _, text in client.calls if "friendly/configuration" in path]
    assert read_answer(step2[-1])["status"] == "true"
    hook.status, hook.answer = 200, {"allow": True, "name": "reference board", "data": {"k": "v"}}
    assert await client.boot(board) == "provisioned"
    device = await _device(pool, operator.account_id, board.hardware_id)
    assert device is not None and device["name"] == "reference board"
    assert hook.bodies()[-1]["data"]["protocol"] == "compat"

    # A copy of its image on another board: step 2 answers reset with H-1 before any hook
    # answer; the hook denies it, so its step 5 is refused.
    hook.answer = {"allow": False, "reason": "unknown board"}
    copy = board.clone_image()
    assert await client.boot(copy) == "reset"
    assert copy.hardware_id == f"{board.hardware_id}-1"
    result = await client.boot(copy)
    assert result.startswith("failed:") and result != f"failed: {PENDING}", result
    assert await _device(pool, operator.account_id, copy.hardware_id) is None


def test_no_hook_secret_in_any_log(system: System) -> None:
    """Every hook secret issued (and every receiver token in a hook URL) stays out of the logs."""
    # A hook secret is "whsec_" and base64; the URL's query carries the receiver's token.
    for path in LOGS.glob("*.log"):
        text = path.read_text(errors="replace")
        assert "whsec_" not in text, path
        assert "receiver-token" not in text, path


async def test_a_bulk_claim_asks_the_hook_and_a_denial_puts_the_device_back(
    system: System, operator: Operator, session: aiohttp.ClientSession, pool: Pool, hook: HookServer
) -> None:
    """A bulk registration's hook is asked about the claim of a listed device (decision
    ``claim``): denied, the device is preregistered again (its key still works for a later
    attempt); allowed, it registers with the hook's name."""
    product_id = await bulk_product(operator)
    rows = csv_rows(1)
    key, hardware_id, _ = rows[0]
    status, registration = await upload(
        session, system.bulk_url, operator, product_id, csv_text(rows).encode()
    )
    assert status == 201, registration
    await publish_and_wait(session, system.bulk_url, operator, registration["id"])
    # The hook set in the registry (the bulk API's own setting is tested with the API).
    secret = webhooks.new_secret()
    sealed = webhooks.SecretBox(TEST_SECRET_KEY.encode(), hooks.HOOK_SECRETS).seal(registration["id"], secret)
    await pool.execute(
        "UPDATE registrations SET hook_url = $2, hook_secret_sealed = $3 WHERE id = $1",
        registration["id"],
        hook.url,
        sealed,
    )
    code = (await operator.call("GET", f"/v1/products/{product_id}", expect=200))["bulk_identification_code"]

    hook.answer = {"allow": False, "reason": "returned to the factory"}
    denied = await register(
        session, system.device_url, code, hardware_id, registration_key=key, cpu_id="c1", idempotency_key="a"
    )
    assert (denied.status, denied.body["reason_code"]) == (403, "hook_denied"), denied.body
    device = await _device(pool, operator.account_id, hardware_id)
    assert device is not None and device["lifecycle"] == "preregistered"
    Verifier(secret).verify(*reversed(hook.calls[-1]))
    assert hook.bodies()[-1]["data"]["decision"] == "claim"

    hook.answer = {"allow": True, "name": "refurbished unit"}
    allowed = await register(
        session, system.device_url, code, hardware_id, registration_key=key, cpu_id="c1", idempotency_key="b"
    )
    assert (allowed.status, allowed.body["status"]) == (200, "ready"), allowed.body
    device = await _device(pool, operator.account_id, hardware_id)
    assert device is not None and (device["lifecycle"], device["name"]) == ("registered", "refurbished unit")
