"""Guessing from an address over its refusal limit (issue 22, the outside attacker's round 1):
the throttle bounds guesses and writes, not only the spelling of the answers.

* A weak bulk registration key (a 4-digit PIN) guessed from a blocked address: every wrong
  key is 429 without a pipeline trip or a decision row, the guessed hardware ID's pair is
  refused before evaluation once over its limit (the right key too, for that window), while
  another listed device's right key and a device secret from the same address still prove
  themselves, and the real board from elsewhere is answered.
* A revoked code flooded with new hardware IDs: always the same 403, never counted against
  the address, and at most the pair's allowance of decision rows.
* The reference protocol's step 1 with a revoked code: its reason, not counted.
* The console's sign-in: the right key signs in even with a lapsed session cookie from a
  blocked address (one session row), and an empty key is "no credential" (400, not counted).

Sources are client addresses as a trusted load balancer (127.0.0.1) reports them in
``X-Forwarded-For``; the instances run with small allowances to keep the test fast. Each
run draws fresh addresses: the refusal counters live in Postgres and outlast a run.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from shared.db.pool import Pool
from shared.domain.admission import REASON_REVOKED_CODE
from tests.support.api import Operator, register
from tests.support.bulk import bulk_product, csv_text, publish_and_wait, upload
from tests.support.reference_client import ReferenceClient, ReferenceDevice, read_answer
from tests.support.sources import behind, public_address
from tests.support.system import ServiceProcess, System

pytestmark = pytest.mark.e2e

SOURCE_ALLOWANCE = 5
TARGET_ALLOWANCE = 10
LIMITS = {
    # An hour, so that a blocked source waits longer than a (source, target) pair's minute:
    # a call refused by its pair is told the pair's wait (attack 3, G5).
    "FLEETREG_LIMIT_REFUSALS_PER_SOURCE": f"{SOURCE_ALLOWANCE}/hour",
    "FLEETREG_LIMIT_REFUSALS_PER_TARGET": f"{TARGET_ALLOWANCE}/minute",
    "FLEETREG_LIMIT_REQUESTS_PER_KEY": "10000/second",
    "FLEETREG_TRUSTED_PROXIES": "127.0.0.1/32",
}


@pytest.fixture(scope="module")
async def own(system: System) -> AsyncIterator[dict[str, ServiceProcess]]:
    async with contextlib.AsyncExitStack() as stack:
        yield {
            name: await stack.enter_async_context(system.instance(name, LIMITS))
            for name in ("intake", "operator")
        }


async def claim(client: aiohttp.ClientSession, url: str, code: str, hardware_id: str, key: str) -> Any:
    body = {"bulk_identification_code": code, "hardware_id": hardware_id, "registration_key": key}
    async with client.post(f"{url}/v1/registrations", json=body) as response:
        return response.status, await response.json()


async def block(client: aiohttp.ClientSession, url: str) -> None:
    """Spend the address's allowance with unknown codes: its next failing call is 429."""
    for i in range(SOURCE_ALLOWANCE + 1):
        status, _ = await claim(client, url, str(uuid.uuid4()).upper(), f"u{i}", "")
        assert status == (403 if i < SOURCE_ALLOWANCE else 429)


async def decisions(pool: Pool, product_id: str) -> int:
    return int(
        await pool.fetchval("SELECT count(*) FROM registration_decisions WHERE product_id = $1", product_id)
    )


async def pin_product(
    operator: Operator, system: System, session: aiohttp.ClientSession
) -> tuple[str, str, list[tuple[str, str, str]]]:
    """A published bulk product whose two rows' keys are 4-digit PINs (accepted with a
    "guessable" warning): its ID, its code and its rows (key, hardware ID, name)."""
    run = uuid.uuid4().hex[:6]
    pins = random.sample(range(100, 10_000), 2)
    rows = [(f"{pin:04d}", f"pin{run}{i}", f"Device {i}") for i, pin in enumerate(pins)]
    product_id = await bulk_product(operator)
    status, listed = await upload(session, system.bulk_url, operator, product_id, csv_text(rows).encode())
    assert status == 201, listed
    await publish_and_wait(session, system.bulk_url, operator, listed["id"])
    code = (await operator.call("GET", f"/v1/products/{product_id}", expect=200))["bulk_identification_code"]
    return product_id, code, rows


