"""Periodic work, written once for every service: a named job that runs one round of a
coroutine function every ``every_s`` seconds (the intake's step-1 sweep and its reports,
the operator's retention, the notifier's webhook sweep).

A round that raises is logged (the exception's type and place,
``shared.logging.exception_summary``, never its message) and counted in
``fleetreg_periodic_job_failures_total{service, job}``; the job goes on at its next round,
so a database restarting costs rounds, never the job. Only cancellation ends it.

The job lives inside its owner's cleanup context: ``async with PeriodicJob(...)``, or
``await stack.enter_async_context(PeriodicJob(...))`` on an ``AsyncExitStack``. Leaving it
stops the job and awaits its task, so no task outlives the context that started it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Self

from shared.logging import exception_summary
from shared.metrics import PERIODIC_JOB_FAILURES

log = logging.getLogger(__name__)


class PeriodicJob:
    """``work()`` every ``every_s`` seconds (> 0), in a task named ``<service>-<name>``.

    * ``run_at_start``: the first round runs at once, then each after the interval; by
      default the job waits one interval first (work that has nothing to do at start-up).
    * ``stop_grace_s``: on stop, a round in progress gets this long (seconds, >= 0) to
      finish before it is cancelled; 0 cancels it at once. A job waiting between rounds
      stops at once either way.
    * ``final_round``: on stop, once the task is done, one last round (counts kept in
      memory, reported on the way out); it fails like any round, logged and counted.

    The interval is measured from the end of one round to the start of the next, so
    rounds never overlap. ValueError for an interval not above 0 or a negative grace.
    """

    def __init__(
        self,
        service: str,
        name: str,
        every_s: float,
        work: Callable[[], Awaitable[object]],
        *,
        run_at_start: bool = False,
        stop_grace_s: float = 0.0,
        final_round: bool = False,
    ) -> None:
        if not every_s > 0:
            raise ValueError(f"a periodic job's interval must be above 0 seconds, not {every_s}")
        if not stop_grace_s >= 0:
            raise ValueError(f"a periodic job's stop grace must be 0 seconds or more, not {stop_grace_s}")
        self.service = service
        self.name = name
        self.every_s = every_s
        self._work = work
        self._run_at_start = run_at_start
        self._stop_grace_s = stop_grace_s
        self._final_round = final_round
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the job's task (RuntimeError if it was started before)."""
        if self._task is not None:
            raise RuntimeError(f"periodic job {self.name} already started")
        self._task = asyncio.create_task(self._run(), name=f"{self.service}-{self.name}")

    async def stop(self) -> None:
        """Stop the job and wait for its task to end (then the final round, if asked for).
        Safe to call twice, and on a job never started (no final round then)."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping.set()  # ends a pause at once, and the loop after the round in progress
        try:
            if self._stop_grace_s > 0:
                await asyncio.wait({task}, timeout=self._stop_grace_s)
        finally:
            task.cancel()  # also when the caller is cancelled during the grace: no task left
        # asyncio.wait, not ``await task``: a cancellation of the caller itself still
        # propagates (suppressing CancelledError around ``await task`` would swallow it).
        await asyncio.wait({task})
        if not task.cancelled() and (error := task.exception()) is not None:
            raise error  # not an Exception (those are caught per round): let it through
        if self._final_round:
            await self._round()

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _run(self) -> None:
        if not self._run_at_start:
            await self._pause()
        while not self._stopping.is_set():
            await self._round()
            await self._pause()

    async def _pause(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=self.every_s)

    async def _round(self) -> None:
        try:
            await self._work()
        except Exception as exc:  # the next round tries again; the service keeps serving
            PERIODIC_JOB_FAILURES.labels(self.service, self.name).inc()
            log.warning(
                "periodic job round failed; the next round tries again",
                extra={"job": self.name, "every_s": self.every_s, "error": exception_summary(exc)},
            )
