"""Operational endpoints off the public listeners, on the running system (issue 21, item 3).

* ``/healthz``, ``/readyz`` and ``/metrics`` answer on each service's operations port and
  404 on its public port(s), the intake's https port included;
* a ``/readyz`` flood costs about one database query a second (the readiness probe's own
  counter, ``fleetreg_readiness_probes_total``);
* a console session past its key's request rate gets the console's 429 page, Retry-After,
  and so does a sign-in with that key (no session row written);
* many live-view refreshes from several sessions at once cost about one pipeline-health
  computation a second (``fleetreg_pipeline_health_checks_total``).
"""

from __future__ import annotations

import asyncio
import math
import ssl
import time
from collections import Counter
from collections.abc import AsyncIterator

import aiohttp
import pytest

from shared.db.pool import Pool
from tests.support.api import Operator, new_operator
from tests.support.system import ServiceProcess, System, metric_sample

OPS_PATHS = ("/healthz", "/readyz", "/metrics")
CONSOLE_COOKIE = "fleetreg_console"
SIGN_IN_COOKIE = "fleetreg_console_sign_in"
# The limited operator instance's rate per key: a minute's window, so nothing refills
# while the test runs, however slow the machine.
KEY_LIMIT = 10


async def test_ops_endpoints_answer_on_the_ops_port_and_nowhere_public(
    system: System, session: aiohttp.ClientSession
) -> None:
    for process in system.services.values():
        for path in OPS_PATHS:
            async with session.get(process.ops_url + path) as response:
                assert response.status == 200, (process.instance, path)
                if path == "/metrics":
                    assert "fleetreg_http_requests_total" in await response.text()
            async with session.get(process.url + path) as response:
                assert response.status == 404, f"{process.instance} still answers {path} on its public port"
    # The intake's https listener (the reference-compatible device API) is public too.
    tls = ssl.create_default_context(cafile=str(system.tls_ca))
    https = f"https://127.0.0.1:{system.env['FLEETREG_COMPAT_PORT']}"
    for path in OPS_PATHS:
        async with session.get(https + path, ssl=tls) as response:
            assert response.status == 404, f"the intake's https port still answers {path}"


async def test_a_readyz_flood_costs_about_one_database_query_a_second(
    system: System, session: aiohttp.ClientSession
) -> None:
    intake = system.services["intake"]
    name = "fleetreg_readiness_probes_total"
    before = await metric_sample(session, intake.ops_url, name, service="intake")
    statuses: Counter[int] = Counter()
    gate = asyncio.Semaphore(100)

    async def probe() -> None:
        async with gate, session.get(f"{intake.ops_url}/readyz") as response:
            statuses[response.status] += 1

    started = time.monotonic()
    await asyncio.gather(*(probe() for _ in range(2000)))
    elapsed = time.monotonic() - started
    queries = await metric_sample(session, intake.ops_url, name, service="intake") - before
    assert statuses == {200: 2000}
    # At most one query per started second of the flood, plus one under way at its start.
    assert queries <= math.ceil(elapsed) + 1, f"{queries} queries for 2,000 /readyz in {elapsed:.1f} s"
    # The counter counts, and the kept answer does expire: a second later, one more query.
    await asyncio.sleep(1.2)
    async with session.get(f"{intake.ops_url}/readyz") as response:
        assert response.status == 200
    assert await metric_sample(session, intake.ops_url, name, service="intake") - before == queries + 1


# ------------------------------------------------------------------------- console ----
async def sign_in(http: aiohttp.ClientSession, operator_url: str, api_key: str) -> dict[str, str]:
    """A console session of ``api_key``: the Cookie header that carries it. (aiohttp's cookie
    jar keeps no cookie of an IP address: the cookies are sent by hand.)"""
    async with http.get(f"{operator_url}/console/sign-in") as page:
        assert page.status == 200
        token = page.cookies[SIGN_IN_COOKIE].value
    async with http.post(
        f"{operator_url}/console/sign-in",
        data={"csrf_token": token, "api_key": api_key},
        headers={"Cookie": f"{SIGN_IN_COOKIE}={token}"},
        allow_redirects=False,
    ) as response:
        assert response.status == 303, await response.text()
        return {"Cookie": f"{CONSOLE_COOKIE}={response.cookies[CONSOLE_COOKIE].value}"}


