"""The intake's cache of known and unknown codes (services/intake/code_cache.py): an
unknown code is kept only while invalidations can reach it, never past an invalidation
that came during its read, and registry reads are bounded and shared."""

from __future__ import annotations

import asyncio

import pytest

from services.intake.code_cache import CodeCache


def listening_cache(ttl_s: float = 10.0, max_entries: int = 10_000, max_lookups: int = 8) -> CodeCache:
    cache = CodeCache(ttl_s, max_entries=max_entries, max_lookups=max_lookups)
    cache.listening(True)
    return cache


class Registry:
    """A lookup that knows ``codes`` and counts its reads (optionally held until released)."""

    def __init__(self, *codes: str, hold: bool = False) -> None:
        self.codes = set(codes)
        self.reads = 0
        self.running = 0
        self.most_at_once = 0
        self.release = asyncio.Event()
        if not hold:
            self.release.set()

    async def __call__(self, code: str) -> bool:
        self.reads += 1
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            await self.release.wait()
            return code in self.codes
        finally:
            self.running -= 1


async def test_known_and_unknown_codes_are_kept_for_the_ttl() -> None:
    cache, registry = listening_cache(ttl_s=0.05), Registry("K")
    assert await cache.known("K", registry) and not await cache.known("U", registry)
    assert await cache.known("K", registry) and not await cache.known("U", registry)
    assert registry.reads == 2
    await asyncio.sleep(0.06)
    assert cache.get("K") is None and cache.get("U") is None


async def test_an_unknown_code_is_not_kept_while_the_listener_is_down() -> None:
    cache, registry = CodeCache(10.0), Registry("K")  # not listening yet
    assert not await cache.known("U", registry) and not await cache.known("U", registry)
    assert registry.reads == 2  # each call read the registry: a stale "unknown" is never served
    assert await cache.known("K", registry) and cache.get("K") is True  # known: harmless if stale
    cache.listening(True)
    cache.listening(False)
    assert cache.get("K") is None  # notifications may have been missed: everything dropped


async def test_an_invalidation_drops_everything_and_a_read_that_started_before_it_is_not_kept() -> None:
    cache, registry = listening_cache(), Registry("K", hold=True)
    read = asyncio.create_task(cache.known("NEW", registry))
    await asyncio.sleep(0)
    cache.clear()  # "codes": NEW was created while the read ran
    registry.release.set()
    assert not await read
    assert cache.get("NEW") is None
    registry.codes.add("NEW")
    assert await cache.known("NEW", registry)


async def test_a_call_after_an_invalidation_does_not_share_a_read_that_started_before_it() -> None:
    """The read's snapshot predates the code's creation: a call that arrives once the
    creation's invalidation came must not be answered "unknown" from it."""
    codes: set[str] = set()
    gate = asyncio.Event()

    async def snapshot(code: str) -> bool:
        found = code in codes  # what the registry held when the read began
        await gate.wait()
        return found

    cache = listening_cache()
    early = asyncio.create_task(cache.known("NEW", snapshot))
    await asyncio.sleep(0)
    codes.add("NEW")  # created and committed ...
    cache.clear()  # ... and its "codes" notification arrived
    late = asyncio.create_task(cache.known("NEW", snapshot))
    await asyncio.sleep(0)
    gate.set()
    assert not await early  # asked before the code existed
    assert await late
    assert cache.get("NEW") is True


async def test_registry_reads_are_bounded_and_shared_by_callers_of_one_code() -> None:
    cache, registry = listening_cache(max_lookups=3), Registry("K", hold=True)
    same = [asyncio.create_task(cache.known("K", registry)) for _ in range(50)]
    random = [asyncio.create_task(cache.known(f"R{i}", registry)) for i in range(20)]
    await asyncio.sleep(0.01)
    assert registry.most_at_once <= 3
    registry.release.set()
    assert all(await asyncio.gather(*same))
    assert not any(await asyncio.gather(*random))
    assert registry.reads == 21  # one for the 50 calls with K, one per random code
    assert registry.most_at_once == 3


async def test_a_failed_read_fails_every_caller_waiting_for_it_and_is_not_kept() -> None:
    cache = listening_cache()
    gate = asyncio.Event()

    async def down(code: str) -> bool:
        await gate.wait()
        raise ConnectionError("registry unreachable")

    calls = [asyncio.create_task(cache.known("K", down)) for _ in range(3)]
    await asyncio.sleep(0)
    gate.set()
    for call in calls:
        with pytest.raises(ConnectionError):
            await call
    assert cache.get("K") is None


async def test_random_codes_never_evict_the_fleet_s_code() -> None:
    cache, registry = listening_cache(max_entries=10), Registry("FLEET")
    assert await cache.known("FLEET", registry)
    for i in range(100):
        await cache.known(f"R{i}", registry)
    assert cache.get("FLEET") is True
    assert cache.get("R0") is None and cache.get("R99") is False


async def test_a_ttl_of_zero_keeps_nothing() -> None:
    cache, registry = listening_cache(ttl_s=0), Registry("K")
    assert await cache.known("K", registry) and await cache.known("K", registry)
    assert registry.reads == 2


def test_refusals_are_summed_until_taken() -> None:
    cache = CodeCache(10.0)
    for _ in range(5):
        cache.refused()
    assert cache.take_refused() == 5
    assert cache.take_refused() == 0


def test_an_auto_products_code_is_remembered_until_an_invalidation() -> None:
    """Its registrations then cost no read of what they claim (nothing is counted before
    publishing for them); a rotation drops it, and nothing is kept while the listener is
    down or from a read older than an invalidation."""
    down = CodeCache(10.0)
    down.put_auto("A", down.generation)
    assert not down.is_auto("A")
    cache = listening_cache()
    generation = cache.generation
    cache.put_auto("A", generation)
    assert cache.is_auto("A") and not cache.is_auto("B")
    cache.clear()  # a rotation, lock or deletion
    assert not cache.is_auto("A")
    cache.put_auto("A", generation)  # read before the invalidation: not kept
    assert not cache.is_auto("A")
    off = listening_cache(ttl_s=0)
    off.put_auto("A", off.generation)
    assert not off.is_auto("A")
