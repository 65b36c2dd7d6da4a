"""A NAT site behind a load balancer (issue 22, "throttling by what a call fails to prove"):
one public address carries a guesser crossing every limit (wrong codes, wrong device
secrets, wrong API keys, wrong bulk keys, a revoked code) while ~150 devices boot
(two-call boot) and provisioned devices heartbeat; every call that proves something is
answered, stale credentials (after the operator's reset and delete) and calls with no
credential are not counted, and every 401 carries ``WWW-Authenticate``.

The site's address reaches the services as the load balancer reports it, in
``X-Forwarded-For`` from a trusted proxy (127.0.0.1, ``FLEETREG_TRUSTED_PROXIES``); its
instances run with short windows (seconds, not minutes) to keep the test fast. Each run
draws fresh addresses: the refusal counters live in Postgres and outlast a run.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from shared.domain.admission import REASON_REVOKED_CODE
from tests.support.api import Operator, provision, register
from tests.support.bulk import bulk_product, csv_rows, csv_text, publish_and_wait, upload
from tests.support.sources import behind, public_address
from tests.support.system import ServiceProcess, System

pytestmark = pytest.mark.e2e

# Short windows: the guesser crosses the source's per-2-seconds allowance and then its
# hourly one within seconds, and each target's allowance at its third guess.
LIMITS = {
    "FLEETREG_LIMIT_REFUSALS_PER_SOURCE": "10/2 seconds;30/hour",
    "FLEETREG_LIMIT_REFUSALS_PER_TARGET": "3/2 seconds",
    "FLEETREG_LIMIT_REQUESTS_PER_KEY": "10000/second",
    "FLEETREG_TRUSTED_PROXIES": "127.0.0.1/32",
}
BOOTS = 150
PROVISIONED = 24  # 12 heartbeat untouched, 8 are reset by the operator, 4 deleted
DEVICE_REALM = 'Bearer realm="fleetreg devices"'
OPERATOR_REALM = 'Bearer realm="fleetreg operators"'


@pytest.fixture(scope="module")
async def site(system: System) -> AsyncIterator[dict[str, ServiceProcess]]:
    """An intake, operator and ingestion instance behind the "load balancer", short windows."""
    async with contextlib.AsyncExitStack() as stack:
        yield {
            name: await stack.enter_async_context(system.instance(name, LIMITS))
            for name in ("intake", "operator", "ingestion")
        }


async def boot(client: aiohttp.ClientSession, url: str, code: str, hardware_id: str) -> float:
    """A two-call boot (registration with include=files, then ready); its duration in seconds."""
    started = time.perf_counter()
    body = {
        "bulk_identification_code": code,
        "hardware_id": hardware_id,
        "fingerprint": {"cpu_id": hardware_id},
    }
    async with client.post(
        f"{url}/v1/registrations?include=files", json=body, headers={"Idempotency-Key": str(uuid.uuid4())}
    ) as r:
        status, answer = r.status, await r.json()
    while status == 202:  # pending: poll, as a device does
        await asyncio.sleep(0.2)
        async with client.get(f"{url}/v1/registrations/{answer['request_id']}?include=files") as r:
            status, answer = r.status, await r.json()
    assert status == 200 and "manifest" in answer, (status, answer)
    auth = {"Authorization": f"Bearer {answer['device_secret']}"}
    async with client.post(f"{url}/v1/devices/{answer['device_id']}/ready", headers=auth) as r:
        assert r.status == 202, await r.text()
    return time.perf_counter() - started


async def boot_storm(client: aiohttp.ClientSession, url: str, code: str, tag: str) -> tuple[float, float]:
    """``BOOTS`` two-call boots, 30 at a time: (p50 seconds, boots a second)."""
    gate = asyncio.Semaphore(30)

    async def one(i: int) -> float:
        async with gate:
            return await boot(client, url, code, f"{tag}-{i}")

    started = time.perf_counter()
    durations = await asyncio.gather(*(one(i) for i in range(BOOTS)))
    return statistics.median(durations), BOOTS / (time.perf_counter() - started)


async def heartbeat(client: aiohttp.ClientSession, url: str, device_id: str, secret: str | None) -> Any:
    headers = {"Authorization": f"Bearer {secret}"} if secret is not None else {}
    async with client.post(f"{url}/v1/devices/{device_id}/heartbeat", headers=headers) as r:
        return r.status, r.headers.get("WWW-Authenticate"), await r.json()


def challenged(status: int, challenge: str | None, realm: str) -> bool:
    """A 401 carries the Bearer challenge of its API, with invalid_token (a credential was sent)."""
    return status != 401 or challenge == f'{realm}, error="invalid_token"'


async def test_a_guesser_behind_a_nat_address_slows_itself_and_never_its_neighbours(
    site: dict[str, ServiceProcess], operator: Operator, system: System, session: aiohttp.ClientSession
) -> None:
    intake, admin, bulk = site["intake"].url, site["operator"].url, site["ingestion"].url
    run = uuid.uuid4().hex[:6]
    code = (await operator.product())["bulk_identification_code"]
    rotated = await operator.product()
    await operator.call("POST", f"/v1/auto-registrations/{rotated['id']}/rotate-code", expect=200)
    revoked = rotated["bulk_identification_code"]
    product_id = await bulk_product(operator)
    rows = csv_rows(2, prefix=f"n{run}")
    status, listed = await upload(session, system.bulk_url, operator, product_id, csv_text(rows).encode())
    assert status == 201, listed
    await publish_and_wait(session, system.bulk_url, operator, listed["id"])
    bulk_code = (await operator.call("GET", f"/v1/products/{product_id}", expect=200))[
        "bulk_identification_code"
    ]

    address = public_address()
    async with behind(address) as nat:
        # The site's provisioned devices; the operator resets some and deletes others.
        answers = await asyncio.gather(
            *(register(nat, intake, code, f"p{run}-{i}", cpu_id=f"c{i}") for i in range(PROVISIONED))
        )
        for answer in answers:
            assert answer.status == 200, answer.body
            await provision(nat, intake, answer.body)
        devices = [(a.body["device_id"], a.body["device_secret"]) for a in answers]
        untouched, reset, deleted = devices[:12], devices[12:20], devices[20:]
        await operator.call("POST", "/v1/devices/reset", {"device_ids": [d for d, _ in reset]}, expect=200)
        await operator.call("POST", "/v1/devices/delete", {"device_ids": [d for d, _ in deleted]}, expect=200)

        # A few boots first, so that neither figure pays the new instance's first calls.
        await asyncio.gather(*(boot(nat, intake, code, f"w{run}-{i}") for i in range(10)))
        without_p50, without_rate = await boot_storm(nat, intake, code, f"a{run}")

        # The guesser, from the same address, round after round of every kind of guess.
        guesses: Counter[tuple[str, int]] = Counter()
        unchallenged: list[str] = []
        stop = asyncio.Event()
        blocked = asyncio.Event()

        async def guess(kind: str, method: str, url: str, **kwargs: Any) -> None:
            async with nat.request(method, url, **kwargs) as r:
                guesses[kind, r.status] += 1
                realm = DEVICE_REALM if url.startswith(intake) else OPERATOR_REALM
                if not challenged(r.status, r.headers.get("WWW-Authenticate"), realm):
                    unchallenged.append(kind)
                if r.status == 429:
                    assert int(r.headers["Retry-After"]) >= 1
                    blocked.set()
                if kind == "revoked code":
                    assert (await r.json())["reason"] == REASON_REVOKED_CODE

        async def guesser() -> None:
            target_id = untouched[0][0]
            while not stop.is_set():
                wrong = {"Authorization": f"Bearer {uuid.uuid4().hex}"}
                await guess(
                    "unknown code",
                    "POST",
                    f"{intake}/v1/registrations",
                    json={"bulk_identification_code": str(uuid.uuid4()).upper(), "hardware_id": "g"},
                )
                await guess(
                    "device secret", "POST", f"{intake}/v1/devices/{target_id}/heartbeat", headers=wrong
                )
                await guess("api key", "GET", f"{admin}/v1/account", headers=wrong)
                await guess("bulk api key", "GET", f"{bulk}/v1/bulk-registrations", headers=wrong)
                await guess(
                    "bulk key",
                    "POST",
                    f"{intake}/v1/registrations",
                    json={
                        "bulk_identification_code": bulk_code,
                        "hardware_id": rows[1][1],
                        "registration_key": uuid.uuid4().hex,
                    },
                )
                await guess(
                    "revoked code",
                    "POST",
                    f"{intake}/v1/registrations",
                    json={"bulk_identification_code": revoked, "hardware_id": "g"},
                )

        guessing = asyncio.create_task(guesser())
        await asyncio.wait_for(blocked.wait(), timeout=30)  # the address is over its limit now

        async def neighbours() -> dict[str, Counter[Any]]:
            seen: dict[str, Counter[Any]] = {k: Counter() for k in ("heartbeat", "reset", "deleted", "none")}
            for _ in range(3):
                for device_id, secret in untouched:
                    status, _, _ = await heartbeat(nat, intake, device_id, secret)
                    seen["heartbeat"][status] += 1
                for device_id, secret in reset:  # the old image's secret, replaced by the reset
                    status, challenge, body = await heartbeat(nat, intake, device_id, secret)
                    seen["reset"][status, body["error"], challenge] += 1
                for device_id, secret in deleted:
                    status, challenge, body = await heartbeat(nat, intake, device_id, secret)
                    seen["deleted"][status, body["error"], challenge] += 1
                status, challenge, _ = await heartbeat(nat, intake, untouched[1][0], None)
                seen["none"][status, challenge] += 1
                await asyncio.sleep(0.5)
            return seen

        (with_p50, with_rate), seen = await asyncio.gather(
            boot_storm(nat, intake, code, f"b{run}"), neighbours()
        )
        # The right bulk key and valid API keys, from the guesser's address while it is over.
        claim = await register(
            nat, intake, bulk_code, rows[0][1], registration_key=rows[0][0], cpu_id="c", mac="m"
        )
        valid = {"Authorization": f"Bearer {operator.api_key}"}
        async with nat.get(f"{admin}/v1/account", headers=valid) as account:
            account_status = account.status
        async with nat.get(f"{bulk}/v1/bulk-registrations", headers=valid) as uploads:
            uploads_status = uploads.status
        stop.set()
        await guessing

    assert claim.status == 200 and claim.body["status"] == "ready", claim.body
    assert account_status == 200 and uploads_status == 200
    assert seen["heartbeat"] == {202: 3 * len(untouched)}  # never 429, never shown offline
    assert seen["reset"] == {(401, "credentials_replaced", f'{DEVICE_REALM}, error="invalid_token"'): 3 * 8}
    assert seen["deleted"] == {(401, "device_deleted", f'{DEVICE_REALM}, error="invalid_token"'): 3 * 4}
    assert seen["none"] == {(401, DEVICE_REALM): 3}  # no credential: no error code (RFC 6750 3.1)
    # The guesser slowed itself: every kind of guess met 429 (the revoked code is stale, not a
    # guess: 403 with its reason each time), and every 401 it got carried the challenge.
    kinds = {kind for kind, _ in guesses}
    for kind in kinds - {"revoked code"}:
        assert guesses[kind, 429] > 0, guesses
    assert {status for kind, status in guesses if kind == "revoked code"} == {403}, guesses
    assert unchallenged == []
    print(  # the figures of the report (pytest -s)
        f"\nNAT site, {BOOTS} two-call boots from one address: without a guesser p50 "
        f"{without_p50 * 1000:.0f} ms, {without_rate:.0f} boots/s; with a guesser over every limit "
        f"p50 {with_p50 * 1000:.0f} ms, {with_rate:.0f} boots/s; guesses {sum(guesses.values())} "
        f"({sum(n for (_, s), n in guesses.items() if s == 429)} answered 429)"
    )


async def test_stale_credentials_and_calls_without_one_are_not_counted(
    site: dict[str, ServiceProcess], operator: Operator
) -> None:
    """Far more than the source's allowance of old secrets (reset, deleted), rotated codes
    and calls with no credential at all: none counted, so the address's first real guess
    is still answered 401, not 429."""
    intake, admin, bulk = site["intake"].url, site["operator"].url, site["ingestion"].url
    registration = await operator.product()
    code = registration["bulk_identification_code"]
    async with behind(public_address()) as nat:
        answers = [
            await register(nat, intake, code, f"s-{uuid.uuid4().hex[:8]}", cpu_id="c") for _ in range(2)
        ]
        for answer in answers:
            await provision(nat, intake, answer.body)
        (reset_id, reset_secret), (gone_id, gone_secret) = (
            (a.body["device_id"], a.body["device_secret"]) for a in answers
        )
        await operator.call("POST", f"/v1/devices/{reset_id}/reset", expect=200)
        await operator.call("POST", "/v1/devices/delete", {"device_ids": [gone_id]}, expect=200)
        await operator.call("POST", f"/v1/auto-registrations/{registration['id']}/rotate-code", expect=200)
        seen: Counter[Any] = Counter()
        for _ in range(15):
            status, _, body = await heartbeat(nat, intake, reset_id, reset_secret)
            seen["reset", status, body["error"]] += 1
            status, _, body = await heartbeat(nat, intake, gone_id, gone_secret)
            seen["deleted", status, body["error"]] += 1
            status, challenge, _ = await heartbeat(nat, intake, reset_id, None)
            seen["device, none", status, challenge] += 1
            async with nat.get(f"{admin}/v1/account") as r:
                seen["operator, none", r.status, r.headers.get("WWW-Authenticate")] += 1
            async with nat.get(f"{bulk}/v1/bulk-registrations") as r:
                seen["bulk, none", r.status, r.headers.get("WWW-Authenticate")] += 1
            body = {"bulk_identification_code": code, "hardware_id": "old-image"}
            async with nat.post(f"{intake}/v1/registrations", json=body) as r:
                seen["rotated", r.status, (await r.json())["reason"]] += 1
        # The address's first wrong secret: a 401 with the challenge, not a 429.
        status, challenge, body = await heartbeat(nat, intake, reset_id, uuid.uuid4().hex)
    assert seen == {
        ("reset", 401, "credentials_replaced"): 15,
        ("deleted", 401, "device_deleted"): 15,
        ("device, none", 401, DEVICE_REALM): 15,
        ("operator, none", 401, OPERATOR_REALM): 15,
        ("bulk, none", 401, OPERATOR_REALM): 15,
        ("rotated", 403, REASON_REVOKED_CODE): 15,
    }
    assert (status, body["error"], challenge) == (
        401,
        "unauthorized",
        f'{DEVICE_REALM}, error="invalid_token"',
    )