async def chart(
    http: aiohttp.ClientSession, operator_url: str, cookie: dict[str, str]
) -> aiohttp.ClientResponse:
    headers = {**cookie, "HX-Request": "true"}
    async with http.get(
        f"{operator_url}/console/live/chart", headers=headers, allow_redirects=False
    ) as response:
        await response.read()
        return response


@pytest.fixture(scope="module")
async def limited(system: System) -> AsyncIterator[ServiceProcess]:
    """An operator instance whose keys may make KEY_LIMIT requests a minute."""
    instance = await system.add_instance(
        "operator", {"FLEETREG_LIMIT_REQUESTS_PER_KEY": f"{KEY_LIMIT}/minute"}
    )
    yield instance
    instance.stop()
    system.extra.remove(instance)


async def test_a_console_session_past_its_keys_rate_gets_the_429_page(
    limited: ServiceProcess, session: aiohttp.ClientSession, operator: Operator, pool: Pool
) -> None:
    url = limited.url
    # Each sign-in is one request of the key too: two sessions, then the rest of the rate.
    first = await sign_in(session, url, operator.api_key)
    second = await sign_in(session, url, operator.api_key)
    answered = [(await chart(session, url, first)).status for _ in range(KEY_LIMIT - 2)]
    assert answered == [200] * (KEY_LIMIT - 2)
    refused = await chart(session, url, first)
    assert refused.status == 429
    # the console's page for a browser, with its headers, not the API's JSON
    assert refused.content_type == "text/html"
    assert int(refused.headers["Retry-After"]) >= 1
    assert "frame-ancestors 'none'" in refused.headers["Content-Security-Policy"]
    # Refused again, now from memory, before the session's row is read (console/app.py).
    again = await chart(session, url, first)
    assert again.status == 429 and again.content_type == "text/html"
    assert "API key: slow down" in await again.text()  # the memory's answer, not the check's
    assert int(again.headers["Retry-After"]) >= 1
    # Another session of the same key is no way around the key's rate, nor is a new one:
    # the sign-in is refused with the 429 page and writes no session row.
    assert (await chart(session, url, second)).status == 429
    sessions = "SELECT count(*) FROM console_sessions WHERE account_id = $1"
    rows = await pool.fetchval(sessions, operator.account_id)
    async with session.get(f"{url}/console/sign-in") as page:
        token = page.cookies[SIGN_IN_COOKIE].value
    async with session.post(
        f"{url}/console/sign-in",
        data={"csrf_token": token, "api_key": operator.api_key},
        headers={"Cookie": f"{SIGN_IN_COOKIE}={token}"},
        allow_redirects=False,
    ) as signed:
        assert signed.status == 429 and signed.content_type == "text/html"
        assert int(signed.headers["Retry-After"]) >= 1
        assert CONSOLE_COOKIE not in signed.cookies
    assert await pool.fetchval(sessions, operator.account_id) == rows
    # ... while another key's session is served: the limit is the key's, not the address's.
    other = await new_operator(session, pool, url)
    assert (await chart(session, url, await sign_in(session, url, other.api_key))).status == 200


async def test_live_view_refreshes_from_many_sessions_share_one_pipeline_health_a_second(
    system: System, session: aiohttp.ClientSession, operator: Operator, pool: Pool
) -> None:
    url = system.operator_url
    operators = [operator, *[await new_operator(session, pool, url) for _ in range(2)]]
    cookies = [
        await sign_in(session, url, o.api_key) for o in operators for _ in range(2)
    ]  # 6 sessions, 3 keys
    ops_url = system.services["operator"].ops_url
    name = "fleetreg_pipeline_health_checks_total"
    before = await metric_sample(session, ops_url, name)
    started = time.monotonic()
    answers = await asyncio.gather(*(chart(session, url, cookie) for cookie in cookies for _ in range(25)))
    elapsed = time.monotonic() - started
    computations = await metric_sample(session, ops_url, name) - before
    assert Counter(a.status for a in answers) == {200: 150}
    assert 1 <= computations <= math.ceil(elapsed) + 1, f"{computations} for 150 refreshes in {elapsed:.1f} s"
