"""Bulk registration end to end: upload, publish, devices offline, claim with the key."""

from __future__ import annotations

import asyncio

import aiohttp

from shared.db.pool import Pool
from tests.support.api import Operator, provision, register
from tests.support.bulk import bulk_call, bulk_product, csv_rows, csv_text, publish_and_wait, upload
from tests.support.system import System


async def _code(operator: Operator, product_id: str) -> str:
    return str(
        (await operator.call("GET", f"/v1/products/{product_id}", expect=200))["bulk_identification_code"]
    )


async def test_upload_publish_and_claim_a_spreadsheet_export(
    system: System, session: aiohttp.ClientSession, operator: Operator
) -> None:
    product_id = await bulk_product(operator)
    spreadsheet = (
        "\ufeffREGISTRATION_KEY,HARDWARE_ID,DEVICE_NAME,CATEGORY_A,CATEGORY_B\r\n"
        "1c1b0dbe190e,f0038c1be545,Example Device,,\r\n"
        '"key,with,commas",f0038c1be546,"Pump 7",north,"hall ""B"""\r\n'
        "k3,f0038c1be547,,,\r\n"
        "\r\n\r\n"
    ).encode()
    status, registration = await upload(session, system.bulk_url, operator, product_id, spreadsheet)
    assert status == 201, registration
    assert (registration["status"], registration["rows"]) == ("configured", 3)
    assert await operator.devices() == []  # nothing until published

    published = await publish_and_wait(session, system.bulk_url, operator, registration["id"])
    assert (published["published"], published["conflicts"]) == (3, 0)
    devices = sorted(await operator.devices(), key=lambda d: d["hardware_id"])
    assert [
        (d["hardware_id"], d["name"], d["state"], d["lifecycle"], d["category_a"], d["category_b"])
        for d in devices
    ] == [
        ("f0038c1be545", "Example Device", "offline", "preregistered", "", ""),
        ("f0038c1be546", "Pump 7", "offline", "preregistered", "north", 'hall "B"'),
        ("f0038c1be547", "f0038c1be547", "offline", "preregistered", "", ""),
    ]
    assert {d["registration_id"] for d in devices} == {registration["id"]}

    code = await _code(operator, product_id)
    claim = await register(
        session,
        system.device_url,
        code,
        "f0038c1be546",
        cpu_id="c",
        mac="m",
        registration_key="key,with,commas",
    )
    assert claim.status == 200, claim.body
    assert (claim.body["decision"], claim.body["hardware_id"], claim.body["clone"]) == (
        "new",
        "f0038c1be546",
        False,
    )
    await provision(session, system.device_url, claim.body)
    for _ in range(100):
        device = await operator.call("GET", f"/v1/devices/{claim.body['device_id']}", expect=200)
        if device["lifecycle"] == "provisioned":
            break
        await asyncio.sleep(0.05)
    assert (device["lifecycle"], device["state"], device["name"]) == ("provisioned", "online", "Pump 7")

    # Bulk registered once per CSV: after confirming, a claim without the secret is refused...
    again = await register(
        session,
        system.device_url,
        code,
        "f0038c1be546",
        cpu_id="other",
        mac="m",
        registration_key="key,with,commas",
    )
    assert again.status == 403
    assert "reset it" in again.body["reason"]
    # ...the device itself, with its secret, is recognised...
    reboot = await register(
        session,
        system.device_url,
        code,
        "f0038c1be546",
        secret=claim.body["device_secret"],
        registration_key="key,with,commas",
    )
    assert reboot.body["decision"] == "same"
    # ...and after an operator reset the key claims it again.
    await operator.call("POST", f"/v1/devices/{claim.body['device_id']}/reset", expect=200)
    reclaimed = await register(
        session,
        system.device_url,
        code,
        "f0038c1be546",
        cpu_id="new",
        mac="m",
        registration_key="key,with,commas",
    )
    assert (reclaimed.status, reclaimed.body["device_id"]) == (200, claim.body["device_id"])


async def test_a_wrong_key_and_an_unlisted_device_get_the_same_refusal_and_guessing_never_locks_out(
    system: System, session: aiohttp.ClientSession, operator: Operator
) -> None:
    product_id = await bulk_product(operator)
    rows = csv_rows(2)
    status, registration = await upload(
        session, system.bulk_url, operator, product_id, csv_text(rows).encode()
    )
    assert status == 201
    await publish_and_wait(session, system.bulk_url, operator, registration["id"])
    code = await _code(operator, product_id)
    key, hardware_id, _ = rows[0]

    wrong_key = await register(session, system.device_url, code, hardware_id, registration_key="nope")
    unlisted = await register(session, system.device_url, code, "0123456789ab", registration_key=key)
    no_key = await register(session, system.device_url, code, hardware_id)
    assert wrong_key.status == unlisted.status == no_key.status == 403
    assert wrong_key.body["reason"] == unlisted.body["reason"] == no_key.body["reason"]
    # The e2e system raises an alert at 5 wrong keys for one hardware ID in the window
    # (FLEETREG_BULK_MAX_FAILED_CLAIMS); past it, the answers stay the same...
    for _ in range(6):
        guess = await register(session, system.device_url, code, hardware_id, registration_key="guess")
        assert (guess.status, guess.body["reason"]) == (403, wrong_key.body["reason"])
    # ...and the real device with the right key still claims: guessing locks nobody out.
    claimed = await register(session, system.device_url, code, hardware_id, registration_key=key)
    assert (claimed.status, claimed.body["decision"]) == (200, "new")
    alerts = (await operator.call("GET", "/v1/security-alerts", expect=200))["security_alerts"]
    assert [(a["kind"], a["hardware_id"]) for a in alerts] == [("bulk_key_guessing", hardware_id)]
    other_key, other_id, _ = rows[1]
    fine = await register(session, system.device_url, code, other_id, registration_key=other_key)
    assert fine.status == 200


