"""The load of a chaos run, as the devices see it: a boot storm of ``cli.simulate`` devices
that survive faults by retrying, and a timeline of what they saw.

Each device boots with ``cli.simulate.boot_device`` (register, poll, manifest, files, ready),
which retries each call after a fault (refused connection, timeout, 5xx, 429) with capped,
jittered backoff until the device's deadline, as ``fleetreg simulate`` does. A call is
retried, never the whole boot: a device whose "ready" was accepted while its answer was
lost sends "ready" again with its secret, and never claims its hardware ID again without
the secret (which the rules make a clone: docs/domain.md#duplicate-hardware-ids).

The timeline records, at the HTTP level, every failed call (exception or 5xx) and every
success (a ready registration answer, an accepted ``ready``): a fault's recovery time is
read from it, from the device's side (first failure after the fault to the first success
after that failure).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from cli.simulate import (
    DeviceApi,
    DevicePlan,
    DeviceResult,
    FleetPlan,
    RunOptions,
    _Answer,
    _Ready,
    boot_device,
)


@dataclass
class Timeline:
    """Monotonic times of the failed and the successful calls of a run."""

    failures: list[float] = field(default_factory=list)
    successes: list[float] = field(default_factory=list)

    def fail(self) -> None:
        self.failures.append(time.monotonic())

    def succeed(self) -> None:
        self.successes.append(time.monotonic())

    def recovery(self, fault_at: float, until: float | None = None) -> dict[str, Any]:
        """What the devices saw of a fault injected at ``fault_at``: ``recovery_s`` is the
        time from the first failure after it to the first success after that failure
        (0 when no call failed), plus the first/last failure and first success offsets."""
        end = until if until is not None else float("inf")
        failed = sorted(t for t in self.failures if fault_at <= t < end)
        succeeded = sorted(t for t in self.successes if t >= fault_at)
        first_success = succeeded[0] if succeeded else None
        if not failed:
            return {
                "recovery_s": 0.0,
                "failed_calls": 0,
                "first_failure_s": None,
                "last_failure_s": None,
                "first_success_after_fault_s": _offset(first_success, fault_at),
            }
        first_failure = failed[0]
        back = next((t for t in succeeded if t > first_failure), None)
        return {
            "recovery_s": round(back - first_failure, 2) if back is not None else None,
            "failed_calls": len(failed),
            "first_failure_s": _offset(first_failure, fault_at),
            "last_failure_s": _offset(failed[-1], fault_at),
            "first_success_after_fault_s": _offset(first_success, fault_at),
        }


def _offset(t: float | None, origin: float) -> float | None:
    return None if t is None else round(t - origin, 2)


class TimedDeviceApi(DeviceApi):
    """The simulator's device API, recording each call's outcome on a :class:`Timeline`."""

    def __init__(
        self, session: aiohttp.ClientSession, base_url: str, options: RunOptions, timeline: Timeline
    ) -> None:
        super().__init__(session, base_url, options)
        self.timeline = timeline

    def _note(self, answer: _Answer) -> _Answer:
        if answer.status == 200 and answer.body.get("status") == "ready":
            self.timeline.succeed()
        return answer

    async def register(self, device: DevicePlan, code: str, group_key: str | None = None) -> _Answer:
        try:
            return self._note(await super().register(device, code, group_key))
        except Exception:
            self.timeline.fail()
            raise

    async def poll(self, request_id: str) -> _Answer:
        try:
            return self._note(await super().poll(request_id))
        except Exception:
            self.timeline.fail()
            raise

    async def manifest(self, ready: _Ready) -> dict[str, Any]:
        try:
            return await super().manifest(ready)
        except Exception:
            self.timeline.fail()
            raise

    async def file(self, url: str, secret: str) -> bytes:
        try:
            return await super().file(url, secret)
        except Exception:
            self.timeline.fail()
            raise

    async def ready(self, ready: _Ready) -> None:
        try:
            await super().ready(ready)
        except Exception:
            self.timeline.fail()
            raise
        self.timeline.succeed()


@dataclass
class StormResult:
    results: list[DeviceResult]
    duration_s: float

    @property
    def retries(self) -> dict[str, int]:
        """The devices' retried calls, by kind of fault."""
        kinds: dict[str, int] = {}
        for r in self.results:
            for kind, n in r.retries.items():
                kinds[kind] = kinds.get(kind, 0) + n
        return kinds

    @property
    def acknowledged(self) -> dict[int, str]:
        """Device index -> device ID, for every device told it is provisioned."""
        return {r.index: r.device_id for r in self.results if r.provisioned and r.device_id}

    @property
    def failed(self) -> dict[str, int]:
        kinds: dict[str, int] = {}
        for r in self.results:
            if not r.provisioned:
                kinds[r.error or "unknown"] = kinds.get(r.error or "unknown", 0) + 1
        return kinds


async def boot_storm(
    plan: FleetPlan,
    device_url: str,
    concurrency: int,
    timeline: Timeline,
    *,
    deadline_s: float = 300.0,
    options: RunOptions | None = None,
) -> StormResult:
    """Boot every device of ``plan``, at most ``concurrency`` at a time, each call retried
    until ``deadline_s`` after the device's first (backoff capped at 2 s, so a device comes
    back within about 2 s of a recovery and the recovery time reads true); never raises
    for a device's failure."""
    options = options or RunOptions(
        request_timeout_s=15.0,
        connect_timeout_s=3.0,
        deadline_s=deadline_s,
        initial_backoff_s=0.2,
        max_backoff_s=2.0,
    )
    timeout = aiohttp.ClientTimeout(total=options.request_timeout_s, connect=options.connect_timeout_s)
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
    gate = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        api = TimedDeviceApi(session, device_url, options, timeline)

        async def one(device: DevicePlan) -> DeviceResult:
            async with gate:
                return await boot_device(api, plan, device)

        started = time.monotonic()
        results = list(await asyncio.gather(*(one(d) for d in plan.devices)))
        duration = time.monotonic() - started
    return StormResult(results=results, duration_s=duration)
