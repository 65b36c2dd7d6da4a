"""A registry that stops answering (a network partition, a host that drops packets) makes
the driver give up with its timeout, not a connection error: HTTP calls that needed it
answer 503 with Retry-After like any other "registry unreachable", never a 500."""

from __future__ import annotations

import asyncpg
import orjson
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from shared.db.pool import Pool
from shared.http import base_app, errors_and_metrics


async def test_a_statement_the_driver_gave_up_on_is_a_503_with_retry_after(pool: Pool) -> None:
    app = base_app("intake")
    request = make_mocked_request("POST", "/v1/registrations", app=app)

    async def stalled(request: web.Request) -> web.StreamResponse:
        # What asyncpg raises when the server does not answer within its timeout
        # (command_timeout, 30 s, in production; a blackholed registry: measured).
        await pool.fetchval("SELECT pg_sleep(2)", timeout=0.05)
        return web.Response()

    response = await errors_and_metrics(request, stalled)

    assert isinstance(response, web.Response) and response.status == 503
    assert response.headers["Retry-After"] == "5"
    assert orjson.loads(bytes(response.body))["error"] == "unavailable"


async def test_a_session_the_server_ended_mid_statement_is_a_503_not_a_500() -> None:
    """A fast restart ends sessions mid-statement; asyncpg's protocol then sometimes raises
    its own InternalClientError instead of ConnectionDoesNotExistError (about 1 in 500
    statements cut by pg_terminate_backend, measured; six 500s in one storm across
    `pg_ctl restart -m fast` before this): still "registry unreachable"."""
    app = base_app("intake")
    request = make_mocked_request("POST", "/v1/registrations", app=app)

    async def cut(request: web.Request) -> web.StreamResponse:
        raise asyncpg.InternalClientError("cannot switch to state 15; another operation (2) is in progress")

    response = await errors_and_metrics(request, cut)

    assert isinstance(response, web.Response) and response.status == 503
    assert response.headers["Retry-After"] == "5"
