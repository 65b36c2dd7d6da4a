"""The registration hook's operator surface end to end (docs/registration-hook.md,
"Operator surface"): a test call with a sample request against the reference hook run as a
real process (allow with enrichment, deny with a reason, a failure with its error), under
the operator's own address setting, audited; a registration without a hook, a read-only key
and another account refused; the recent calls listed from the registry, newest first; and
both through the CLI."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest

from shared.db.pool import Pool
from tests.e2e.test_cli import fleetreg, fleetreg_json
from tests.support.api import Operator, new_operator
from tests.support.reference_hook import reference_hook
from tests.support.system import LOGS, System, free_port


@dataclass(frozen=True)
class Hooked:
    """An auto registration whose hook is the reference hook, running."""

    registration: dict[str, str]
    url: str


async def _hooked_registration(operator: Operator, url: str) -> dict[str, str]:
    product = await operator.call(
        "POST",
        "/v1/products",
        {"name": f"p-{uuid.uuid4().hex[:8]}", "services": [{"type": "ssh", "port": 22}]},
        expect=201,
    )
    await operator.call("POST", f"/v1/products/{product['id']}/lock", expect=200)
    created: dict[str, str] = await operator.call(
        "POST", "/v1/auto-registrations", {"product_id": product["id"], "hook_url": url}, expect=201
    )
    return created


@pytest.fixture
async def hooked(operator: Operator, tmp_path: Path) -> AsyncIterator[Hooked]:
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    registration = await _hooked_registration(operator, url)
    async with reference_hook(tmp_path, registration["hook_secret"], port=port):
        yield Hooked(registration, url)


def _test_path(registration_id: str) -> str:
    return f"/v1/auto-registrations/{registration_id}/hook/test"


async def test_a_test_call_reaches_the_hook_signed_and_answers_its_ruling(
    operator: Operator, hooked: Hooked
) -> None:
    registration_id = hooked.registration["id"]
    offsets = {path: path.stat().st_size for path in LOGS.glob("*.log")}
    sample = await operator.call("POST", _test_path(registration_id), expect=200)
    assert (sample["hardware_id"], sample["outcome"], sample["http_status"], sample["error"]) == (
        "SAMPLE-0001",
        "deny",
        200,
        "",
    )
    assert sample["answer"]["reason"] == "SAMPLE-0001 is not in our serials list"
    assert sample["call_id"].startswith("test_") and sample["latency_ms"] > 0
    uuid.UUID(sample["request_id"])

    listed = await operator.call("POST", _test_path(registration_id), {"hardware_id": "SN-0002"}, expect=200)
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
    assert listed["call_id"] != sample["call_id"] and listed["request_id"] != sample["request_id"]

    # Audited with the host and the outcome; a test is no registration attempt.
    events = await operator.call("GET", "/v1/audit-events?action=auto_registration.hook_tested", expect=200)
    assert [(e["target_id"], e["changes"]) for e in events["audit_events"]] == [
        (registration_id, {"hook_host": "127.0.0.1", "outcome": "allow"}),
        (registration_id, {"hook_host": "127.0.0.1", "outcome": "deny"}),
    ]
    calls = await operator.call("GET", f"/v1/auto-registrations/{registration_id}/hook/calls", expect=200)
    assert calls == {"calls": []}
    # The secret signs the calls; no service logs it.
    for path in LOGS.glob("*.log"):
        with path.open("rb") as log:
            log.seek(offsets.get(path, 0))
            assert hooked.registration["hook_secret"][6:22].encode() not in log.read(), path


async def test_a_failing_hook_is_answered_with_its_failure(operator: Operator) -> None:
    registration = await _hooked_registration(operator, f"http://127.0.0.1:{free_port()}/")  # nothing listens
    failed = await operator.call("POST", _test_path(registration["id"]), expect=200)
    assert (failed["outcome"], failed["http_status"], failed["answer"]) == ("error", None, None)
    assert failed["error"].startswith("cannot connect")


async def test_a_private_hook_is_refused_by_an_operator_that_does_not_allow_private_addresses(
    system: System, session: aiohttp.ClientSession, operator: Operator, hooked: Hooked
) -> None:
    public_only = await system.add_instance("operator", {"FLEETREG_WEBHOOKS_ALLOW_PRIVATE_URLS": "false"})
    guarded = Operator(session, public_only.url, operator.api_key, operator.account_id)
    refused = await guarded.call("POST", _test_path(hooked.registration["id"]), expect=200)
    assert (refused["outcome"], refused["http_status"]) == ("refused", None)
    assert "refused" in refused["error"]


async def test_who_may_test_and_list(
    operator: Operator, session: aiohttp.ClientSession, pool: Pool, system: System, hooked: Hooked
) -> None:
    registration_id = hooked.registration["id"]
    without = await operator.product()
    answer = await operator.call("POST", _test_path(without["id"]), expect=409)
    assert (answer["error"], answer["field"], answer["rule"]) == ("conflict", "hook_url", "hook_required")
    assert "no hook" in answer["message"]

    key = await operator.call("POST", "/v1/api-keys", {"label": "ro", "read_only": True}, expect=201)
    reader = Operator(operator.session, operator.url, key["api_key"], operator.account_id)
    await reader.call("POST", _test_path(registration_id), expect=403)  # the call is signed: a write
    # The hook's calls are an admin's (docs/security.md, "Roles"), as the hook is.
    await reader.call("GET", f"/v1/auto-registrations/{registration_id}/hook/calls", expect=403)

    stranger = await new_operator(session, pool, system.operator_url)
    await stranger.call("POST", _test_path(registration_id), expect=404)
    await stranger.call("GET", f"/v1/auto-registrations/{registration_id}/hook/calls", expect=404)

    for body, field in (({"hardware_id": "no spaces"}, "hardware_id"), ({"hardware": "x"}, "hardware")):
        refused = await operator.call("POST", _test_path(registration_id), body, expect=400)
        assert refused["field"] == field


async def _insert_call(pool: Pool, registration: dict[str, str], account_id: str, n: int) -> str:
    call_id = f"msg_{uuid.uuid4().hex}"
    request_id = str(uuid.uuid4())
    at = datetime(2026, 12, 1, tzinfo=UTC) + timedelta(seconds=n)
    await pool.execute(
        """INSERT INTO registration_hook_calls
               (call_id, registration_id, account_id, request_id, request, decided, outcome, http_status,
                latency_ms, attempts, reserved_until, created_at, answered_at)
           VALUES ($1, $2, $3, $4, $5::jsonb, '{}'::jsonb, 'allow', 200, $6, 1, $7, $7, $7)""",
        call_id,
        registration["id"],
        account_id,
        request_id,
        json.dumps(
            {
                "request_id": request_id,
                "hardware_id": f"SN-{n}",
                "decision": "new",
                "assigned_hardware_id": f"SN-{n}",
            }
        ),
        10 + n,
        at,
    )
    return call_id


async def test_recent_calls_are_listed_newest_first(operator: Operator, pool: Pool, system: System) -> None:
    registration = await operator.product()
    path = f"/v1/auto-registrations/{registration['id']}/hook/calls"
    ids = [await _insert_call(pool, registration, operator.account_id, n) for n in range(3)]
    found = (await operator.call("GET", path, expect=200))["calls"]
    assert [c["call_id"] for c in found] == ids[::-1]
    assert {k: found[0][k] for k in ("hardware_id", "decision", "outcome", "http_status", "latency_ms")} == {
        "hardware_id": "SN-2",
        "decision": "new",
        "outcome": "allow",
        "http_status": 200,
        "latency_ms": 12,
    }
    assert found[0]["created_at"] == "2026-12-01T00:00:02+00:00" and found[0]["device_id"] is None
    assert [c["call_id"] for c in (await operator.call("GET", path + "?limit=1", expect=200))["calls"]] == [
        ids[2]
    ]
    for query, rule in (
        ("?limit=501", "range=1..500"),
        ("?limit=x", "type=integer"),
        ("?after=1", "known_parameters"),
    ):
        assert (await operator.call("GET", path + query, expect=400))["rule"] == rule

    listed = await fleetreg_json(operator, system, "auto", "hook-calls", registration["id"], "--limit", "2")
    assert [c["call_id"] for c in listed["calls"]] == ids[:0:-1]
    code, out, err = await fleetreg(operator, system, "auto", "hook-calls", registration["id"])
    assert code == 0, err
    assert "SN-2" in out and "12 ms" in out and out.rstrip().endswith("3 call(s)")


async def test_the_cli_tests_a_hook(operator: Operator, system: System, hooked: Hooked) -> None:
    registration_id = hooked.registration["id"]
    tested = await fleetreg_json(
        operator, system, "auto", "hook-test", registration_id, "--hardware-id", "SN-0001"
    )
    assert (tested["outcome"], tested["answer"]["name"]) == ("allow", "pump-0001")
    code, out, err = await fleetreg(operator, system, "auto", "hook-test", registration_id)
    assert code == 0, err
    assert "deny" in out and "SAMPLE-0001 is not in our serials list" in out
    failing = await _hooked_registration(operator, f"http://127.0.0.1:{free_port()}/")
    code, out, _ = await fleetreg(operator, system, "auto", "hook-test", failing["id"])
    assert code == 1 and "cannot connect" in out
    without = await operator.product()
    code, _, err = await fleetreg(operator, system, "auto", "hook-test", without["id"])
    assert code == 1 and "no hook to test" in err
