"""The periodic-job primitive every service's background work runs on (shared/periodic.py):
rounds every interval, a failed round logged and counted and the job going on, and a
stop that cancels and awaits the task (nothing left running)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from collections.abc import Callable

import pytest
from prometheus_client import REGISTRY

from shared.periodic import PeriodicJob

TICK_S = 0.01


def _service() -> str:
    """A service label of the test's own, so that counts from other tests never mix in."""
    return f"test-{uuid.uuid4().hex[:8]}"


def _failures(service: str, job: str) -> float:
    value = REGISTRY.get_sample_value(
        "fleetreg_periodic_job_failures_total", {"service": service, "job": job}
    )
    return value or 0.0


async def _until(condition: Callable[[], bool], within_s: float = 1.0) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(TICK_S / 2)


def _job_tasks(service: str) -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith(f"{service}-")]


async def test_rounds_run_every_interval_after_a_first_wait() -> None:
    service = _service()
    rounds: list[float] = []

    async def work() -> None:
        rounds.append(time.monotonic())

    started = time.monotonic()
    async with PeriodicJob(service, "tick", 0.03, work):
        await asyncio.sleep(0)
        assert rounds == []  # the first round waits one interval
        await _until(lambda: len(rounds) >= 3)
    slack = 0.005  # the event loop may fire a timer up to its clock's resolution early
    assert rounds[0] - started >= 0.03 - slack
    gaps = [b - a for a, b in itertools.pairwise(rounds)]
    assert all(gap >= 0.03 - slack for gap in gaps), gaps


async def test_run_at_start_runs_the_first_round_at_once() -> None:
    rounds = 0

    async def work() -> None:
        nonlocal rounds
        rounds += 1

    async with PeriodicJob(_service(), "tick", 100.0, work, run_at_start=True):
        await _until(lambda: rounds == 1, within_s=0.2)
    assert rounds == 1  # then it waits the interval, and stopping ends the wait at once


async def test_a_failed_round_is_logged_and_counted_and_the_job_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    service = _service()
    calls = 0

    async def work() -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise ConnectionError("secret-looking detail")

    with caplog.at_level(logging.WARNING, logger="shared.periodic"):
        async with PeriodicJob(service, "flaky", TICK_S, work):
            await _until(lambda: calls >= 4)
    assert _failures(service, "flaky") == 1.0
    [record] = [r for r in caplog.records if getattr(r, "job", None) == "flaky"]
    assert record.levelno == logging.WARNING
    error = record.__dict__["error"]  # the type and place only (shared.logging.exception_summary)
    assert error.startswith("builtins.ConnectionError at ")
    assert "secret-looking detail" not in record.getMessage() + error
    assert _job_tasks(service) == []


async def test_stop_cancels_a_round_in_progress_and_awaits_it() -> None:
    service = _service()
    entered = asyncio.Event()
    cancelled = False

    async def work() -> None:
        nonlocal cancelled
        entered.set()
        try:
            await asyncio.Event().wait()  # a round that never ends by itself
        except asyncio.CancelledError:
            cancelled = True
            raise

    job = PeriodicJob(service, "stuck", TICK_S, work, run_at_start=True)
    job.start()
    await asyncio.wait_for(entered.wait(), timeout=1.0)
    assert len(_job_tasks(service)) == 1
    await job.stop()
    assert cancelled  # awaited: the round had ended when stop returned
    assert _job_tasks(service) == []
    assert _failures(service, "stuck") == 0.0  # cancellation is not a failure
    await job.stop()  # twice is harmless


async def test_a_grace_lets_the_round_in_progress_finish() -> None:
    entered = asyncio.Event()
    finished = 0

    async def work() -> None:
        nonlocal finished
        entered.set()
        await asyncio.sleep(0.05)
        finished += 1

    job = PeriodicJob(_service(), "graceful", TICK_S, work, run_at_start=True, stop_grace_s=1.0)
    job.start()
    await asyncio.wait_for(entered.wait(), timeout=1.0)
    started = time.monotonic()
    await job.stop()
    assert finished == 1  # finished, and no round after it
    assert time.monotonic() - started < 0.5


async def test_a_stop_cancelled_during_the_grace_still_ends_the_job() -> None:
    service = _service()
    entered = asyncio.Event()

    async def work() -> None:
        entered.set()
        await asyncio.Event().wait()

    job = PeriodicJob(service, "stuck", TICK_S, work, run_at_start=True, stop_grace_s=10.0)
    job.start()
    await asyncio.wait_for(entered.wait(), timeout=1.0)
    stopping = asyncio.create_task(job.stop())
    await asyncio.sleep(TICK_S)
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopping  # the caller's cancellation is not swallowed
    await _until(lambda: _job_tasks(service) == [])


async def test_a_final_round_runs_once_after_the_job_stopped() -> None:
    rounds = 0

    async def work() -> None:
        nonlocal rounds
        rounds += 1

    async with PeriodicJob(_service(), "report", 100.0, work, final_round=True):
        await asyncio.sleep(0)
        assert rounds == 0
    assert rounds == 1
    await PeriodicJob(_service(), "report", 100.0, work, final_round=True).stop()  # never started
    assert rounds == 1


async def test_a_failing_final_round_is_counted_and_stop_still_returns() -> None:
    service = _service()

    async def work() -> None:
        raise TimeoutError

    async with PeriodicJob(service, "report", 100.0, work, final_round=True):
        pass
    assert _failures(service, "report") == 1.0


async def test_the_job_is_stopped_by_the_exit_stack_that_entered_it() -> None:
    service = _service()

    async def work() -> None:
        pass

    async with contextlib.AsyncExitStack() as stack:
        job = await stack.enter_async_context(PeriodicJob(service, "stacked", 100.0, work))
        assert job.name == "stacked"
        assert [t.get_name() for t in _job_tasks(service)] == [f"{service}-stacked"]
    assert _job_tasks(service) == []


async def test_a_job_cannot_start_twice() -> None:
    async def work() -> None:
        pass

    async with PeriodicJob(_service(), "once", 100.0, work) as job:
        with pytest.raises(RuntimeError):
            job.start()


@pytest.mark.parametrize(("every_s", "grace_s"), [(0.0, 0.0), (-1.0, 0.0), (float("nan"), 0.0), (1.0, -0.1)])
def test_an_interval_not_above_zero_or_a_negative_grace_is_refused(every_s: float, grace_s: float) -> None:
    async def work() -> None:
        pass

    with pytest.raises(ValueError):
        PeriodicJob("test", "bad", every_s, work, stop_grace_s=grace_s)
