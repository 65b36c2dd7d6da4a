"""The notifier's HTTP sender against a real local server: a name that resolves to a
refused address is refused before connecting (the DNS rebinding case), redirects are not
followed, a slow answer is a timeout, and only a 2xx is a delivery."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from shared.domain.webhooks import name_refusal
from shared.webhook_sender import Sender
from tests.support.system import free_port

pytestmark = pytest.mark.integration


@pytest.fixture
async def server() -> AsyncIterator[tuple[int, list[str]]]:
    """A local server: /ok answers 204, /moved redirects to /ok, /slow waits 1.5 s."""
    hits: list[str] = []

    async def ok(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(status=204)

    async def moved(request: web.Request) -> web.Response:
        hits.append(request.path)
        raise web.HTTPFound("/ok")

    async def slow(request: web.Request) -> web.Response:
        hits.append(request.path)
        await asyncio.sleep(1.5)
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/ok", ok)
    app.router.add_post("/moved", moved)
    app.router.add_post("/slow", slow)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield port, hits
    await runner.cleanup()


async def _sender(allow_private: bool, timeout_s: float = 2) -> Sender:
    sender = Sender(allow_private=allow_private, timeout_s=timeout_s, concurrency=4)
    await sender.open()
    return sender


async def test_a_name_that_resolves_to_loopback_is_refused_before_connecting(
    server: tuple[int, list[str]],
) -> None:
    port, hits = server
    sender = await _sender(allow_private=False)
    try:
        answer = await sender.post(f"http://localhost:{port}/ok", "{}", {})
    finally:
        await sender.close()
    assert answer.http_status is None and not answer.delivered
    # The same words as for a name that does not resolve: no map of internal names.
    assert answer.error == f"refused: {name_refusal('localhost')}", answer
    assert "127.0.0.1" not in answer.error
    assert hits == []


async def test_allowed_a_2xx_is_a_delivery_and_a_redirect_is_not_followed(
    server: tuple[int, list[str]],
) -> None:
    port, hits = server
    sender = await _sender(allow_private=True, timeout_s=0.5)
    try:
        delivered = await sender.post(f"http://localhost:{port}/ok", '{"a": 1}', {"webhook-id": "msg_1"})
        moved = await sender.post(f"http://127.0.0.1:{port}/moved", "{}", {})
        slow = await sender.post(f"http://127.0.0.1:{port}/slow", "{}", {})
        closed = await sender.post(f"http://127.0.0.1:{free_port()}/", "{}", {})
    finally:
        await sender.close()
    assert (delivered.http_status, delivered.delivered) == (204, True)
    assert (moved.http_status, moved.delivered) == (302, False)
    assert slow.http_status is None and slow.error == "timed out after 0.5 s"
    assert closed.http_status is None and closed.error.startswith("cannot connect")
    assert hits == ["/ok", "/moved", "/slow"]  # the redirect's target was never asked
