"""shared.batching.Coalescer: a lone item is sent at once, items arriving while a batch is in
flight share the next one, each waiter gets its own item's result, and a failed batch fails
its waiters only."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from shared.batching import Coalescer


async def _turns() -> None:
    for _ in range(3):  # the submitting task, then the batch's task, get to run
        await asyncio.sleep(0)


async def test_a_lone_item_is_sent_at_once_and_concurrent_ones_share_batches() -> None:
    sent: list[list[int]] = []
    gate = asyncio.Event()

    async def flush(items: Sequence[int]) -> list[int]:
        sent.append(list(items))
        if len(sent) == 1:
            await gate.wait()  # the first batch is in flight while the others arrive
        return [i * 10 for i in items]

    batches: Coalescer[int, int] = Coalescer(flush, max_items=3)
    first = asyncio.create_task(batches.submit(1))
    await _turns()
    assert sent == [[1]]  # sent without waiting for company
    rest = [asyncio.create_task(batches.submit(i)) for i in range(2, 7)]
    await _turns()
    gate.set()
    assert await first == 10
    assert await asyncio.gather(*rest) == [20, 30, 40, 50, 60]
    assert sent == [[1], [2, 3, 4], [5, 6]]  # in order, at most max_items each
    assert batches.batches == 3


async def test_a_failed_batch_fails_its_waiters_and_the_next_batch_still_runs() -> None:
    calls = 0

    async def flush(items: Sequence[str]) -> list[str]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)
        if calls == 1:
            raise ConnectionError("registry down")
        return [item.upper() for item in items]

    batches: Coalescer[str, str] = Coalescer(flush)
    failing = asyncio.create_task(batches.submit("a"))
    await asyncio.sleep(0)
    later = asyncio.create_task(batches.submit("b"))
    with pytest.raises(ConnectionError):
        await failing
    assert await later == "B"


async def test_a_flush_answering_for_other_items_is_an_error() -> None:
    async def flush(items: Sequence[int]) -> list[int]:
        return []

    with pytest.raises(ValueError, match="0 results for 1 items"):
        await Coalescer(flush).submit(1)
    with pytest.raises(ValueError):
        Coalescer(flush, max_items=0)