async def test_a_hardware_id_taken_between_upload_and_publish_is_reported_per_row(
    system: System, session: aiohttp.ClientSession, operator: Operator
) -> None:
    product_id = await bulk_product(operator)
    rows = csv_rows(4)
    status, registration = await upload(
        session, system.bulk_url, operator, product_id, csv_text(rows).encode()
    )
    assert status == 201
    auto = await operator.product()  # another product of the account, auto registering
    taken = rows[2][1]
    assert (await register(session, system.device_url, auto["bulk_identification_code"], taken)).status == 200

    published = await publish_and_wait(session, system.bulk_url, operator, registration["id"])
    assert (published["published"], published["conflicts"]) == (3, 1)
    assert published["conflict_rows"] == [
        {
            "line": 4,
            "hardware_id": taken,
            "reason": "hardware ID registered in the account between upload and publish",
        }
    ]
    assert len(await operator.devices()) == 4  # three published, one auto registered: no duplicate


async def test_killing_ingestion_mid_publish_and_publishing_again_completes_without_duplicates(
    system: System, session: aiohttp.ClientSession, operator: Operator, pool: Pool
) -> None:
    product_id = await bulk_product(operator)
    rows = csv_rows(15000)
    status, registration = await upload(
        session, system.bulk_url, operator, product_id, csv_text(rows).encode()
    )
    assert status == 201, registration
    status, _ = await bulk_call(
        session, system.bulk_url, operator, "POST", f"/v1/bulk-registrations/{registration['id']}/publish"
    )
    assert status == 202
    for _ in range(1500):  # the first publish of a session waits for the consumer group to form
        done = await pool.fetchval(
            "SELECT published_count FROM registrations WHERE id = $1", registration["id"]
        )
        if done > 0:
            break
        await asyncio.sleep(0.02)
    system.services["ingestion"].kill()
    at_kill = await pool.fetchval(
        "SELECT published_count FROM registrations WHERE id = $1", registration["id"]
    )
    await system.restart("ingestion")

    published = await publish_and_wait(
        session, system.bulk_url, operator, registration["id"]
    )  # publishing again resumes
    assert 0 < at_kill < len(rows), "the kill came before or after the publish: it proved nothing"
    assert (published["published"], published["conflicts"]) == (len(rows), 0)
    count = await pool.fetchval("SELECT count(*) FROM devices WHERE registration_id = $1", registration["id"])
    assert count == len(rows)


async def test_a_product_serves_auto_or_bulk_registration_never_both(
    system: System, session: aiohttp.ClientSession, operator: Operator
) -> None:
    auto = await operator.product()
    status, body = await upload(
        session, system.bulk_url, operator, auto["product_id"], csv_text(csv_rows(1)).encode()
    )
    assert (status, body["rule"]) == (409, "one_registration_kind")
    product_id = await bulk_product(operator)
    status, _ = await upload(session, system.bulk_url, operator, product_id, csv_text(csv_rows(1)).encode())
    assert status == 201
    answer = await operator.call("POST", "/v1/auto-registrations", {"product_id": product_id}, expect=409)
    assert answer["rule"] == "one_registration_kind"


async def test_two_ingestion_instances_publish_two_uploads_at_once_each_row_once(
    system: System, session: aiohttp.ClientSession, operator: Operator, pool: Pool
) -> None:
    """Publishing goes on chunk after chunk per event: with two instances sharing the
    consumer group, two uploads (each sent to its own instance) publish side by side
    and every row becomes exactly one device."""
    second = await system.add_instance("ingestion")
    try:
        registrations = []
        for url in (system.bulk_url, second.url):
            rows = csv_rows(4000)
            status, registration = await upload(
                session, url, operator, await bulk_product(operator), csv_text(rows).encode()
            )
            assert status == 201, registration
            registrations.append(registration["id"])
        published = await asyncio.gather(
            publish_and_wait(session, system.bulk_url, operator, registrations[0]),
            publish_and_wait(session, second.url, operator, registrations[1]),
        )
    finally:
        code = second.stop()
        system.extra.remove(second)  # only its own: clearing dropped other tests' running instances
    assert code == 0
    assert [(p["status"], p["published"], p["conflicts"]) for p in published] == [
        ("preregistered", 4000, 0)
    ] * 2
    for registration_id in registrations:
        counts = await pool.fetchrow(
            """SELECT count(*) AS devices, count(DISTINCT lower(hardware_id)) AS distinct_ids
               FROM devices WHERE registration_id = $1""",
            registration_id,
        )
        assert (counts["devices"], counts["distinct_ids"]) == (4000, 4000)
