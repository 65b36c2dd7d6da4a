"""Limits on device creation and the brute-force alert (issue 9), end to end: an auto
registration's max_devices, the clone limit per hardware ID, wrong bulk keys raising an
alert without ever locking the real device out, and batch disable/reset."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import aiohttp

from shared.db.pool import Pool
from shared.domain.dedup import REASON_BULK_NOT_LISTED, reason_clone_limit, reason_max_devices
from tests.support.api import Operator, new_operator, register
from tests.support.bulk import bulk_product, csv_rows, csv_text, publish_and_wait, upload
from tests.support.system import System, metric_sample

CLONE_LIMIT = 199  # FLEETREG_CLONE_LIMIT of the e2e system (tests/support/system.py)
ALERT_THRESHOLD = 5  # FLEETREG_BULK_MAX_FAILED_CLAIMS of the e2e system


async def decisions(operator: Operator) -> list[dict[str, Any]]:
    page = await operator.call("GET", "/v1/registration-decisions?limit=1000", expect=200)
    return list(page["decisions"])


async def locked_product(operator: Operator) -> str:
    product = await operator.call(
        "POST", "/v1/products", {"name": f"p-{uuid.uuid4().hex[:8]}", "services": []}, expect=201
    )
    await operator.call("POST", f"/v1/products/{product['id']}/lock", expect=200)
    return str(product["id"])


async def test_max_devices_creates_exactly_n_of_2n_concurrent_devices_and_refuses_the_rest(
    system: System, session: aiohttp.ClientSession, operator: Operator
) -> None:
    n = 10
    product_id = await locked_product(operator)
    registration = await operator.call(
        "POST", "/v1/auto-registrations", {"product_id": product_id, "max_devices": n}, expect=201
    )
    assert (registration["max_devices"], registration["device_count"]) == (n, 0)
    code = registration["bulk_identification_code"]
    dedup = system.services["dedup"].ops_url
    before = await metric_sample(session, dedup, "fleetreg_quota_refusals_total", quota="max_devices")

    answers = await asyncio.gather(
        *[
            register(session, system.device_url, code, f"q{i:04d}", cpu_id=f"c{i}", mac="m")
            for i in range(2 * n)
        ]
    )
    created = [a for a in answers if a.status == 200]
    refused = [a for a in answers if a.status != 200]
    assert len(created) == n, [a.body for a in answers]
    assert {a.status for a in refused} == {403}
    assert {a.body["reason"] for a in refused} == {reason_max_devices(n)}
    assert reason_max_devices(n) == f"quota reached: auto registration max_devices={n}"
    assert len(await operator.devices()) == n
    shown = await operator.call("GET", f"/v1/auto-registrations/{registration['id']}", expect=200)
    assert shown["device_count"] == n
    trail = [d for d in await decisions(operator) if d["decision"] == "refused"]
    assert len(trail) == n
    assert all(d["reason"] == reason_max_devices(n) and d["device_id"] is None for d in trail)
    after = await metric_sample(session, dedup, "fleetreg_quota_refusals_total", quota="max_devices")
    assert after - before == n

    # Cleared, the quota stops refusing; set again, it applies from the next claim on.
    cleared = await operator.call(
        "PATCH", f"/v1/auto-registrations/{registration['id']}", {"max_devices": None}, expect=200
    )
    assert cleared["max_devices"] is None
    more = await register(session, system.device_url, code, "q-more", cpu_id="x", mac="m")
    assert (more.status, more.body["decision"]) == (200, "new")
    await operator.call(
        "PATCH", f"/v1/auto-registrations/{registration['id']}", {"max_devices": n}, expect=200
    )
    over = await register(session, system.device_url, code, "q-over", cpu_id="y", mac="m")
    assert (over.status, over.body["reason"]) == (403, reason_max_devices(n))
    assert len(await operator.devices()) == n + 1


async def test_a_retry_of_a_registered_device_is_not_refused_at_the_quota(
    system: System, session: aiohttp.ClientSession, operator: Operator
) -> None:
    product_id = await locked_product(operator)
    registration = await operator.call(
        "POST", "/v1/auto-registrations", {"product_id": product_id, "max_devices": 1}, expect=201
    )
    code = registration["bulk_identification_code"]
    first = await register(session, system.device_url, code, "r-1", cpu_id="a", mac="m")
    assert first.status == 200
    retry = await register(session, system.device_url, code, "r-1", cpu_id="a", mac="m")
    assert (retry.status, retry.body["decision"], retry.body["device_id"]) == (
        200,
        "same",
        first.body["device_id"],
    )
    # The retry (no Idempotency-Key) revoked the first answer's secret: the device holds the retry's.
    reboot = await register(session, system.device_url, code, "r-1", secret=retry.body["device_secret"])
    assert (reboot.status, reboot.body["decision"]) == (200, "same")
    clone = await register(session, system.device_url, code, "r-1", cpu_id="b", mac="m")
    assert (clone.status, clone.body["reason"]) == (403, reason_max_devices(1))


async def test_max_devices_input_is_validated_with_the_field_and_rule(operator: Operator) -> None:
    product_id = await locked_product(operator)
    for value, rule in (
        ("5", "type=integer"),
        (True, "type=integer"),
        (1.5, "type=integer"),
        (0, "range=1..2147483647"),
        (2**31, "range=1..2147483647"),
    ):
        answer = await operator.call(
            "POST", "/v1/auto-registrations", {"product_id": product_id, "max_devices": value}, expect=400
        )
        assert (answer["field"], answer["rule"]) == ("max_devices", rule), value
    registration = await operator.call(
        "POST", "/v1/auto-registrations", {"product_id": product_id}, expect=201
    )
    assert registration["max_devices"] is None
    path = f"/v1/auto-registrations/{registration['id']}"
    assert (await operator.call("PATCH", path, {}, expect=400))["rule"] == "required"
    assert (await operator.call("PATCH", path, {"status": "paused"}, expect=400))["rule"] == "unknown_field"
    assert (await operator.call("PATCH", path, {"max_devices": -1}, expect=400))["field"] == "max_devices"
    assert (await operator.call("PATCH", path, [1], expect=400))["error"] == "invalid_input"
    await operator.call("PATCH", f"/v1/auto-registrations/{uuid.uuid4()}", {"max_devices": 3}, expect=404)
    assert (await operator.call("PATCH", path, {"max_devices": 3}, expect=200))["max_devices"] == 3


async def test_a_clone_flood_creates_exactly_the_clone_limit_and_nothing_more(
    system: System, session: aiohttp.ClientSession, operator: Operator
) -> None:
    code = (await operator.product())["bulk_identification_code"]
    h = "f100d0000001"
    flood = CLONE_LIMIT + 41
    dedup = system.services["dedup"].ops_url
    before = await metric_sample(session, dedup, "fleetreg_quota_refusals_total", quota="clone_limit")
    answers = await asyncio.gather(
        *[
            register(session, system.device_url, code, h, cpu_id=f"cpu-{i}", mac=f"mac-{i}")
            for i in range(flood)
        ]
    )
    ok = [a for a in answers if a.status == 200]
    refused = [a for a in answers if a.status != 200]
    assert len(ok) == 1 + CLONE_LIMIT, [a.body for a in refused][:3]
    assert sorted(a.body["hardware_id"] for a in ok) == sorted(
        [h] + [f"{h}-{n}" for n in range(1, CLONE_LIMIT + 1)]
    )
    assert {(a.status, a.body["reason"]) for a in refused} == {(403, reason_clone_limit(CLONE_LIMIT, 3600))}
    assert len(await operator.devices()) == 1 + CLONE_LIMIT
    trail = [d for d in await decisions(operator) if d["decision"] == "refused"]
    assert len(trail) == flood - 1 - CLONE_LIMIT
    assert all(d["device_id"] is None and d["claimed_hardware_id"] == h for d in trail)
    after = await metric_sample(session, dedup, "fleetreg_quota_refusals_total", quota="clone_limit")
    assert after - before == flood - 1 - CLONE_LIMIT
    # Another hardware ID of the same image is not held back.
    other = await register(session, system.device_url, code, "f100d0000002", cpu_id="z", mac="z")
    assert (other.status, other.body["decision"]) == (200, "new")


async def test_guessing_keys_raises_an_alert_and_never_locks_out_the_right_key(
    system: System, session: aiohttp.ClientSession, operator: Operator
) -> None:
    product_id = await bulk_product(operator)
    rows = csv_rows(2)
    status, registration = await upload(
        session, system.bulk_url, operator, product_id, csv_text(rows).encode()
    )
    assert status == 201, registration
    await publish_and_wait(session, system.bulk_url, operator, registration["id"])
    code = (await operator.call("GET", f"/v1/products/{product_id}", expect=200))["bulk_identification_code"]
    key, hardware_id, _ = rows[0]
    dedup = system.services["dedup"].ops_url
    raised_before = await metric_sample(
        session, dedup, "fleetreg_security_alerts_total", kind="bulk_key_guessing"
    )

    guesses = [
        await register(session, system.device_url, code, hardware_id, registration_key=f"guess-{i}")
        for i in range(3 * ALERT_THRESHOLD)
    ]
    unlisted = await register(session, system.device_url, code, "0123456789ab", registration_key=key)
    # Every wrong key, before and after the alert, gets exactly the unlisted hardware ID's answer.
    assert {(g.status, g.body["reason"]) for g in guesses} == {(403, REASON_BULK_NOT_LISTED)}
    assert {tuple(sorted(set(g.body) - {"request_id"})) for g in guesses} == {
        tuple(sorted(set(unlisted.body) - {"request_id"}))
    }
    assert (unlisted.status, unlisted.body["reason"]) == (403, REASON_BULK_NOT_LISTED)

    # The real device, with the right key, is not held back by the guessing.
    real = await register(
        session, system.device_url, code, hardware_id, cpu_id="real", mac="m", registration_key=key
    )
    assert (real.status, real.body["decision"], real.body["hardware_id"]) == (200, "new", hardware_id)

    alerts = (await operator.call("GET", "/v1/security-alerts", expect=200))["security_alerts"]
    assert [(a["kind"], a["hardware_id"], a["listed"], a["product_id"]) for a in alerts] == [
        ("bulk_key_guessing", hardware_id, True, product_id)
    ]
    assert alerts[0]["wrong_keys"] == 3 * ALERT_THRESHOLD
    raised_after = await metric_sample(
        session, dedup, "fleetreg_security_alerts_total", kind="bulk_key_guessing"
    )
    assert raised_after - raised_before == 1
    filtered = await operator.call("GET", "/v1/security-alerts?kind=bulk_key_guessing&limit=1", expect=200)
    assert [a["id"] for a in filtered["security_alerts"]] == [alerts[0]["id"]]
    assert (await operator.call("GET", "/v1/security-alerts?kind=nope", expect=400))["field"] == "kind"


async def test_alerts_are_account_scoped(
    system: System, session: aiohttp.ClientSession, operator: Operator, pool: Pool
) -> None:
    other = await new_operator(session, pool, system.operator_url)
    assert (await other.call("GET", "/v1/security-alerts", expect=200))["security_alerts"] == []


async def test_batch_disable_and_reset_change_only_the_accounts_devices(
    system: System, session: aiohttp.ClientSession, operator: Operator, pool: Pool
) -> None:
    code = (await operator.product())["bulk_identification_code"]
    mine = [
        (await register(session, system.device_url, code, f"b{i}", cpu_id=f"c{i}", mac="m")).body
        for i in range(4)
    ]
    stranger = await new_operator(session, pool, system.operator_url)
    theirs = (
        await register(
            session,
            system.device_url,
            (await stranger.product())["bulk_identification_code"],
            "t1",
            cpu_id="t",
            mac="t",
        )
    ).body
    unknown = str(uuid.uuid4())
    ids = [mine[0]["device_id"], mine[1]["device_id"].upper(), theirs["device_id"], unknown]

    disabled = await operator.call("POST", "/v1/devices/disable", {"device_ids": ids}, expect=200)
    assert [(r["id"], r["outcome"]) for r in disabled["results"]] == [
        (mine[0]["device_id"], "disabled"),
        (mine[1]["device_id"], "disabled"),
        (theirs["device_id"], "not_found"),
        (unknown, "not_found"),
    ]
    assert [r["device"]["state"] if r["device"] else None for r in disabled["results"]] == [
        "disabled",
        "disabled",
        None,
        None,
    ]
    assert disabled["counts"] == {"disabled": 2, "not_found": 2}
    again = await operator.call("POST", "/v1/devices/disable", {"device_ids": ids[:1]}, expect=200)
    assert again["results"][0]["outcome"] == "unchanged"
    refused = await register(session, system.device_url, code, "b0", secret=mine[0]["device_secret"])
    assert refused.status == 403

    reset = await operator.call(
        "POST",
        "/v1/devices/reset",
        {"device_ids": [mine[2]["device_id"], mine[0]["device_id"], theirs["device_id"]]},
        expect=200,
    )
    assert [r["outcome"] for r in reset["results"]] == ["reset", "conflict", "not_found"]
    assert reset["results"][0]["device"]["lifecycle"] == "preregistered"
    # Nothing of the other account changed.
    other_device = await stranger.call("GET", f"/v1/devices/{theirs['device_id']}", expect=200)
    assert (other_device["disabled"], other_device["lifecycle"]) == (False, "registered")
    assert [h["kind"] for h in other_device["history"]] == ["registration"]
    # The reset device's old secret stops working; the untouched one still registers as itself.
    old = await register(session, system.device_url, code, "b2", secret=mine[2]["device_secret"])
    assert old.body.get("device_id") != mine[2]["device_id"] or old.body.get("decision") != "same"
    same = await register(session, system.device_url, code, "b3", secret=mine[3]["device_secret"])
    assert (same.status, same.body["decision"]) == (200, "same")


async def test_batch_input_is_validated_per_id(operator: Operator) -> None:
    ok = str(uuid.uuid4())
    for body, field, rule in (
        ({}, "device_ids", "required"),
        ({"device_ids": ok}, "device_ids", "type=array"),
        ({"device_ids": []}, "device_ids", "items=1..1000"),
        ({"device_ids": [str(uuid.uuid4()) for _ in range(1001)]}, "device_ids", "items=1..1000"),
        ({"device_ids": [ok, "nope"]}, "device_ids[1]", "format=uuid"),
        ({"device_ids": [ok, 7]}, "device_ids[1]", "format=uuid"),
        ({"device_ids": [ok, ok.upper()]}, "device_ids[1]", "unique"),
    ):
        for action in ("disable", "reset"):
            answer = await operator.call("POST", f"/v1/devices/{action}", body, expect=400)
            assert (answer["field"], answer["rule"]) == (field, rule), body
    many = await operator.call(
        "POST", "/v1/devices/reset", {"device_ids": [str(uuid.uuid4()) for _ in range(1000)]}, expect=200
    )
    assert many["counts"] == {"not_found": 1000}


async def test_the_cli_sets_quotas_lists_alerts_and_changes_devices_in_batches(
    system: System, session: aiohttp.ClientSession, operator: Operator
) -> None:
    from tests.e2e.test_cli import fleetreg, fleetreg_json

    product_id = await locked_product(operator)
    auto = await fleetreg_json(
        operator, system, "auto", "create", "--product", product_id, "--max-devices", "2"
    )
    assert (auto["max_devices"], auto["device_count"]) == (2, 0)
    assert (await fleetreg_json(operator, system, "auto", "update", auto["id"], "--max-devices", "3"))[
        "max_devices"
    ] == 3
    assert (await fleetreg_json(operator, system, "auto", "update", auto["id"], "--no-max-devices"))[
        "max_devices"
    ] is None
    code, _, err = await fleetreg(operator, system, "auto", "update", auto["id"], "--max-devices", "0")
    assert code == 1 and "max_devices" in err and err.count("\n") == 1
    assert (await fleetreg_json(operator, system, "alerts", "list")) == {"security_alerts": []}

    device = (
        await register(
            session, system.device_url, auto["bulk_identification_code"], "cli-1", cpu_id="c", mac="m"
        )
    ).body
    disabled = await fleetreg_json(operator, system, "devices", "disable", device["device_id"])
    assert disabled["results"] == [{"id": device["device_id"], "outcome": "disabled"}]
    unknown = str(uuid.uuid4())
    code, out, err = await fleetreg(operator, system, "devices", "reset", device["device_id"], unknown)
    assert code == 1 and err.count("\n") == 1 and "2 of 2 device(s) not changed" in err
    assert "conflict" in out and "not_found" in out
