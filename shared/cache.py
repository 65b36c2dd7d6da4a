"""One shared result, recomputed at most once per period, whatever the number of callers.

Readiness (``/readyz``: one Postgres query) and the console's pipeline health (an HTTP
probe of each pipeline service) are asked for at whatever rate clients choose; their
answer is worth the same to every caller within a second. :class:`SharedResult` keeps
the last answer for ``ttl_s`` and, when it is stale, lets one caller compute the next
while every concurrent caller awaits that same computation (a "single flight").

async-lru's ``alru_cache(ttl=...)`` does much the same for keyed calls; this is one value
with an injectable clock (the unit tests step time instead of sleeping) and a fresh period
counted from the end of the computation, so a slow dependency is still asked at most
once per ``ttl_s`` plus its own latency.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class SharedResult(Generic[T]):
    """The result of ``compute``, reused for ``ttl_s`` seconds after it was computed.

    * At most one computation runs at a time: callers arriving meanwhile await it.
    * A computation that raises is not kept: its callers get the exception and the next
      call computes again (so a caller wanting "never raises" makes ``compute`` total).
    * A caller cancelled while waiting does not cancel the computation the others share.
    """

    def __init__(
        self, compute: Callable[[], Awaitable[T]], ttl_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if ttl_s < 0:
            raise ValueError(f"ttl_s must be 0 or more, not {ttl_s}")
        self._compute = compute
        self._ttl_s = ttl_s
        self._clock = clock
        self._kept: tuple[T] | None = None  # a 1-tuple, so that None is a result like any other
        self._expires = float("-inf")
        self._running: asyncio.Task[T] | None = None

    async def get(self) -> T:
        """The kept result while it is fresh; otherwise the one being (or now) computed."""
        if self._kept is not None and self._clock() < self._expires:
            return self._kept[0]
        if self._running is None:
            self._running = asyncio.create_task(self._refresh())
            # Its outcome is read even if every caller was cancelled (no "never retrieved").
            self._running.add_done_callback(lambda task: task.cancelled() or task.exception())
        # shield: one impatient caller must not cancel what the others are waiting for
        return await asyncio.shield(self._running)

    async def _refresh(self) -> T:
        try:
            value = await self._compute()
        finally:
            self._running = None
        self._kept = (value,)
        self._expires = self._clock() + self._ttl_s
        return value
