"""A bulk registration's hook's operator surface end to end (docs/registration-hook.md,
"Operator surface"), on the bulk API as an auto registration's is on the operator API
(tests/e2e/test_registration_hook_operator.py): a test call with a sample request against
the reference hook run as a real process (deny, allow with enrichment, a failure with its
error), asked about a claim with the registration key, signed, under the ingestion
service's own address setting, audited as ``bulk.hook_tested``; a registration without a
hook, a read-only key, another account and an auto registration refused; devices' claims
listed as the recent calls; and both through the CLI."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from standardwebhooks.webhooks import Webhook as Verifier

from shared.db.pool import Pool
from tests.e2e.test_cli import fleetreg, fleetreg_json
from tests.support.api import Operator, new_operator, register
from tests.support.bulk import HEADER, bulk_product, publish_and_wait, upload
from tests.support.hooks import log_offsets, log_text_since
from tests.support.reference_hook import reference_hook
from tests.support.system import System, free_port

PATH = "/v1/bulk-registrations"


def _bulk(operator: Operator, system: System) -> Operator:
    """The bulk API with the operator's key (the same JSON calls, another service)."""
    return Operator(operator.session, system.bulk_url, operator.api_key, operator.account_id)


def _fleet(*hardware_ids: str) -> tuple[bytes, dict[str, str]]:
    """A CSV of these devices, and each one's registration key."""
    keys = {h: f"key-{uuid.uuid4().hex}" for h in hardware_ids}
    lines = [HEADER, *(f"{keys[h]},{h},Device {h},," for h in hardware_ids)]
    return ("\r\n".join(lines) + "\r\n").encode(), keys


async def _hooked(
    operator: Operator, system: System, url: str, *hardware_ids: str
) -> tuple[dict[str, Any], dict[str, str]]:
    """A configured bulk registration of ``hardware_ids`` (one of its own by default) whose
    hook is ``url``, with its signing secret; and the devices' registration keys."""
    body, keys = _fleet(*(hardware_ids or (f"SN-{uuid.uuid4().hex[:8]}",)))
    status, created = await upload(
        operator.session, system.bulk_url, operator, await bulk_product(operator), body, hook_url=url
    )
    assert status == 201, created
    return created, keys


@dataclass(frozen=True)
class Hooked:
    """A bulk registration whose hook is the reference hook, running."""

    registration: dict[str, Any]
    keys: dict[str, str]
    url: str


@pytest.fixture
async def hooked(operator: Operator, system: System, tmp_path: Path) -> AsyncIterator[Hooked]:
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    registration, keys = await _hooked(operator, system, url, "SN-0001", "SN-0009")
    async with reference_hook(tmp_path, registration["hook_secret"], port=port):
        yield Hooked(registration, keys, url)


def _test_path(registration_id: str) -> str:
    return f"{PATH}/{registration_id}/hook/test"


async def test_a_test_call_reaches_the_hook_and_answers_its_ruling(
    operator: Operator, system: System, hooked: Hooked
) -> None:
    api = _bulk(operator, system)
    registration_id = hooked.registration["id"]
    offsets = log_offsets()
    sample = await api.call("POST", _test_path(registration_id), expect=200)
    assert (sample["hardware_id"], sample["outcome"], sample["http_status"], sample["error"]) == (
        "SAMPLE-0001",
        "deny",
        200,
        "",
    )
    assert sample["answer"]["reason"] == "SAMPLE-0001 is not in our serials list"
    assert sample["call_id"].startswith("test_") and sample["latency_ms"] > 0
    uuid.UUID(sample["request_id"])

    listed = await api.call("POST", _test_path(registration_id), {"hardware_id": "SN-0002"}, expect=200)
    assert (listed["outcome"], listed["answer"]) == (
        "allow",
        {
            "allow": True,
            "reason": "",
            "name": "pump-0002",
            "category_a": "pumps",
            "category_b": "line-2",
            "data": {"site": "Lyon", "batch": "2026-11"},
        },
    )

    # Audited under the bulk registration's names, with the host and the outcome.
    events = await operator.call("GET", "/v1/audit-events?action=bulk.hook_tested", expect=200)
    assert [(e["target_type"], e["target_id"], e["changes"]) for e in events["audit_events"]] == [
        ("bulk_registration", registration_id, {"hook_host": "127.0.0.1", "outcome": "allow"}),
        ("bulk_registration", registration_id, {"hook_host": "127.0.0.1", "outcome": "deny"}),
    ]
    # A test is no registration attempt; the secret signs the calls and no service logs it.
    assert await api.call("GET", f"{PATH}/{registration_id}/hook/calls", expect=200) == {"calls": []}
    assert hooked.registration["hook_secret"][6:22] not in log_text_since(offsets)


