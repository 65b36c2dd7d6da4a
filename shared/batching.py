"""Coalescing one small write per request into one statement per batch, without waiting.

A boot storm makes hundreds of concurrent requests each write one row (a derived key's
proof nonce). One statement a row costs a round trip, a plan and a commit each, and every
row's foreign-key check takes a lock on the same parent row (its registration) from
another transaction: Postgres then builds a MultiXact per locker. :class:`Coalescer`
sends the first item at once and every item that arrives while a batch is in flight with
the next batch: a lone request waits for nothing, a storm's requests share statements.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

Flush = Callable[[Sequence[T]], Awaitable[Sequence[R]]]
"""Writes a batch; returns one result per item, in the items' order."""


class Coalescer(Generic[T, R]):
    """Runs ``flush`` over the items submitted while the previous batch was in flight, at
    most ``max_items`` at a time, one batch at a time (in submission order).

    :meth:`submit` returns its item's result, or raises what ``flush`` raised for its batch
    (every item of a failed batch gets the same exception; nothing is retried here), or
    ValueError when ``flush`` returned a result count other than its batch's.
    """

    def __init__(self, flush: Flush[T, R], max_items: int = 500) -> None:
        if max_items < 1:
            raise ValueError(f"max_items must be 1 or more, not {max_items}")
        self._flush = flush
        self._max_items = max_items
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._draining: asyncio.Task[None] | None = None
        self.batches = 0  # statements sent (for tests and the curious)

    async def submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._draining is None or self._draining.done():
            self._draining = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._pending:
            batch = self._pending[: self._max_items]
            del self._pending[: self._max_items]
            self.batches += 1
            try:
                results = await self._flush([item for item, _ in batch])
                if len(results) != len(batch):
                    raise ValueError(f"flush returned {len(results)} results for {len(batch)} items")
            except Exception as exc:  # every waiter of the batch learns it; the next batch still runs
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            except BaseException:  # cancelled (shutting down): no waiter is left hanging
                for _, future in batch + self._pending:
                    future.cancel()
                self._pending.clear()
                raise
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():  # a waiter cancelled meanwhile: its row is written all the same
                    future.set_result(result)