async def test_a_weak_bulk_key_cannot_be_brute_forced_from_a_blocked_address(
    own: dict[str, ServiceProcess],
    operator: Operator,
    system: System,
    session: aiohttp.ClientSession,
    pool: Pool,
) -> None:
    intake = own["intake"].url
    run = uuid.uuid4().hex[:6]
    product_id, code, rows = await pin_product(operator, system, session)
    (pin0, board0, _), (pin1, board1, _) = rows

    async with behind(public_address()) as guesser:
        await block(guesser, intake)
        before = await decisions(pool, product_id)
        # The brute force of board 0's PIN: every wrong key 429, none published, no row.
        wrong = [f"{n:04d}" for n in range(40) if f"{n:04d}" != pin0]
        answers = [await claim(guesser, intake, code, board0, key) for key in wrong]
        assert Counter(status for status, _ in answers) == {429: len(wrong)}
        assert {body["error"] for _, body in answers} == {"too_many_requests"}
        # An unlisted hardware ID: the same answer (no oracle), no row either.
        assert (await claim(guesser, intake, code, f"nope{run}", pin1))[0] == 429
        assert await decisions(pool, product_id) == before
        # The pair (address, code and board 0) is over its limit: refused before evaluation,
        # the right key too, for the window that produced it, and told that window's wait,
        # not the source's hour (a site's real board behind the guesser's NAT, G5).
        status, body = await claim(guesser, intake, code, board0, pin0)
        assert (status, body["rule"]) == (429, "refusals_per_target")
        assert 0 < int(body["retry_after"]) <= 60, body
        status, body = await claim(guesser, intake, str(uuid.uuid4()).upper(), "h", "")
        assert (status, body["rule"]) == (429, "refusals_per_source")
        assert int(body["retry_after"]) > 60, body
        # Another board's right key from the same blocked address proves itself, and so does
        # its device secret afterwards (a reboot): both decided as usual.
        first = await register(guesser, intake, code, board1, registration_key=pin1, cpu_id="c", mac="m")
        assert first.status == 200 and first.body["decision"] == "new", first.body
        again = await register(
            guesser, intake, code, board1, secret=first.body["device_secret"], cpu_id="c", mac="m"
        )
        assert again.status == 200 and again.body["device_id"] == first.body["device_id"], again.body
        assert await decisions(pool, product_id) == before + 2
    # Board 0 itself, from its own site: answered at once (only the guesser's pair is held).
    async with behind(public_address()) as board:
        real = await register(board, intake, code, board0, registration_key=pin0, cpu_id="r", mac="r")
        assert real.status == 200 and real.body["decision"] == "new", real.body


async def test_a_concurrent_burst_of_wrong_keys_gets_at_most_the_minute_allowance_evaluated(
    own: dict[str, ServiceProcess],
    operator: Operator,
    system: System,
    session: aiohttp.ClientSession,
    pool: Pool,
) -> None:
    """Attack 3, G1: the attempts on a listed hardware ID are counted before evaluation,
    atomically, so a burst that arrives before any answer gets no more through."""
    intake = own["intake"].url
    product_id, code, ((pin0, board0, _), _) = await pin_product(operator, system, session)
    burst = 300
    wrong = random.sample([f"{n:04d}" for n in range(10_000) if f"{n:04d}" != pin0], burst)
    async with behind(public_address()) as guesser:
        answers = await asyncio.gather(*(claim(guesser, intake, code, board0, key) for key in wrong))
        statuses = Counter(status for status, _ in answers)
        assert set(statuses) <= {403, 429} and statuses[403] <= TARGET_ALLOWANCE, statuses
        assert await decisions(pool, product_id) <= TARGET_ALLOWANCE
        # The right key, past the allowance: refused before evaluation, with the pair's wait.
        status, body = await claim(guesser, intake, code, board0, pin0)
        assert (status, body["rule"]) == (429, "refusals_per_target"), body
        assert 0 < int(body["retry_after"]) <= 60, body
    assert await decisions(pool, product_id) <= TARGET_ALLOWANCE


