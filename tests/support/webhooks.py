"""A webhook receiver for end-to-end tests: an HTTP server in the test process that keeps
every request, answers as the test tells it, and checks signatures with the
``standardwebhooks`` package, as a real receiver would."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from standardwebhooks.webhooks import Webhook

from tests.support.system import free_port


@dataclass(frozen=True)
class Request:
    headers: dict[str, str]
    body: str

    @property
    def payload(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.body)
        return loaded

    @property
    def event_id(self) -> str:
        return self.headers["webhook-id"]

    @property
    def kind(self) -> str:
        return str(self.payload["type"])

    @property
    def device_id(self) -> str | None:
        device: str | None = self.payload["data"].get("device_id")
        return device


# Decides the answer to one request (its HTTP status); may wait.
Answer = Callable[[Request], Awaitable[int]]


async def accept(_: Request) -> int:
    return 204


@dataclass
class Receiver:
    answer: Answer = accept
    arrived: list[Request] = field(default_factory=list)  # every request, in arrival order
    accepted: list[Request] = field(default_factory=list)  # those answered 2xx, in answer order
    in_flight: int = 0
    most_in_flight: int = 0
    port: int = field(default_factory=free_port)
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/fleetreg"

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hooks/fleetreg", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        received = Request({k.lower(): v for k, v in request.headers.items()}, await request.text())
        self.arrived.append(received)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            status = await self.answer(received)
        finally:
            self.in_flight -= 1
        if 200 <= status < 300:
            self.accepted.append(received)
        return web.Response(status=status)

    async def wait_for(self, done: Callable[[], bool], within_s: float, what: str) -> None:
        """Wait until ``done()``; fail naming ``what`` after ``within_s`` seconds."""
        deadline = time.monotonic() + within_s
        while not done():
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not within {within_s} s ({len(self.accepted)} accepted)")
            await asyncio.sleep(0.1)

    def verify_all(self, secret: str) -> None:
        """Every accepted request's signature verifies, and its body is the event its headers name."""
        checker = Webhook(secret)
        for received in self.accepted:
            assert checker.verify(received.body, received.headers) == received.payload


def events_by_device(requests: list[Request]) -> dict[str, list[str]]:
    """Per device, the event types in arrival order, a repeat of the same event (a retry of
    one already answered) folded into its first arrival."""
    seen: set[str] = set()
    found: dict[str, list[str]] = {}
    for r in requests:
        if r.device_id is None or r.event_id in seen:
            continue
        seen.add(r.event_id)
        found.setdefault(r.device_id, []).append(r.kind)
    return found
