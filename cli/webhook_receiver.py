"""A webhook receiver for ``fleetreg demo``: a small HTTP server on 127.0.0.1 that checks
each request's signature with the ``standardwebhooks`` package, as any receiver should,
and counts the events by type."""

from __future__ import annotations

import asyncio
import socket
import time
from collections import Counter
from dataclasses import dataclass, field

from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

PATH = "/fleetreg-demo-webhook"


@dataclass
class DemoReceiver:
    secret: str = ""  # set once the webhook is created (its secret is shown once)
    counts: Counter[str] = field(default_factory=Counter)  # verified events by type, each event once
    bad_signatures: int = 0
    _seen: set[str] = field(default_factory=set)
    _runner: web.AppRunner | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{PATH}"

    async def start(self) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        app = web.Application()
        app.router.add_post(PATH, self._receive)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _receive(self, request: web.Request) -> web.Response:
        body = await request.text()
        if not self.secret:
            return web.Response(status=503)  # not ready yet: the notifier tries again
        try:
            payload = Webhook(self.secret).verify(body, dict(request.headers))
        except WebhookVerificationError:
            self.bad_signatures += 1
            return web.Response(status=401)
        event_id = request.headers["webhook-id"]
        if event_id not in self._seen:  # at least once: a repeat is counted once
            self._seen.add(event_id)
            self.counts[str(payload["type"])] += 1
        return web.Response(status=204)

    async def wait_for(self, expected: dict[str, int], within_s: float) -> bool:
        """Wait until at least ``expected`` events of each type arrived; False at the deadline."""
        deadline = time.monotonic() + within_s
        while any(self.counts[kind] < count for kind, count in expected.items()):
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.2)
        return True