async def test_unlisted_hardware_ids_from_a_blocked_address_make_no_counters(
    own: dict[str, ServiceProcess],
    operator: Operator,
    system: System,
    session: aiohttp.ClientSession,
    pool: Pool,
) -> None:
    """Attack 3, G4: a hardware ID not listed has no key to guess: claims of new ones from a
    blocked address are the wrong key's 429 and leave no (source, target) counter behind."""
    intake = own["intake"].url
    product_id, code, _ = await pin_product(operator, system, session)
    address = public_address()
    counters = "SELECT count(*) FROM throttle_counters WHERE key LIKE '%' || $1 || '|%'"
    async with behind(address) as guesser:
        await block(guesser, intake)
        before = await pool.fetchval(counters, address)
        answers = await asyncio.gather(
            *(claim(guesser, intake, code, f"nope{uuid.uuid4().hex[:10]}", "1234") for _ in range(100))
        )
        assert Counter(status for status, _ in answers) == {429: 100}
        assert {body["rule"] for _, body in answers} == {"refusals_per_source"}
        assert await pool.fetchval(counters, address) == before  # block()'s unknown codes only
    assert await decisions(pool, product_id) == 0


async def test_a_revoked_code_flooded_with_new_hardware_ids_writes_at_most_the_pair_allowance(
    own: dict[str, ServiceProcess], operator: Operator, pool: Pool
) -> None:
    intake = own["intake"].url
    registration = await operator.product()
    await operator.call("POST", f"/v1/auto-registrations/{registration['id']}/rotate-code", expect=200)
    old = registration["bulk_identification_code"]
    flood = 300
    async with behind(public_address()) as holder:

        async def one() -> tuple[int, str]:
            status, body = await claim(holder, intake, old, uuid.uuid4().hex[:12], "")
            return status, body.get("reason", "")

        # All at once (the connector's 100 connections): counted before publishing (attack 3, G3).
        answers = Counter(await asyncio.gather(*(one() for _ in range(flood))))
        # Every answer is the revoked 403 (what a board on the old image must read), never 429...
        assert answers == {(403, REASON_REVOKED_CODE): flood}, answers
        # ...nothing counted against the address (its unknown code is still a plain 403)...
        status, _ = await claim(holder, intake, str(uuid.uuid4()).upper(), "h", "")
        assert status == 403
    # ...and the writes are bounded: the pair's allowance, however many arrived together.
    rows = await decisions(pool, registration["product_id"])
    assert rows == TARGET_ALLOWANCE, rows


async def test_reference_step_1_with_a_revoked_code_says_so_and_is_not_counted(
    own: dict[str, ServiceProcess], operator: Operator, system: System
) -> None:
    compat_port = own["intake"].env["FLEETREG_COMPAT_PORT"]
    compat_url = system.compat_url.replace(f":{system.env['FLEETREG_COMPAT_PORT']}/", f":{compat_port}/")
    registration = await operator.product()
    code = registration["bulk_identification_code"]
    async with behind(public_address()) as site:
        client = ReferenceClient(site, compat_url, system.tls_ca)
        boards = [ReferenceDevice(code, f"ref-{uuid.uuid4().hex[:8]}") for _ in range(3)]
        for board in boards:
            assert await client.boot(board) == "provisioned", client.calls[-3:]
        await operator.call("POST", f"/v1/auto-registrations/{registration['id']}/rotate-code", expect=200)
        client.calls.clear()
        # The boards on the old image boot again and again: 3 x 8 boots, 48 refused steps.
        outcomes = Counter([await client.boot(board) for _ in range(8) for board in boards])
        assert outcomes == {f"failed: {REASON_REVOKED_CODE}": 24}, outcomes
        step_1 = Counter(
            read_answer(text).get("reason")
            for _, path, _, text in client.calls
            if path.endswith("/information/")
        )
        assert step_1 == {REASON_REVOKED_CODE: 24}, step_1
        # Not counted: an unknown code from the site is still its plain 403.
        status, _ = await claim(site, own["intake"].url, str(uuid.uuid4()).upper(), "h", "")
        assert status == 403


