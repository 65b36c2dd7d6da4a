from __future__ import annotations

import time
import uuid

from services.intake.device_cache import DeviceCache
from shared.db.files import DeviceFiles, RecordedFile, ServiceFile
from shared.domain.provisioning import ServiceRecipe


def device(name: str) -> DeviceFiles:
    """A device as the registry answers it, with one file, named (hardware ID, name) ``name``."""
    recipe = ServiceRecipe("5E0A1C2E-0000-4000-8000-000000000001", 1, "ssh", "ssh", 28, 22)
    recorded = RecordedFile(1, "80:00:00:00:01:00:00:01", "01-ssh.conf", 200, "0" * 64)
    return DeviceFiles(
        device_id=str(uuid.uuid5(uuid.NAMESPACE_URL, name)),
        hardware_id=name,
        name=name,
        lifecycle="registered",
        disabled=False,
        credential_generation=1,
        services=(ServiceFile(recipe, recorded, recorded.service_uid),),
    )


def listening_cache(ttl_s: float, max_entries: int = 50_000) -> DeviceCache:
    cache = DeviceCache(ttl_s=ttl_s, max_entries=max_entries)
    cache.listening(True)
    return cache


def test_a_device_is_kept_for_the_ttl_only() -> None:
    cache = listening_cache(ttl_s=0.05)
    cache.put("d1", device("row"), cache.generation)
    assert cache.get("d1") == device("row")
    time.sleep(0.06)
    assert cache.get("d1") is None


def test_a_ttl_of_zero_keeps_nothing() -> None:
    cache = listening_cache(ttl_s=0)
    cache.put("d1", device("row"), cache.generation)
    assert cache.get("d1") is None


def test_the_oldest_entries_go_first_when_full() -> None:
    cache = listening_cache(ttl_s=60, max_entries=2)
    for name in ("d1", "d2", "d3"):
        cache.put(name, device(name), cache.generation)
    assert [cache.get(d) for d in ("d1", "d2", "d3")] == [None, device("d2"), device("d3")]


def test_an_invalidation_drops_the_device_at_once() -> None:
    cache = listening_cache(ttl_s=60)
    cache.put("d1", device("old"), cache.generation)
    cache.put("d2", device("other"), cache.generation)
    cache.apply("device:D1")
    assert cache.get("d1") is None
    assert cache.get("d2") == device("other")


def test_a_read_that_started_before_an_invalidation_is_not_kept() -> None:
    cache = listening_cache(ttl_s=60)
    before = cache.generation  # a lookup starts ...
    cache.apply("device:d1")  # ... the operator resets the device meanwhile ...
    cache.put("d1", device("stale"), before)  # ... and the lookup's old answer arrives
    assert cache.get("d1") is None


def test_nothing_is_kept_while_the_listener_is_away() -> None:
    cache = listening_cache(ttl_s=60)
    cache.put("d1", device("row"), cache.generation)
    cache.listening(False)
    assert cache.get("d1") is None
    cache.put("d1", device("row"), cache.generation)
    assert cache.get("d1") is None
    cache.listening(True)
    cache.put("d1", device("row"), cache.generation)
    assert cache.get("d1") == device("row")


def test_an_unknown_payload_drops_everything() -> None:
    cache = listening_cache(ttl_s=60)
    cache.put("d1", device("row"), cache.generation)
    cache.apply("something-new")
    assert cache.get("d1") is None
