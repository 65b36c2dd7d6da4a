"""Throttling on the running services, with the default limits: floods from their own
loopback addresses (127.x.y.z) get 429 while the real device and a healthy storm pass,
on two intake instances; a call that proves something (the current code, a device
secret, an API key) is answered even from an address over its limit, and a call that
proves nothing is answered 429 before it reaches the pipeline.

The shared e2e system runs with high limits (other tests make many refusals from
127.0.0.1), so these tests start instances of their own with the defaults. Each run
draws fresh source addresses: the refusal counters live in Postgres and outlast a run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import secrets
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from shared.db.pool import Pool
from tests.support.api import Operator, provision, register
from tests.support.sources import fresh_address, from_address
from tests.support.system import ROOT, ServiceProcess, System, metric_sample

pytestmark = pytest.mark.e2e

DEFAULTS = {  # the shipped defaults (shared/throttle.py), whatever the shared system uses
    "FLEETREG_LIMIT_REFUSALS_PER_SOURCE": "30/minute;300/hour;1000/day",
    "FLEETREG_LIMIT_REFUSALS_PER_TARGET": "10/minute",
    "FLEETREG_LIMIT_REQUESTS_PER_KEY": "25/second;1000/minute",
}
FIRST_ALLOWANCE = 30
TARGET_ALLOWANCE = 10  # FLEETREG_LIMIT_REFUSALS_PER_TARGET's default: 10/minute


@pytest.fixture(scope="module")
async def own(system: System) -> AsyncIterator[dict[str, ServiceProcess]]:
    """Two intake instances and an operator and ingestion instance with the default limits."""
    async with contextlib.AsyncExitStack() as stack:
        yield {
            key: await stack.enter_async_context(system.instance(name, DEFAULTS))
            for key, name in (
                ("intake", "intake"),
                ("intake2", "intake"),
                ("operator", "operator"),
                ("ingestion", "ingestion"),
            )
        }


async def registration(session: aiohttp.ClientSession, url: str, code: str, hardware_id: str) -> Any:
    body = {"bulk_identification_code": code, "hardware_id": hardware_id}
    async with session.post(f"{url}/v1/registrations", json=body) as response:
        return response.status, response.headers.get("Retry-After"), await response.json()


async def test_a_flood_of_unknown_codes_is_throttled_while_the_real_device_passes(
    own: dict[str, ServiceProcess], operator: Operator, pool: Pool
) -> None:
    registration_ = await operator.product()
    code = registration_["bulk_identification_code"]
    abuser = fresh_address()
    async with from_address(abuser) as attacker:
        answers = [
            await registration(attacker, own["intake"].url, str(uuid.uuid4()).upper(), f"h{i}")
            for i in range(60)
        ]
        statuses = Counter(status for status, _, _ in answers)
        assert statuses == {403: FIRST_ALLOWANCE, 429: 60 - FIRST_ALLOWANCE}
        throttled = [a for a in answers if a[0] == 429]
        assert all(1 <= int(retry) <= 60 for _, retry, _ in throttled)
        assert throttled[0][2]["error"] == "too_many_requests"
        assert throttled[0][2]["rule"] == "refusals_per_source"
        # The second intake instance refuses the address at once too (a Postgres notification).
        unknown = str(uuid.uuid4()).upper()
        status, retry, _ = await registration(attacker, own["intake2"].url, unknown, "h-other")
        assert status == 429 and retry is not None
        # An unknown code from the address creates nothing: refused by the intake's code
        # cache, never published; the current code proves the call and is answered, on
        # both instances (a device behind the guesser's NAT address).
        decisions_before = await pool.fetchval("SELECT count(*) FROM registration_decisions")
        status, _, _ = await registration(attacker, own["intake"].url, unknown, "throttled-device")
        assert status == 429
        assert await pool.fetchval("SELECT count(*) FROM registration_decisions") == decisions_before
        for instance in ("intake", "intake2"):
            neighbour = await register(attacker, own[instance].url, code, f"nat-{instance}", cpu_id="n")
            assert neighbour.status == 200 and neighbour.body["status"] == "ready", neighbour.body
    async with from_address(fresh_address()) as device:
        answer = await register(device, own["intake"].url, code, "real-device", cpu_id="c1", mac="m1")
        assert answer.status == 200 and answer.body["status"] == "ready"
        await provision(device, own["intake2"].url, answer.body)


async def test_guessing_device_secrets_is_throttled_but_the_device_keeps_working(
    own: dict[str, ServiceProcess], operator: Operator
) -> None:
    registration_ = await operator.product()
    async with from_address(fresh_address()) as device:
        answer = await register(
            device, own["intake"].url, registration_["bulk_identification_code"], "sec-1", cpu_id="c", mac="m"
        )
        manifest_url = f"{own['intake'].url}/v1/devices/{answer.body['device_id']}/manifest"
    statuses = []
    async with from_address(fresh_address()) as guesser:
        for i in range(40):
            headers = {"Authorization": f"Bearer guess-{i}"}
            async with guesser.get(manifest_url, headers=headers) as response:
                statuses.append(response.status)
        # One device's secret guessed: its (address, device) pair is over at the 10th,
        # long before the address is; the device itself, behind the same address, is served.
        assert Counter(statuses) == {401: TARGET_ALLOWANCE, 429: 40 - TARGET_ALLOWANCE}
        headers = {"Authorization": f"Bearer {answer.body['device_secret']}"}
        async with guesser.get(manifest_url, headers=headers) as response:
            assert response.status == 200
        # A guess at another device from the address is still its 401 (the pair, not the address).
        other = f"{own['intake'].url}/v1/devices/{uuid.uuid4()}/manifest"
        async with guesser.get(other, headers={"Authorization": "Bearer guess"}) as response:
            assert response.status == 401
            assert (
                response.headers["WWW-Authenticate"]
                == 'Bearer realm="fleetreg devices", error="invalid_token"'
            )
    async with from_address(fresh_address()) as device, device.get(manifest_url, headers=headers) as response:
        assert response.status == 200


async def test_random_api_keys_are_throttled_per_address_and_a_busy_key_per_key(
    own: dict[str, ServiceProcess], operator: Operator
) -> None:
    statuses = []
    async with from_address(fresh_address()) as guesser:
        for _ in range(40):
            headers = {"Authorization": f"Bearer {uuid.uuid4().hex}"}
            async with guesser.get(f"{own['operator'].url}/v1/account", headers=headers) as response:
                statuses.append(response.status)
            async with guesser.get(f"{own['ingestion'].url}/v1/bulk-registrations", headers=headers) as r:
                statuses.append(r.status)
        # A valid key from the same address: answered by both APIs (the operator's own key
        # is left to the rate test below).
        other = await operator.call("POST", "/v1/api-keys", {"label": "dashboard"}, expect=201)
        valid = {"Authorization": f"Bearer {other['api_key']}"}
        async with guesser.get(f"{own['operator'].url}/v1/account", headers=valid) as response:
            assert response.status == 200
        async with guesser.get(f"{own['ingestion'].url}/v1/bulk-registrations", headers=valid) as response:
            assert response.status == 200
    assert statuses[:FIRST_ALLOWANCE] == [401] * FIRST_ALLOWANCE
    assert set(statuses[FIRST_ALLOWANCE + 1 :]) == {429}

    # One key, many calls at once: past its rate, 429 with Retry-After; the operator's
    # other key (another dashboard, say) is not held back.
    headers = {"Authorization": f"Bearer {operator.api_key}"}
    async with from_address(fresh_address()) as busy:

        async def call() -> tuple[int, str | None]:
            async with busy.get(f"{own['operator'].url}/v1/account", headers=headers) as response:
                return response.status, response.headers.get("Retry-After")

        results = await asyncio.gather(*(call() for _ in range(300)))
    by_status = Counter(status for status, _ in results)
    assert by_status[200] >= 25 and by_status[429] > 0 and set(by_status) == {200, 429}
    assert all(retry is not None and int(retry) >= 1 for status, retry in results if status == 429)
    async with (
        from_address(fresh_address()) as dashboard,
        dashboard.get(
            f"{own['operator'].url}/v1/account", headers={"Authorization": f"Bearer {other['api_key']}"}
        ) as response,
    ):
        assert response.status == 200


async def test_forwarded_for_from_an_untrusted_peer_does_not_dodge_the_limit(
    own: dict[str, ServiceProcess],
) -> None:
    statuses = []
    async with from_address(fresh_address()) as attacker:
        for i in range(FIRST_ALLOWANCE + 5):
            body = {"bulk_identification_code": str(uuid.uuid4()).upper(), "hardware_id": f"x{i}"}
            headers = {"X-Forwarded-For": fresh_address()}  # a new "client" each time
            async with attacker.post(
                f"{own['intake'].url}/v1/registrations", json=body, headers=headers
            ) as r:
                statuses.append(r.status)
    assert statuses[-1] == 429


async def test_a_storm_of_2000_devices_from_one_address_passes_the_defaults(
    own: dict[str, ServiceProcess], operator: Operator, system: System
) -> None:
    registration_ = await operator.product()
    env = {
        "FLEETREG_DEVICE_URL": own["intake"].url,
        "FLEETREG_ADMIN_URL": own["operator"].url,
        "FLEETREG_ADMIN_TOKEN": operator.api_key,
        "FLEETREG_ENDPOINTS_FILE": str(ROOT / "var" / "does-not-exist.env"),
    }
    result = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "cli.main",
            "simulate",
            "--devices",
            "2000",
            "--clone-rate",
            "0.05",
            "--concurrency",
            "100",
            "--code",
            registration_["bulk_identification_code"],
            "--json",
        ],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout)
    assert summary["devices"] == 2000
    assert summary["errors"] == 0
    assert summary["provisioned"] == 2000


async def test_made_up_console_session_cookies_are_throttled_and_a_lapsed_one_deleted(
    own: dict[str, ServiceProcess],
) -> None:
    """A console cookie that names no session costs a registry read: each counts against
    the address as a wrong key does (a stranger's flood of them used to be served without
    limit), and the answer deletes it, so a browser whose session lapsed counts once."""
    page = f"{own['operator'].url}/console/devices"
    answers = []
    async with from_address(fresh_address()) as stranger:
        for _ in range(FIRST_ALLOWANCE + 5):
            cookie = {"Cookie": f"fleetreg_console={uuid.uuid4().hex}{uuid.uuid4().hex[:11]}"}
            async with stranger.get(page, headers=cookie, allow_redirects=False) as response:
                deleted = response.cookies.get("fleetreg_console")
                answers.append((response.status, deleted.value if deleted is not None else None))
    assert answers[:FIRST_ALLOWANCE] == [(303, "")] * FIRST_ALLOWANCE  # to sign-in, cookie deleted
    assert {status for status, _ in answers[FIRST_ALLOWANCE + 1 :]} == {429}


async def test_guessing_keys_at_the_console_sign_in_is_throttled_like_the_api(
    own: dict[str, ServiceProcess], operator: Operator
) -> None:
    """The console's sign-in form is another door to the same keys: a wrong key there counts
    against the address as a wrong key on the API does, and past the limit the address's
    wrong keys get 429 there too, with Retry-After; the right key signs in whatever the
    address's count."""
    statuses = []
    console = f"{own['operator'].url}/console/sign-in"
    async with from_address(fresh_address()) as guesser:
        async with guesser.get(console) as page:
            assert page.status == 200
            token = page.cookies["fleetreg_console_sign_in"].value
        # (aiohttp's cookie jar keeps no cookie of an IP address: the form's cookie is sent by hand)
        cookie = {"Cookie": f"fleetreg_console_sign_in={token}"}
        for _ in range(FIRST_ALLOWANCE + 5):
            form = {"csrf_token": token, "api_key": f"frk_{uuid.uuid4().hex}"}
            async with guesser.post(console, data=form, headers=cookie, allow_redirects=False) as response:
                statuses.append((response.status, response.headers.get("Retry-After")))
                if response.status == 401:
                    # The console's challenge names its sign-in form (RFC 9110: every 401 has one).
                    challenge = response.headers["WWW-Authenticate"]
                    assert challenge.startswith('Cookie realm="fleetreg console"'), challenge
        # The right key proves itself: signed in (to the console), whatever the address did.
        form = {"csrf_token": token, "api_key": operator.api_key}
        async with guesser.post(console, data=form, headers=cookie, allow_redirects=False) as signed_in:
            assert signed_in.status == 303 and "sign-in" not in signed_in.headers["Location"]
        form = {"csrf_token": token, "api_key": f"frk_{uuid.uuid4().hex}"}
        async with guesser.post(console, data=form, headers=cookie, allow_redirects=False) as held:
            assert held.status == 429
            # a page for the browser, with the console's headers, not the API's JSON
            assert held.content_type == "text/html" and "Retry-After" in held.headers
            assert "frame-ancestors 'none'" in held.headers["Content-Security-Policy"]
    assert [s for s, _ in statuses[:FIRST_ALLOWANCE]] == [401] * FIRST_ALLOWANCE
    assert {s for s, _ in statuses[FIRST_ALLOWANCE + 1 :]} == {429}
    assert all(retry is not None for s, retry in statuses if s == 429)


