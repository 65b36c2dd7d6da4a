from __future__ import annotations

import time

from services.intake.device_cache import DeviceCache


def test_a_device_is_kept_for_the_ttl_only() -> None:
    cache = DeviceCache(ttl_s=0.05)
    cache.put("d1", ["row"])
    assert cache.get("d1") == ["row"]
    time.sleep(0.06)
    assert cache.get("d1") is None


def test_a_ttl_of_zero_keeps_nothing() -> None:
    cache = DeviceCache(ttl_s=0)
    cache.put("d1", ["row"])
    assert cache.get("d1") is None


def test_the_oldest_entries_go_first_when_full() -> None:
    cache = DeviceCache(ttl_s=60, max_entries=2)
    for device in ("d1", "d2", "d3"):
        cache.put(device, [device])
    assert [cache.get(d) for d in ("d1", "d2", "d3")] == [None, ["d2"], ["d3"]]
