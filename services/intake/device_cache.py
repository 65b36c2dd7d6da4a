"""Devices the device API looked up, kept for a few seconds.

One boot makes five authenticated calls for the same device within a second or two
(manifest, each file, ready); the cache turns five registry round trips into one.
An operator's disable or reset therefore reaches the file and ready calls within
``ttl_s`` (FLEETREG_DEVICE_CACHE_SECONDS; 0 turns the cache off). Registration calls
never use it: they are decided by deduplication on the registry itself.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any


class DeviceCache:
    def __init__(self, ttl_s: float, max_entries: int = 50_000) -> None:
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._entries: OrderedDict[str, tuple[float, list[Any]]] = OrderedDict()

    def get(self, device_id: str) -> list[Any] | None:
        entry = self._entries.get(device_id)
        if entry is None:
            return None
        if entry[0] < time.monotonic():
            del self._entries[device_id]
            return None
        return entry[1]

    def put(self, device_id: str, rows: list[Any]) -> None:
        if self._ttl_s <= 0:
            return
        self._entries[device_id] = (time.monotonic() + self._ttl_s, rows)
        self._entries.move_to_end(device_id)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
