"""A clock for retry tests: time moves only when slept on, every wait is recorded, and
nothing really waits (one loop turn, so other coroutines run between the waits)."""

from __future__ import annotations

import asyncio


class FakeTime:
    """``clock`` and ``sleep`` for ``cli.simulate.RunOptions``; shared by all devices of a run."""

    def __init__(self) -> None:
        self.now = 0.0
        self.waits: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)