@dataclass
class Recorder:
    """A hook in the test process that allows every call and keeps its headers and body."""

    url: str
    calls: list[tuple[bytes, dict[str, str]]] = field(default_factory=list)


@pytest.fixture
async def recorder() -> AsyncIterator[Recorder]:
    port = free_port()
    found = Recorder(f"http://127.0.0.1:{port}/approve")

    async def answer(request: web.Request) -> web.Response:
        found.calls.append((await request.read(), dict(request.headers)))
        return web.json_response({"allow": True})

    app = web.Application()
    app.router.add_post("/approve", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield found
    await runner.cleanup()


async def test_the_sample_is_a_claim_with_the_registration_key_signed_with_the_hooks_secret(
    operator: Operator, system: System, recorder: Recorder
) -> None:
    registration, _ = await _hooked(operator, system, recorder.url)
    tested = await _bulk(operator, system).call(
        "POST", _test_path(registration["id"]), {"hardware_id": "SN-0042"}, expect=200
    )
    assert tested["outcome"] == "allow"
    [(body, headers)] = recorder.calls
    Verifier(registration["hook_secret"]).verify(body, headers)  # raises on a bad signature
    assert headers["webhook-id"] == tested["call_id"]
    data = json.loads(body)["data"]
    assert data == {
        "request_id": tested["request_id"],
        "hardware_id": "SN-0042",
        "fingerprint": "",
        "decision": "claim",
        "assigned_hardware_id": "SN-0042",
        "product_id": registration["product_id"],
        "registration_id": registration["id"],
        "attestation": "registration_key",
        "source": "",
        "protocol": "native",
    }


async def test_a_failing_hook_is_answered_with_its_failure(operator: Operator, system: System) -> None:
    registration, _ = await _hooked(operator, system, f"http://127.0.0.1:{free_port()}/")  # nothing listens
    failed = await _bulk(operator, system).call("POST", _test_path(registration["id"]), expect=200)
    assert (failed["outcome"], failed["http_status"], failed["answer"]) == ("error", None, None)
    assert failed["error"].startswith("cannot connect")


async def test_a_private_hook_is_refused_by_a_bulk_api_that_does_not_allow_private_addresses(
    system: System, operator: Operator, hooked: Hooked
) -> None:
    async with system.instance("ingestion", {"FLEETREG_WEBHOOKS_ALLOW_PRIVATE_URLS": "false"}) as public_only:
        guarded = Operator(operator.session, public_only.url, operator.api_key, operator.account_id)
        refused = await guarded.call("POST", _test_path(hooked.registration["id"]), expect=200)
    assert (refused["outcome"], refused["http_status"]) == ("refused", None)
    assert "refused" in refused["error"]


async def test_who_may_test_and_list(
    operator: Operator, session: aiohttp.ClientSession, pool: Pool, system: System, hooked: Hooked
) -> None:
    api = _bulk(operator, system)
    registration_id = hooked.registration["id"]
    calls_path = f"{PATH}/{registration_id}/hook/calls"
    body, _ = _fleet(f"SN-{uuid.uuid4().hex[:8]}")
    status, without = await upload(session, system.bulk_url, operator, await bulk_product(operator), body)
    assert status == 201, without
    answer = await api.call("POST", _test_path(without["id"]), expect=409)
    assert (answer["error"], answer["field"], answer["rule"]) == ("conflict", "hook_url", "hook_required")
    assert f"bulk registration {without['id']} has no hook" in answer["message"]

    key = await operator.call("POST", "/v1/api-keys", {"label": "ro", "read_only": True}, expect=201)
    reader = Operator(session, system.bulk_url, key["api_key"], operator.account_id)
    await reader.call("POST", _test_path(registration_id), expect=403)  # the call is signed: a write
    await reader.call("GET", calls_path, expect=403)  # the hook's calls are an admin's, as the hook is
    assert await api.call("GET", calls_path, expect=200) == {"calls": []}

    stranger = _bulk(await new_operator(session, pool, system.operator_url), system)
    await stranger.call("POST", _test_path(registration_id), expect=404)
    await stranger.call("GET", calls_path, expect=404)
    # The kind is part of the address: an auto registration's hook is the operator API's.
    auto = await operator.product()
    await api.call("POST", _test_path(auto["id"]), expect=404)
    await api.call("GET", f"{PATH}/{auto['id']}/hook/calls", expect=404)
    await api.call("GET", f"{PATH}/not-an-id/hook/calls", expect=404)

    for sent, field_name in (({"hardware_id": "no spaces"}, "hardware_id"), ({"hardware": "x"}, "hardware")):
        refused = await api.call("POST", _test_path(registration_id), sent, expect=400)
        assert refused["field"] == field_name
    for query, rule in (
        ("?limit=501", "range=1..500"),
        ("?limit=x", "type=integer"),
        ("?after=1", "known_parameters"),
        ("?limit=1&limit=2", "once"),
    ):
        assert (await api.call("GET", calls_path + query, expect=400))["rule"] == rule


async def test_devices_claims_are_the_recent_calls(
    operator: Operator, session: aiohttp.ClientSession, system: System, hooked: Hooked
) -> None:
    """Two listed devices claim (the reference hook allows SN-0001 with its enrichment and
    denies SN-0009): each claim's call is listed, newest first, through the API and the CLI."""
    api = _bulk(operator, system)
    registration_id = hooked.registration["id"]
    await publish_and_wait(session, system.bulk_url, operator, registration_id)
    product = await operator.call("GET", f"/v1/products/{hooked.registration['product_id']}", expect=200)
    code = product["bulk_identification_code"]
    allowed = await register(
        session, system.device_url, code, "SN-0001", registration_key=hooked.keys["SN-0001"], cpu_id="c1"
    )
    assert (allowed.status, allowed.body["status"]) == (200, "ready"), allowed.body
    denied = await register(
        session, system.device_url, code, "SN-0009", registration_key=hooked.keys["SN-0009"], cpu_id="c9"
    )
    assert (denied.status, denied.body["reason_code"]) == (403, "hook_denied"), denied.body

    found = (await api.call("GET", f"{PATH}/{registration_id}/hook/calls", expect=200))["calls"]
    assert [(c["hardware_id"], c["decision"], c["outcome"], c["http_status"]) for c in found] == [
        ("SN-0009", "claim", "deny", 200),
        ("SN-0001", "claim", "allow", 200),
    ]
    newest, oldest = found
    assert oldest["request_id"] == allowed.body["request_id"] and oldest["assigned_hardware_id"] == "SN-0001"
    assert oldest["attempts"] == 1 and oldest["latency_ms"] >= 0 and oldest["answered_at"] is not None
    device = (await operator.devices(hardware_id="SN-0001"))[0]
    assert oldest["device_id"] == device["id"] and device["name"] == "pump-0001"
    limited = await api.call("GET", f"{PATH}/{registration_id}/hook/calls?limit=1", expect=200)
    assert [c["call_id"] for c in limited["calls"]] == [newest["call_id"]]

    listed = await fleetreg_json(operator, system, "bulk", "hook-calls", registration_id, "--limit", "1")
    assert [c["call_id"] for c in listed["calls"]] == [newest["call_id"]]
    code_, out, err = await fleetreg(operator, system, "bulk", "hook-calls", registration_id)
    assert code_ == 0, err
    assert "SN-0009" in out and "claim" in out and "deny" in out and out.rstrip().endswith("2 call(s)")


async def test_the_cli_tests_a_bulk_hook(operator: Operator, system: System, hooked: Hooked) -> None:
    registration_id = hooked.registration["id"]
    tested = await fleetreg_json(
        operator, system, "bulk", "hook-test", registration_id, "--hardware-id", "SN-0001"
    )
    assert (tested["outcome"], tested["answer"]["name"]) == ("allow", "pump-0001")
    code, out, err = await fleetreg(operator, system, "bulk", "hook-test", registration_id)
    assert code == 0, err
    assert "deny" in out and "SAMPLE-0001 is not in our serials list" in out
    failing, _ = await _hooked(operator, system, f"http://127.0.0.1:{free_port()}/")
    code, out, _ = await fleetreg(operator, system, "bulk", "hook-test", failing["id"])
    assert code == 1 and "cannot connect" in out
    stranger_id = str(uuid.uuid4())
    code, _, err = await fleetreg(operator, system, "bulk", "hook-test", stranger_id)
    assert code == 1 and stranger_id in err