async def test_the_right_key_signs_in_with_a_lapsed_cookie_and_an_empty_key_is_not_counted(
    own: dict[str, ServiceProcess], operator: Operator, pool: Pool
) -> None:
    console = f"{own['operator'].url}/console/sign-in"
    async with behind(public_address()) as browser:
        async with browser.get(console) as page:
            token = page.cookies["fleetreg_console_sign_in"].value
        cookie = f"fleetreg_console_sign_in={token}"

        async def sign_in(key: str, extra_cookie: str = "") -> aiohttp.ClientResponse:
            headers = {"Cookie": f"{cookie}; {extra_cookie}" if extra_cookie else cookie}
            form = {"csrf_token": token, "api_key": key}
            async with browser.post(console, data=form, headers=headers, allow_redirects=False) as response:
                await response.read()
                return response

        statuses = [(await sign_in(f"frk_{uuid.uuid4().hex}")).status for _ in range(SOURCE_ALLOWANCE + 1)]
        assert statuses == [401] * SOURCE_ALLOWANCE + [429]
        sessions = "SELECT count(*) FROM console_sessions WHERE account_id = $1"
        before = await pool.fetchval(sessions, operator.account_id)
        lapsed = f"fleetreg_console={secrets.token_urlsafe(32)}"
        signed_in = await sign_in(operator.api_key, lapsed)
        assert signed_in.status == 303 and "sign-in" not in signed_in.headers["Location"]
        assert signed_in.cookies["fleetreg_console"].value  # the new session's cookie
        assert await pool.fetchval(sessions, operator.account_id) == before + 1
        # No credential at all: 400 whatever the address did.
        assert (await sign_in("")).status == 400
    async with behind(public_address()) as browser:
        async with browser.get(console) as page:
            token = page.cookies["fleetreg_console_sign_in"].value
        cookie = f"fleetreg_console_sign_in={token}"
        statuses = [(await sign_in("  ")).status for _ in range(SOURCE_ALLOWANCE + 3)]
        assert statuses == [400] * (SOURCE_ALLOWANCE + 3)  # never counted
        assert (await sign_in(f"frk_{uuid.uuid4().hex}")).status == 401


async def test_a_weak_bulk_key_cannot_be_brute_forced_at_reference_step_5_either(
    own: dict[str, ServiceProcess],
    operator: Operator,
    system: System,
    session: aiohttp.ClientSession,
    pool: Pool,
) -> None:
    compat_port = own["intake"].env["FLEETREG_COMPAT_PORT"]
    compat_url = system.compat_url.replace(f":{system.env['FLEETREG_COMPAT_PORT']}/", f":{compat_port}/")
    product_id, code, ((pin0, board0, _), (pin1, board1, _)) = await pin_product(operator, system, session)
    async with behind(public_address()) as guesser:
        await block(guesser, own["intake"].url)
        client = ReferenceClient(guesser, compat_url, system.tls_ca)
        before = await decisions(pool, product_id)
        for n in range(30):
            key = f"{n:04d}" if f"{n:04d}" != pin0 else "x"
            await client._call(  # the register step alone, as a guesser sends it
                "POST",
                "/bulk/registration/register",
                {"project_id": code, "hardware_id": board0, "registration_key": key},
            )
        answers = Counter(read_answer(text).get("status") for _, _, _, text in client.calls)
        assert answers == {"pending": 30}, client.calls[-1]
        assert "too many refused calls" in client.calls[-1][3]
        assert await decisions(pool, product_id) == before  # nothing published, no row
        # Another board of the site, with its right key, from the same address: provisioned.
        board = ReferenceDevice(code, board1, registration_key=pin1)
        assert await client.boot(board) == "provisioned", client.calls[-3:]


async def test_a_concurrent_burst_at_reference_step_5_gets_at_most_the_allowance_evaluated(
    own: dict[str, ServiceProcess],
    operator: Operator,
    system: System,
    session: aiohttp.ClientSession,
    pool: Pool,
) -> None:
    """Attack 3, G1 at the reference protocol's register step: the same attempt count."""
    compat_port = own["intake"].env["FLEETREG_COMPAT_PORT"]
    compat_url = system.compat_url.replace(f":{system.env['FLEETREG_COMPAT_PORT']}/", f":{compat_port}/")
    product_id, code, ((pin0, board0, _), _) = await pin_product(operator, system, session)
    wrong = random.sample([f"{n:04d}" for n in range(10_000) if f"{n:04d}" != pin0], 200)
    async with behind(public_address()) as guesser:
        client = ReferenceClient(guesser, compat_url, system.tls_ca)
        body = {"project_id": code, "hardware_id": board0}
        await asyncio.gather(
            *(
                client._call("POST", "/bulk/registration/register", {**body, "registration_key": key})
                for key in wrong
            )
        )
        answers = Counter(read_answer(text).get("status") for _, _, _, text in client.calls)
        assert answers["pending"] >= len(wrong) - TARGET_ALLOWANCE, answers
        assert await decisions(pool, product_id) <= TARGET_ALLOWANCE
