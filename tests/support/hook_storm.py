"""A registration hook and device storms against it (issue 27), for the e2e storm test
(tests/e2e/test_registration_hook_storm.py) and the benchmark (tests/bench/hooks.py).

:class:`StormHook` is the operator's hook as an aiohttp server in the calling process:
it allows every claim after ``delay_s``, or is down (answers 503, or refuses connections:
nothing listens) until :meth:`StormHook.come_back`; it records every call it received,
when, and whether it was down. :func:`boot` runs ``cli.simulate`` devices (the native
two-call boot, as ``fleetreg simulate`` does: register, poll a ``pending`` answer after
its ``Retry-After``, verify the inline files, confirm ``ready``), closed loop or started at
a fixed rate, and notes when each device finished (the test's clock, ``time.monotonic``).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
from aiohttp import web

from cli.simulate import DeviceApi, DeviceResult, FleetPlan, RunOptions, boot_device
from tests.support.api import Operator
from tests.support.system import free_port

# How a hook is down: it answers 503, or nothing listens on its port (connection refused).
Outage = Literal["503", "refused"]

# Devices as real ones: two-call boot, each pending answer polled after its Retry-After
# (the hook's fail-closed pending says 5 s; a poll never comes sooner than told), every
# fault retried until the deadline.
DEVICE_OPTIONS = RunOptions(request_timeout_s=60.0, deadline_s=600.0, two_call=True, max_poll_interval_s=60.0)


@dataclass(frozen=True)
class HookCall:
    """One call the hook received: when (``time.monotonic``), whether it was down then
    (answered 503), and the request's ``data`` (request ID, hardware IDs, decision...)."""

    at: float
    down: bool
    data: dict[str, Any]


@dataclass
class StormHook:
    """The hook server: allows every claim after ``delay_s`` (seconds), unless down."""

    port: int
    outage: Outage = "503"
    delay_s: float = 0.0
    down: bool = False
    returned_at: float | None = None  # when it came back (time.monotonic)
    calls: list[HookCall] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)  # its own answering time, allowed calls
    _runner: web.AppRunner | None = None
    _site: web.TCPSite | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _answer(self, request: web.Request) -> web.Response:
        started = time.monotonic()
        body = json.loads(await request.read())
        down = self.down
        self.calls.append(HookCall(started, down, body.get("data", {})))
        if down:
            return web.json_response({"error": "down for maintenance"}, status=503)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        self.latencies_ms.append((time.monotonic() - started) * 1000)
        return web.json_response({"allow": True})

    async def start(self, *, down: bool = False) -> None:
        """Serve; ``down``: from the start, until :meth:`come_back` (with the ``refused``
        outage nothing listens meanwhile)."""
        app = web.Application()
        app.router.add_post("/hook", self._answer)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        self.down = down
        if not (down and self.outage == "refused"):
            await self._listen()

    async def _listen(self) -> None:
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await self._site.start()

    async def come_back(self) -> None:
        """The hook answers again (it allows every claim from now on)."""
        if self._site is None:
            await self._listen()
        self.down = False
        self.returned_at = time.monotonic()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def calls_after_return(self) -> list[HookCall]:
        return [
            c for c in self.calls if not c.down and self.returned_at is not None and c.at >= self.returned_at
        ]


async def start_hook(*, down: bool = False, outage: Outage = "503", delay_s: float = 0.0) -> StormHook:
    hook = StormHook(port=free_port(), outage=outage, delay_s=delay_s)
    await hook.start(down=down)
    return hook


async def hooked_registration(
    operator: Operator, services: list[dict[str, Any]], hook_url: str | None, **settings: Any
) -> dict[str, Any]:
    """A locked product of ``services`` with an auto registration, its hook ``hook_url``
    (None: no hook); returns the registration."""
    product = await operator.call(
        "POST", "/v1/products", {"name": f"storm-{uuid.uuid4().hex[:8]}", "services": services}, expect=201
    )
    await operator.call("POST", f"/v1/products/{product['id']}/lock", expect=200)
    hook = {"hook_url": hook_url, **settings} if hook_url is not None else {}
    registration: dict[str, Any] = await operator.call(
        "POST", "/v1/auto-registrations", {"product_id": product["id"], **hook}, expect=201
    )
    return registration


@dataclass(frozen=True)
class Booted:
    """A device's result and when it ended (``time.monotonic``), either way."""

    result: DeviceResult
    started_at: float
    ended_at: float


@dataclass(frozen=True)
class Storm:
    """A finished storm: each device's end, and when the storm started and ended."""

    booted: tuple[Booted, ...]
    started_at: float
    ended_at: float

    @property
    def results(self) -> list[DeviceResult]:
        return [b.result for b in self.booted]

    @property
    def seconds(self) -> float:
        return self.ended_at - self.started_at


async def boot(
    plan: FleetPlan,
    device_url: str,
    *,
    concurrency: int | None = None,
    rate_per_s: float | None = None,
    options: RunOptions = DEVICE_OPTIONS,
) -> Storm:
    """Boot every device of ``plan``: ``concurrency`` at once (closed loop), or device *i*
    started at *i* / ``rate_per_s`` s whatever the others do (open loop), over one
    keep-alive session."""
    if (concurrency is None) == (rate_per_s is None):
        raise ValueError("give either a concurrency or a rate")
    limit = concurrency or 0  # 0: no limit on connections (open loop)
    timeout = aiohttp.ClientTimeout(total=options.request_timeout_s, connect=options.connect_timeout_s)
    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=limit)
    gate = asyncio.Semaphore(concurrency or len(plan.devices) or 1)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        api = DeviceApi(session, device_url, options)
        started = time.monotonic()

        async def one(index: int) -> Booted:
            if rate_per_s is not None:
                await asyncio.sleep(max(0.0, started + index / rate_per_s - time.monotonic()))
            async with gate:
                began = time.monotonic()
                result = await boot_device(api, plan, plan.devices[index])
            return Booted(result, began, time.monotonic())

        booted = await asyncio.gather(*(one(i) for i in range(len(plan.devices))))
    return Storm(tuple(booted), started, time.monotonic())


def ended_ready(storm: Storm) -> Sequence[float]:
    """When each provisioned device of ``storm`` ended (``time.monotonic``), in order."""
    return sorted(b.ended_at for b in storm.booted if b.result.provisioned)
