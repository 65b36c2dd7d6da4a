"""Which Bulk Identification Codes the registry knows, kept for a few seconds, so that a
call with an unknown code is refused by the intake itself: nothing published, nothing
written (issue 21, "strangers write nothing unbounded").

Known means the code exists, current or revoked: what a known code admits (paused,
rotated, quota) is still decided by deduplication on the registry, so a stale
positive entry costs one round trip through the pipeline, never a wrong answer.

A negative entry would refuse a real device if it were stale, so:

* lock, rotation and deletion of a product send ``codes`` on the Postgres channel
  ``fleetreg_invalidate`` in their transaction (:data:`shared.db.products.CODES_CHANGED`);
  each intake drops every entry when it arrives (the bound: its delivery time, as for
  the device cache, milliseconds);
* a lookup that started before an invalidation is not stored (``generation``), nor shared
  with a call that arrives after it (that call reads the registry again);
* while the listener is disconnected no negative entry is kept (every call with a code
  not known to be known reads the registry);
* every entry lives at most ``ttl_s`` (FLEETREG_CODE_CACHE_SECONDS, default 10; 0 turns
  the cache off).

(Codes are 122 random bits made by the registry: a negative entry for a code created
later could only come from someone who guessed it.)

Registry reads are bounded: at most ``max_lookups`` run at once per instance, the others
wait their turn, and concurrent calls with one code share one read. An attacker rotating
random codes gets one indexed read each (no write), and the per-source refusal limit
(shared/throttle.py) counts each of them. Known and unknown codes are kept in separate
bounded maps, so random codes never evict the fleet's own code.

The current codes of auto products are remembered as such too (:meth:`CodeCache.put_auto`,
the same lifetime and invalidation as known codes): their registrations then need no
read of what they claim (services/intake/handlers.py, ``register_native``: only a bulk or a
revoked code is counted before it is published). A product that is auto stays auto, and
a rotation or deletion invalidates the entry, so a stale one costs nothing wrong.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

Lookup = Callable[[str], Awaitable[bool]]


class CodeCache:
    def __init__(self, ttl_s: float, max_entries: int = 10_000, max_lookups: int = 8) -> None:
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._known: OrderedDict[str, float] = OrderedDict()  # code -> expiry (monotonic)
        self._unknown: OrderedDict[str, float] = OrderedDict()
        self._auto: OrderedDict[str, float] = OrderedDict()  # current codes of auto products
        self._generation = 0
        self._listening = False  # off for negative entries until the listener runs
        self._lookups = asyncio.Semaphore(max_lookups)
        # code -> (the generation its read started in, the read's outcome)
        self._inflight: dict[str, tuple[int, asyncio.Future[bool]]] = {}
        self._refused = 0  # calls refused for an unknown code since the last take_refused

    @property
    def generation(self) -> int:
        """Changes with every invalidation: pass it back to :meth:`put`."""
        return self._generation

    def get(self, code: str) -> bool | None:
        """True (known), False (unknown) or None (not cached)."""
        now = time.monotonic()
        for entries, answer in ((self._known, True), (self._unknown, False)):
            expiry = entries.get(code)
            if expiry is not None:
                if expiry >= now:
                    return answer
                del entries[code]
        return None

    async def known(self, code: str, lookup: Lookup) -> bool:
        """Whether the registry knows ``code``: from the cache, else from ``lookup`` (a
        registry read, at most ``max_lookups`` at once; one read for concurrent calls
        with the same code that arrive in one generation). A failed lookup raises to every
        caller that waited for it."""
        cached = self.get(code)
        if cached is not None:
            return cached
        generation = self._generation  # before the read: see put
        pending = self._inflight.get(code)
        # A read that started before an invalidation may predate the code it asks about:
        # a call that arrives after the invalidation reads again rather than share it.
        if pending is not None and pending[0] == generation:
            return await asyncio.shield(pending[1])
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        entry = (generation, future)
        self._inflight[code] = entry
        try:
            async with self._lookups:
                found = await lookup(code)
            self.put(code, found, generation)
            future.set_result(found)
            return found
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: callers that waited get it, nobody else must
            raise
        finally:
            if self._inflight.get(code) is entry:  # not a newer read of the same code
                del self._inflight[code]

    def put(self, code: str, known: bool, generation: int) -> None:
        """Keep what a read made at ``generation`` found, unless anything was invalidated
        since; an unknown code only while the invalidation listener runs."""
        if self._ttl_s <= 0 or generation != self._generation or (not known and not self._listening):
            return
        entries = self._known if known else self._unknown
        entries[code] = time.monotonic() + self._ttl_s
        entries.move_to_end(code)
        while len(entries) > self._max_entries:
            entries.popitem(last=False)

    def is_auto(self, code: str) -> bool:
        """Whether ``code`` is known (for the TTL) to be the current code of an auto product."""
        expiry = self._auto.get(code)
        if expiry is None:
            return False
        if expiry < time.monotonic():
            del self._auto[code]
            return False
        return True

    def put_auto(self, code: str, generation: int) -> None:
        """Remember that a read made at ``generation`` found ``code`` the current code of an
        auto product, unless anything was invalidated since; only while the invalidation
        listener runs (a rotation missed would leave a revoked code uncounted for the TTL)."""
        if self._ttl_s <= 0 or generation != self._generation or not self._listening:
            return
        self._auto[code] = time.monotonic() + self._ttl_s
        self._auto.move_to_end(code)
        while len(self._auto) > self._max_entries:
            self._auto.popitem(last=False)

    def refused(self) -> None:
        """Count a call refused for an unknown code (summarised by :meth:`take_refused`)."""
        self._refused += 1

    def take_refused(self) -> int:
        """Calls refused for an unknown code since the last take; the count starts again."""
        taken, self._refused = self._refused, 0
        return taken

    def clear(self) -> None:
        self._generation += 1
        self._known.clear()
        self._unknown.clear()
        self._auto.clear()

    def listening(self, up: bool) -> None:
        """The invalidation listener connected (True) or lost its connection (False)."""
        self._listening = up
        self.clear()
