"""Claims that stay in their product and devices that survive a power cut before "ready"
(issue 22; docs/security.md, "A claim stays in its product" and "The window before
ready"), on the running services with inputs of their own: an auto product and bulk
products in one account, a bulk board that loses power, an auto board that loses its
answer, and a look-alike from another address."""

from __future__ import annotations

import asyncio
import ssl
import uuid
from typing import Any

import aiohttp
import pytest

from shared.domain.dedup import REASON_BULK_ALREADY_CLAIMED, REASON_BULK_NOT_LISTED
from tests.e2e.test_face_the_internet import read, refused_within
from tests.support.api import Operator, provision, register
from tests.support.bulk import bulk_product, csv_rows, csv_text, publish_and_wait, upload
from tests.support.sources import fresh_address, from_address
from tests.support.system import System

pytestmark = pytest.mark.e2e

BOARDS = 30  # boards of one image sharing a placeholder serial, CPU ID and MAC (attack2 F10)


async def published(
    operator: Operator, system: System, session: aiohttp.ClientSession
) -> tuple[str, str, tuple[str, str, str]]:
    """A bulk product with one published row: (product ID, code, (key, hardware ID, name))."""
    product_id = await bulk_product(operator)
    rows = csv_rows(1)
    status, registration = await upload(
        session, system.bulk_url, operator, product_id, csv_text(rows).encode()
    )
    assert status == 201, registration
    await publish_and_wait(session, system.bulk_url, operator, registration["id"])
    code = (await operator.call("GET", f"/v1/products/{product_id}", expect=200))["bulk_identification_code"]
    return product_id, code, rows[0]


async def status_with(
    session: aiohttp.ClientSession, system: System, answer: dict[str, Any], secret: str
) -> int:
    """What the device's manifest answers to ``secret``."""
    async with session.get(
        f"{system.device_url}/v1/devices/{answer['device_id']}/manifest",
        headers={"Authorization": f"Bearer {secret}"},
    ) as response:
        return response.status


def shape(answer: Any) -> tuple[int, dict[str, Any]]:
    return answer.status, {k: v for k, v in answer.body.items() if k != "request_id"}


async def test_a_claim_stays_in_its_product_before_and_after_the_operator_s_reset(
    system: System, operator: Operator, session: aiohttp.ClientSession
) -> None:
    """Auto product A and bulk products B and C in one account. A's code naming B's listed
    hardware ID gets a clone in A, never B's device; C's code with B's row key gets the
    unlisted refusal (also on the reference protocol); B's board then gets its device."""
    auto = await operator.product()
    code_a = auto["bulk_identification_code"]
    product_b, code_b, (key, hardware_id, _) = await published(operator, system, session)
    _, code_c, _ = await published(operator, system, session)
    ctx = ssl.create_default_context(cafile=str(system.tls_ca))

    async def other_products(round_: int) -> None:
        stolen = await register(session, system.device_url, code_a, hardware_id, cpu_id=f"x{round_}", mac="x")
        assert stolen.status == 200, stolen.body
        assert (stolen.body["clone"], stolen.body["hardware_id"]) == (True, f"{hardware_id}-{round_}")
        [device] = await operator.devices(hardware_id=stolen.body["hardware_id"])
        assert device["product_id"] == auto["product_id"]
        unlisted = await register(session, system.device_url, code_c, "0123456789ab", registration_key=key)
        for with_key in (
            await register(session, system.device_url, code_c, hardware_id, registration_key=key),
            await register(
                session, system.device_url, code_c, hardware_id, cpu_id="y", mac="y", registration_key=key
            ),
        ):
            assert shape(with_key) == shape(unlisted) == (403, shape(unlisted)[1])
            assert with_key.body["reason"] == REASON_BULK_NOT_LISTED
        body = {"project_id": code_c, "hardware_id": hardware_id, "registration_key": key}
        async with session.post(f"{system.compat_url}/bulk/registration/register", json=body, ssl=ctx) as r:
            reference = read(await r.text())
        assert (reference["status"], reference["reason"]) == ("false", REASON_BULK_NOT_LISTED)

    await other_products(1)
    real = await register(
        session, system.device_url, code_b, hardware_id, cpu_id="real", mac="m", registration_key=key
    )
    assert (real.status, real.body["decision"], real.body["hardware_id"]) == (200, "new", hardware_id)
    [device] = await operator.devices(hardware_id=hardware_id)
    assert (device["id"], device["product_id"]) == (real.body["device_id"], product_b)

    reset = await operator.call(
        "POST", "/v1/devices/reset", {"device_ids": [real.body["device_id"]]}, expect=200
    )
    assert [r["outcome"] for r in reset["results"]] == ["reset"]
    await other_products(2)
    again = await register(
        session, system.device_url, code_b, hardware_id, cpu_id="real", mac="m", registration_key=key
    )
    assert (again.status, again.body["decision"], again.body["device_id"]) == (
        200,
        "new",
        real.body["device_id"],
    )


