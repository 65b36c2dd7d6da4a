"""A registration hook and device storms against it (issue 27), for the e2e storm test
(tests/e2e/test_registration_hook_storm.py) and the benchmark (tests/bench/hooks.py).

:class:`StormHook` is the operator's hook, an aiohttp server in a process of its own
(tests/support/hook_server.py): it allows every claim after ``delay_s``, or is down
(answers 503, or refuses connections: nothing listens) until :meth:`StormHook.come_back`;
it records every call it received, when, and whether it was down. :func:`boot` runs ``cli.simulate`` devices (the native
two-call boot, as ``fleetreg simulate`` does: register, poll a ``pending`` answer after
its ``Retry-After``, verify the inline files, confirm ``ready``), closed loop or started at
a fixed rate, and notes when each device finished (the test's clock, ``time.monotonic``).
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp

from cli.simulate import DeviceApi, DeviceResult, FleetPlan, RunOptions, boot_device
from tests.support.api import Operator
from tests.support.system import ROOT, free_port

# How a hook is down: it answers 503, or nothing listens on its port (connection refused).
Outage = Literal["503", "refused"]

# Devices as real ones: two-call boot, each pending answer polled after its Retry-After
# (the hook's fail-closed pending says 5 s; a poll never comes sooner than told), every
# fault retried until the deadline.
DEVICE_OPTIONS = RunOptions(request_timeout_s=60.0, deadline_s=600.0, two_call=True, max_poll_interval_s=60.0)


@dataclass(frozen=True)
class HookCall:
    """One call the hook received: when (``time.monotonic``), whether it was down then
    (answered 503), its own answering time (ms; None while down) and the request's
    ``data`` (request ID, hardware IDs, decision...)."""

    at: float
    down: bool
    answering_ms: float | None
    data: dict[str, Any]


@dataclass
class StormHook:
    """The hook (tests/support/hook_server.py, a process of its own, so that the load
    generator's devices never hold its answers): allows every claim after ``delay_s``
    (seconds), unless down."""

    port: int
    outage: Outage = "503"
    delay_s: float = 0.0
    returned_at: float | None = None  # when it came back (time.monotonic)
    calls: list[HookCall] = field(default_factory=list)  # as of the last :meth:`read_calls`
    _process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self, *, down: bool = False) -> None:
        """Serve; ``down``: from the start, until :meth:`come_back` (with the ``refused``
        outage nothing listens meanwhile)."""
        if down and self.outage == "refused":
            return
        await self._spawn(down)

    async def _spawn(self, down: bool) -> None:
        args = [str(self.port), str(self.delay_s), *(["--down"] if down else [])]
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.support.hook_server", *args, cwd=ROOT
        )
        deadline = time.monotonic() + 30
        async with aiohttp.ClientSession() as session:
            while True:
                try:
                    async with session.get(self._control("calls")) as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientConnectionError:
                    if time.monotonic() > deadline or self._process.returncode is not None:
                        raise
                await asyncio.sleep(0.1)

    def _control(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/control/{name}"

    async def come_back(self) -> None:
        """The hook answers again (it allows every claim from now on)."""
        if self._process is None:
            await self._spawn(down=False)
            self.returned_at = time.monotonic()
            return
        async with aiohttp.ClientSession() as session, session.post(self._control("up")) as response:
            self.returned_at = float((await response.json())["at"])

    async def read_calls(self) -> list[HookCall]:
        """Every call the hook received so far (also kept as :attr:`calls`)."""
        if self._process is None:
            return self.calls
        async with aiohttp.ClientSession() as session, session.get(self._control("calls")) as response:
            self.calls = [HookCall(at, down, ms, data) for at, down, ms, data in await response.json()]
        return self.calls

    def answering_ms(self, since: int = 0) -> list[float]:
        """The hook's own answering times (ms) of the allowed calls, from the ``since``-th call."""
        return [c.answering_ms for c in self.calls[since:] if c.answering_ms is not None]

    async def stop(self) -> None:
        if self._process is not None and self._process.returncode is None:
            self._process.terminate()
            await self._process.wait()

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
