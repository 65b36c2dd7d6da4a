"""Devices the device API looked up, kept for a few seconds, dropped at once on change.

One boot makes five authenticated calls for the same device within a second or two
(manifest, each file, ready); the cache turns five registry round trips into one. A
two-call boot's registration answer (``include=files``) reads the device for its
inline files anyway: that read is kept too, so its ``ready`` makes none.

An operator's disable or reset must bite at once on every instance, so the cache is
not trusted on its TTL alone:

* every statement that disables, enables, resets or deletes a device sends
  ``device:<id>`` on the Postgres channel ``fleetreg_invalidate`` in its own
  transaction; each intake listens and drops the entry when the notification arrives
  (the bound: its delivery time, measured in docs/security.md); an edit of a
  product's services sends ``product:<id>``, which drops every entry (any payload
  but ``device:`` does: edits are rare, and entries do not know their product);
* a lookup that started before an invalidation is not stored (``generation``), so a
  slow read cannot put the old state back after the signal;
* while the listener is disconnected, signals may be lost, so the cache is off
  (every call reads the registry) until it listens again.

Registration calls never read it: they are decided by deduplication on the registry (a
two-call registration answer only fills it, from the registry read it makes anyway).
``ttl_s`` (FLEETREG_DEVICE_CACHE_SECONDS; 0 turns the cache off) only bounds memory
and staleness of what nobody changes.
"""

from __future__ import annotations

import time
from collections import OrderedDict

from shared.db.files import DeviceFiles
from shared.metrics import CACHE_INVALIDATIONS


class DeviceCache:
    def __init__(self, ttl_s: float, max_entries: int = 50_000) -> None:
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._entries: OrderedDict[str, tuple[float, DeviceFiles]] = OrderedDict()
        self._generation = 0
        # Off until the invalidation listener runs: without it, changes go unseen.
        self._listening = False

    @property
    def generation(self) -> int:
        """Changes with every invalidation: pass it back to :meth:`put`."""
        return self._generation

    def get(self, device_id: str) -> DeviceFiles | None:
        entry = self._entries.get(device_id)
        if entry is None:
            return None
        if entry[0] < time.monotonic():
            del self._entries[device_id]
            return None
        return entry[1]

    def put(self, device_id: str, device: DeviceFiles, generation: int) -> None:
        """Keep ``device``, read while the cache was at ``generation``, unless anything
        was invalidated since (the read may predate the change)."""
        if self._ttl_s <= 0 or not self._listening or generation != self._generation:
            return
        self._entries[device_id] = (time.monotonic() + self._ttl_s, device)
        self._entries.move_to_end(device_id)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def invalidate(self, device_id: str) -> None:
        self._generation += 1
        self._entries.pop(device_id, None)
        CACHE_INVALIDATIONS.labels("device").inc()

    def apply(self, payload: str) -> None:
        """Apply a ``device:<id>`` invalidation payload; anything else (``product:<id>``,
        a service edit) drops everything."""
        if payload.startswith("device:"):
            self.invalidate(payload.removeprefix("device:").strip().lower())
        else:
            self.clear()

    def clear(self) -> None:
        self._generation += 1
        self._entries.clear()
        CACHE_INVALIDATIONS.labels("all").inc()

    def listening(self, up: bool) -> None:
        """The invalidation listener connected (True) or lost its connection (False)."""
        self._listening = up
        self.clear()