async def test_a_bulk_board_that_loses_power_before_ready_gets_its_device_with_new_credentials(
    system: System, operator: Operator, session: aiohttp.ClientSession
) -> None:
    """Claimed with Idempotency-Key K1, no "ready"; the board boots again with a new key,
    then with none: the same device each time with a new secret (the earlier one refused),
    files that verify with it, and its "ready"; after that, today's rule stands."""
    _, code, (key, hardware_id, _) = await published(operator, system, session)

    async def claim(idempotency_key: str, include: str = "") -> dict[str, Any]:
        answer = await register(
            session,
            system.device_url,
            code,
            hardware_id,
            cpu_id="cpu",
            mac="mac",
            registration_key=key,
            idempotency_key=idempotency_key,
            include=include,
        )
        assert answer.status == 200, answer.body
        return answer.body

    first = await claim("k1")
    assert first["decision"] == "new"
    assert (await claim("k1"))["device_secret"] == first["device_secret"]  # the same key: the same answer
    second = await claim(str(uuid.uuid4()))
    third = await claim("", include="files")
    answers = [first, second, third]
    assert {a["device_id"] for a in answers} == {first["device_id"]}
    assert [a["decision"] for a in answers] == ["new", "same", "same"]
    assert [a["hardware_id"] for a in answers] == [hardware_id] * 3
    assert len({a["device_secret"] for a in answers}) == 3
    for earlier in (first, second):
        assert await status_with(session, system, third, earlier["device_secret"]) == 401
    assert third["manifest"]["files"]  # the two-call boot's files, of the new generation
    await provision(session, system.device_url, third)  # every file verified with the new secret, then ready
    after = await register(
        session,
        system.device_url,
        code,
        hardware_id,
        cpu_id="cpu",
        mac="mac",
        registration_key=key,
        idempotency_key="k5",
    )
    assert (after.status, after.body["reason"]) == (403, REASON_BULK_ALREADY_CLAIMED)