# Made-up keys per API: each left about 800 bytes in the per-key limiter (6,000 grew the
# operator and ingestion by 4.5 MB each) until keys were counted only once known (since:
# 0.2 MB at most).
RANDOM_KEYS = 6_000
MEMORY_BOUND_MB = 2.5


def _made_up_key() -> str:
    return f"Authorization: Bearer frk_{uuid.uuid4().hex}{uuid.uuid4().hex[:8]}"


async def _flood(
    url: str, count: int, header: Callable[[], str], addresses: int = 4, connections: int = 8
) -> Counter[int]:
    """``count`` GETs of ``url``, each with a new ``header()`` line, from ``addresses`` fresh
    addresses at once: pipelined on plain keep-alive connections (an HTTP client library
    spends more time per call than the services do). The answers' statuses, counted."""
    parts = urlsplit(url)
    statuses: Counter[int] = Counter()

    async def connection(address: str, calls: int) -> None:
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port, local_addr=(address, 0))
        try:
            for start in range(0, calls, 50):
                batch = min(50, calls - start)
                writer.write(
                    b"".join(
                        f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n{header()}\r\n\r\n".encode()
                        for _ in range(batch)
                    )
                )
                for _ in range(batch):
                    head = await reader.readuntil(b"\r\n\r\n")
                    statuses[int(head.split(b" ", 2)[1])] += 1
                    length = next(
                        int(line.split(b":", 1)[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    )
                    await reader.readexactly(length)
        finally:
            writer.close()

    sources = [fresh_address() for _ in range(addresses)] * connections
    shares = [count // len(sources) + (n < count % len(sources)) for n in range(len(sources))]
    await asyncio.gather(*(connection(source, share) for source, share in zip(sources, shares, strict=True)))
    return statuses


async def test_random_api_keys_leave_no_memory_behind(
    own: dict[str, ServiceProcess], operator: Operator
) -> None:
    """Made-up keys from a few addresses, fast, on the operator and bulk APIs: answered
    401 then 429, and the services' memory stays where it was (every token used to leave
    moving windows in the per-key limiter: the operator grew from 68 to 628 MB in five
    minutes). The per-key rate counts keys that authenticated only."""
    apis = {"operator": "/v1/account", "ingestion": "/v1/bulk-registrations"}
    # A first round settles the allocators (connection buffers, caches filled once).
    await asyncio.gather(*(_flood(own[name].url + path, 1_000, _made_up_key) for name, path in apis.items()))
    before = {name: own[name].rss_bytes() for name in apis}
    answered = await asyncio.gather(
        *(_flood(own[name].url + path, RANDOM_KEYS, _made_up_key) for name, path in apis.items())
    )
    grown = {name: (own[name].rss_bytes() - before[name]) / 2**20 for name in apis}
    for statuses in answered:
        assert set(statuses) == {401, 429} and sum(statuses.values()) == RANDOM_KEYS
    assert all(mb < MEMORY_BOUND_MB for mb in grown.values()), grown
    # A real key is still answered, and still counted against its rate.
    headers = {"Authorization": f"Bearer {operator.api_key}"}
    async with (
        from_address(fresh_address()) as dashboard,
        dashboard.get(f"{own['operator'].url}/v1/account", headers=headers) as response,
    ):
        assert response.status == 200


MADE_UP_COOKIES = 2_000


def _made_up_cookie() -> str:
    """A console cookie never issued: the shape of a session from before sessions carried
    a tag (43 characters), or today's shape with a made-up tag."""
    body = secrets.token_urlsafe(32)
    return f"Cookie: fleetreg_console={body if random.random() < 0.5 else body + '.' + secrets.token_urlsafe(12)}"


async def test_made_up_console_cookies_cost_no_registry_read(
    own: dict[str, ServiceProcess], operator: Operator
) -> None:
    """A console cookie carries a keyed tag: one this deployment never issued is refused
    (counted against its address, then 429) without reading console_sessions. Made-up
    cookies were a registry read each, 1,410 a second from one address, 429 or not."""
    console = own["operator"]
    async with aiohttp.ClientSession() as http:
        before = await metric_sample(http, console.ops_url, READS)
        statuses = await _flood(
            f"{console.url}/console/devices", MADE_UP_COOKIES, _made_up_cookie, addresses=2
        )
        assert set(statuses) == {303, 429} and statuses[303] >= 2 * FIRST_ALLOWANCE, statuses
        assert await metric_sample(http, console.ops_url, READS) == before
        # A real session is read, and answered, from one of those addresses' neighbours.
        async with from_address(fresh_address()) as browser:
            cookie = await _console_session(browser, console.url, operator.api_key)
            async with browser.get(f"{console.url}/console/devices", headers=cookie) as page:
                assert page.status == 200
        assert await metric_sample(http, console.ops_url, READS) == before + 1


READS = "fleetreg_console_session_reads_total"


async def _console_session(browser: aiohttp.ClientSession, url: str, api_key: str) -> dict[str, str]:
    """Signed in with ``api_key``: the Cookie header of the session (aiohttp's cookie jar
    keeps no cookie of an IP address: cookies are sent by hand)."""
    async with browser.get(f"{url}/console/sign-in") as page:
        token = page.cookies["fleetreg_console_sign_in"].value
    async with browser.post(
        f"{url}/console/sign-in",
        data={"csrf_token": token, "api_key": api_key},
        headers={"Cookie": f"fleetreg_console_sign_in={token}"},
        allow_redirects=False,
    ) as response:
        assert response.status == 303, await response.text()
        return {"Cookie": f"fleetreg_console={response.cookies['fleetreg_console'].value}"}


async def test_guessing_a_persons_password_is_throttled_before_argon2_runs(
    own: dict[str, ServiceProcess], operator: Operator, pool: Pool
) -> None:
    """Wrong passwords for one person's address count on the (address, person) pair; past
    TARGET_ALLOWANCE they are answered 429, and so is the right password: a blocked caller
    is refused before the password is hashed (argon2 costs 64 MiB and up to a second each)."""
    from shared.domain.passwords import hash_password

    email = f"guessed-{uuid.uuid4().hex[:8]}@example.com"
    password = "the right passphrase for this person 99"
    await pool.execute(
        "INSERT INTO users (id, account_id, email, role, password_hash) VALUES ($1, $2, $3, 'admin', $4)",
        uuid.uuid4(),
        uuid.UUID(operator.account_id),
        email,
        hash_password(password),
    )
    base = f"{own['operator'].url}/console/sign-in"
    statuses = []
    async with from_address(fresh_address()) as guesser:
        async with guesser.get(base) as page:
            token = page.cookies["fleetreg_console_sign_in"].value
        cookie = f"fleetreg_console_sign_in={token}"
        form = {"csrf_token": token, "email": email}
        async with guesser.post(
            f"{base}/email", data=form, headers={"Cookie": cookie}, allow_redirects=False
        ) as step:
            assert step.status == 303
            cookie += f"; fleetreg_console_pending={step.cookies['fleetreg_console_pending'].value}"
        for attempt in [*(f"wrong guess number {n}" for n in range(TARGET_ALLOWANCE + 2)), password]:
            form = {"csrf_token": token, "password": attempt}
            async with guesser.post(
                f"{base}/password", data=form, headers={"Cookie": cookie}, allow_redirects=False
            ) as answer:
                statuses.append(answer.status)
    assert statuses[:TARGET_ALLOWANCE] == [401] * TARGET_ALLOWANCE
    assert set(statuses[TARGET_ALLOWANCE + 1 :]) == {429}, statuses