async def test_an_auto_board_that_lost_its_answer_is_no_ghost_and_a_second_source_is_alerted(
    system: System, operator: Operator
) -> None:
    """An auto board loses its answer and claims again with a new Idempotency-Key: H again
    (no H-1, no ghost H), the earlier credentials revoked. A look-alike from another
    address does the same: it gets H too (the code mode's stated limit), and the operator
    sees two_sources_before_ready."""
    code = (await operator.product())["bulk_identification_code"]
    hardware_id = uuid.uuid4().hex[:12]
    board, other = fresh_address(), fresh_address()
    async with from_address(board) as at_board, from_address(other) as elsewhere:

        async def claim(session: aiohttp.ClientSession, idempotency_key: str) -> dict[str, Any]:
            answer = await register(
                session,
                system.device_url,
                code,
                hardware_id,
                cpu_id="c",
                mac="m",
                idempotency_key=idempotency_key,
            )
            assert answer.status == 200, answer.body
            return answer.body

        first = await claim(at_board, "k1")
        lost = await claim(at_board, "k2")
        assert (lost["device_id"], lost["hardware_id"], lost["decision"]) == (
            first["device_id"],
            hardware_id,
            "same",
        )
        assert await status_with(at_board, system, lost, first["device_secret"]) == 401
        assert await status_with(at_board, system, lost, lost["device_secret"]) == 200
        assert [d["hardware_id"] for d in await operator.devices()] == [hardware_id]
        assert not (await operator.call("GET", "/v1/security-alerts", expect=200))["security_alerts"]

        look_alike = await claim(elsewhere, "k3")
        assert look_alike["device_id"] == first["device_id"]
        # The secret the intake had cached is dropped when deduplication's notification
        # arrives: within its delivery time, as after an operator's reset.
        manifest_url = f"{system.device_url}/v1/devices/{lost['device_id']}/manifest"
        await refused_within(at_board, manifest_url, lost["device_secret"], 401)
        # Revoked by a reclaim: told so (register again), not counted as a guess (attack2 F3).
        for revoked in (first, lost):
            auth = {"Authorization": f"Bearer {revoked['device_secret']}"}
            async with at_board.get(manifest_url, headers=auth) as r:
                assert (r.status, (await r.json())["error"]) == (401, "credentials_replaced")
        history = (await operator.call("GET", f"/v1/devices/{first['device_id']}", expect=200))["history"]
        assert [e["credential_generation"] for e in history if e["kind"] == "reclaimed"] == [2, 3]

        # The look-alike confirms: the device is its own until the operator resets or deletes
        # it; the board's next claim is a clone (docs/security.md, "The window before ready").
        await provision(elsewhere, system.device_url, look_alike)
        for _ in range(200):
            (device,) = await operator.devices()
            if device["lifecycle"] == "provisioned":
                break
            await asyncio.sleep(0.05)
        assert device["lifecycle"] == "provisioned"
        again = await claim(at_board, "k4")
        assert (again["decision"], again["hardware_id"]) == ("clone", f"{hardware_id}-1")
    alerts = (await operator.call("GET", "/v1/security-alerts", expect=200))["security_alerts"]
    assert [(a["kind"], a["hardware_id"], a["source"], a["count"]) for a in alerts] == [
        ("two_sources_before_ready", hardware_id, other, 2)
    ]


async def test_a_look_alike_on_the_reference_protocol_is_decided_and_alerted_before_ready(
    system: System, operator: Operator, session: aiohttp.ClientSession
) -> None:
    """A bulk board claimed on the native API (its key and fingerprint), not yet confirmed;
    a look-alike at another address sends the reference protocol's step 1 with the board's
    CPU ID and MAC and step 5 with the row key. It is decided by deduplication like any
    other claim, so the second address raises ``two_sources_before_ready`` (the exposure
    itself is the code mode's stated limit: docs/security.md, "The window before ready")."""
    _, code, (key, hardware_id, _) = await published(operator, system, session)
    board_address, other_address = fresh_address(), fresh_address()
    async with from_address(board_address) as board:
        claimed = await register(
            board, system.device_url, code, hardware_id, cpu_id="cpu-1", mac="mac-1", registration_key=key
        )
        assert claimed.status == 200, claimed.body
    ctx = ssl.create_default_context(cafile=str(system.tls_ca))
    async with from_address(other_address) as look_alike:
        information = {"BulkIdentificationCode": code, "HardwareId": hardware_id, "CPUId": "cpu-1"}
        information["MACAddress"] = "mac-1"
        async with look_alike.post(
            f"{system.compat_url}/bulk/registration/device/information/", json=information, ssl=ctx
        ) as r:
            assert r.status == 200, await r.text()
        body = {"project_id": code, "hardware_id": hardware_id, "registration_key": key}
        for _ in range(50):
            async with look_alike.post(
                f"{system.compat_url}/bulk/registration/register", json=body, ssl=ctx
            ) as r:
                answer = read(await r.text())
            if answer.get("status") != "pending":
                break
    assert answer.get("status") == "true", answer
    alerts = (await operator.call("GET", "/v1/security-alerts", expect=200))["security_alerts"]
    assert [
        (a["kind"], a["hardware_id"], a["source"]) for a in alerts if a["hardware_id"] == hardware_id
    ] == [("two_sources_before_ready", hardware_id, other_address)]


async def test_claims_sent_together_before_ready_leave_one_working_secret(
    system: System, operator: Operator
) -> None:
    """attack2 F10: a board's reclaim and three look-alike claims (same hardware ID, CPU ID
    and MAC, new keys) sent at the same moment. Each answer carries its own generation:
    at most one secret works (the last generation's), every other answer has no secret or
    a revoked one; after the board claims again and confirms, no other copy works."""
    code = (await operator.product())["bulk_identification_code"]
    hardware_id = uuid.uuid4().hex[:12]
    async with from_address(fresh_address()) as at_board, from_address(fresh_address()) as elsewhere:

        async def claim(session: aiohttp.ClientSession, idempotency_key: str) -> dict[str, Any]:
            answer = await register(
                session,
                system.device_url,
                code,
                hardware_id,
                cpu_id="c",
                mac="m",
                idempotency_key=idempotency_key,
            )
            assert answer.status == 200, answer.body
            assert answer.body["hardware_id"] == hardware_id
            return answer.body

        await claim(at_board, "board-1")
        answers = await asyncio.gather(
            claim(at_board, "board-2"), *(claim(elsewhere, f"evil-{n}") for n in range(3))
        )
        assert {a["decision"] for a in answers} == {"same"}
        working = [
            a
            for a in answers
            if a.get("device_secret") and await status_with(at_board, system, a, a["device_secret"]) == 200
        ]
        # The last decided claim's answer holds the device's credentials; the others none
        # (superseded in the same batch) or revoked ones (decided in an earlier batch).
        assert len(working) == 1
        assert len({a["device_id"] for a in answers}) == 1
        final = await claim(at_board, "board-3")
        await provision(at_board, system.device_url, final)
        for a in answers:
            if a.get("device_secret"):
                assert await status_with(elsewhere, system, a, a["device_secret"]) == 401
        assert await status_with(at_board, system, final, final["device_secret"]) == 200


async def test_boards_with_placeholder_identifiers_are_clones_each_with_its_own_secret(
    system: System, operator: Operator
) -> None:
    """attack2 F10: boards of one image sharing a placeholder serial, CPU ID of zeros and an
    unprogrammed MAC, each with its own Idempotency-Key, booting at once from one address:
    clones H, H-1, ... each with its own secret, every one provisions (not one device)."""
    # The session pipeline's clone rate per source is high (tests/support/system.py): all
    # 30 boards of the tester's report behind one address, answered at once.
    code = (await operator.product())["bulk_identification_code"]
    serial = uuid.uuid4().hex[:12]
    async with from_address(fresh_address()) as site:
        answers = await asyncio.gather(
            *(
                register(
                    site,
                    system.device_url,
                    code,
                    serial,
                    cpu_id="0000000000000000",
                    mac="00:00:00:00:00:00" if n % 2 else "FF-FF-FF-FF-FF-FF",
                    idempotency_key=f"boot-{n}",
                )
                for n in range(BOARDS)
            )
        )
        assert [a.status for a in answers] == [200] * BOARDS
        bodies = [a.body for a in answers]
        assert sorted(b["hardware_id"] for b in bodies) == sorted(
            [serial] + [f"{serial}-{n}" for n in range(1, BOARDS)]
        )
        assert len({b["device_secret"] for b in bodies}) == BOARDS
        for body in bodies:
            await provision(site, system.device_url, body)
