"""shared.db.devices' search on the real Postgres: every filter, sort key and order, paged
with the keyset cursor, agrees with the same search done in Python over the account's
rows read plainly; the count is exact up to its threshold and an estimate above; the
export is the same devices in the same order; another account's devices never appear."""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.db import devices
from shared.db.devices import Device
from shared.db.pool import Pool
from shared.domain.device_search import Cursor, DeviceSearch, parse_search, sort_value
from shared.domain.devices import online_cutoff, shown_state
from tests.support import registry

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(microsecond=0)
TTL_S = 300.0
CUTOFF = online_cutoff(NOW, TTL_S)
DEVICES = 1200


@dataclass(frozen=True)
class Fleet:
    account_id: str
    products: tuple[str, str]
    registration_id: str
    stranger_account_id: str


INSERT = """
    INSERT INTO devices (id, account_id, product_id, registration_id, hardware_id, claimed_hardware_id, name,
                         category_a, category_b, lifecycle, disabled, created_at, registered_at, last_seen_at)
    SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::text[], $5::text[], $6::text[],
                         $7::text[], $8::text[], $9::text[], $10::bool[], $11::timestamptz[],
                         $12::timestamptz[], $13::timestamptz[])"""


async def _insert(
    pool: Pool, account_id: str, product_ids: list[str], registration_id: str, seed: int
) -> None:
    """DEVICES devices with many ties (names differing only in case, shared times, missing
    times), hardware IDs with LIKE's metacharacters, and every lifecycle and state."""
    rng = random.Random(seed)
    times = [NOW - timedelta(minutes=m) for m in (0, 1, 2, 3, 10, 60, 600)]
    rows: list[list[Any]] = [[] for _ in range(13)]
    for i in range(DEVICES):
        lifecycle = rng.choice(["preregistered", "registered", "provisioned"])
        hardware_id = rng.choice(["B827EB", "b827eb", "dca632", "ab_c", "ab.c", "abxc", "-12"]) + f"{i:05x}"
        values = [
            str(uuid.uuid4()),
            account_id,
            rng.choice(product_ids),
            registration_id,
            hardware_id,
            rng.choice(["Kiosk ", "kiosk ", "Gate-", "Device "]) + str(rng.randint(0, 30)),
            rng.choice(["", "site-1", "Site-1", "site-2", "100% real"]),
            rng.choice(["", "batch_1", "batch-2"]),
            lifecycle,
            rng.random() < 0.1,
            rng.choice(times),
            None if lifecycle == "preregistered" else rng.choice(times),
            rng.choice([None, CUTOFF, *times]) if lifecycle == "provisioned" else None,
        ]
        for column, value in zip(rows, values, strict=True):
            column.append(value)
    await pool.execute(INSERT, *rows)


@pytest.fixture
async def fleet(pool: Pool) -> Fleet:
    account_id = await registry.new_account(pool)
    products = [await registry.new_product(pool, account_id, kind="auto") for _ in range(2)]
    registration_id = await registry.new_registration(pool, products[0])
    await _insert(pool, account_id, [p.id for p in products], registration_id, seed=13)
    stranger = await registry.new_account(pool)
    their_product = await registry.new_product(pool, stranger, kind="auto")
    their_registration = await registry.new_registration(pool, their_product)
    await _insert(pool, stranger, [their_product.id], their_registration, seed=13)  # the same hardware IDs
    return Fleet(account_id, (products[0].id, products[1].id), registration_id, stranger)


# ---------------------------------------------------------------- the search done in Python


def _matches(d: Device, s: DeviceSearch) -> bool:
    state = shown_state(
        disabled=d.disabled, lifecycle=d.lifecycle, last_seen_at=d.last_seen_at, now=NOW, online_ttl_s=TTL_S
    )
    if s.state in ("online", "offline", "disabled"):
        wanted_state = state == s.state
    else:  # a lifecycle step, of a device not disabled
        wanted_state = s.state is None or (not d.disabled and d.lifecycle == s.state)
    checks = [
        wanted_state,
        s.lifecycle is None or d.lifecycle == s.lifecycle,
        s.product_id is None or d.product_id == s.product_id,
        s.registration_id is None or d.registration_id == s.registration_id,
        s.hardware_id is None or d.hardware_id.lower() == s.hardware_id.lower(),
        s.hardware_id_prefix is None or d.hardware_id.lower().startswith(s.hardware_id_prefix.low),
        s.name_prefix is None or d.name.lower().startswith(s.name_prefix.low),
        s.category_a is None or d.category_a == s.category_a,
        s.category_b is None or d.category_b == s.category_b,
        s.registered_since is None or (d.registered_at is not None and d.registered_at >= s.registered_since),
        s.registered_before is None
        or (d.registered_at is not None and d.registered_at < s.registered_before),
        s.seen_since is None or (d.last_seen_at is not None and d.last_seen_at >= s.seen_since),
        s.seen_before is None or (d.last_seen_at is not None and d.last_seen_at < s.seen_before),
    ]
    return all(checks)


def _expected(everything: list[Device], s: DeviceSearch) -> list[str]:
    earliest = datetime.min.replace(tzinfo=UTC)

    def key(d: Device) -> tuple[Any, str]:
        value = sort_value(
            s.sort,
            device_id=d.id,
            hardware_id=d.hardware_id,
            name=d.name,
            created_at=d.created_at,
            registered_at=d.registered_at,
            last_seen_at=d.last_seen_at,
        )
        return (earliest if value is None else value), d.id

    found = sorted((d for d in everything if _matches(d, s)), key=key, reverse=s.order == "desc")
    return [d.id for d in found]


async def _everything(pool: Pool, account_id: str) -> list[Device]:
    """The account's devices read plainly (no filter, no order)."""
    return await devices.search_devices(
        pool, account_id, DeviceSearch(), online_cutoff=CUTOFF, limit=DEVICES * 10
    )


async def _paged(pool: Pool, account_id: str, s: DeviceSearch, page: int) -> list[str]:
    found: list[str] = []
    after: Cursor | None = None
    while True:
        batch = await devices.search_devices(
            pool, account_id, s, online_cutoff=CUTOFF, after=after, limit=page
        )
        found.extend(d.id for d in batch)
        if len(batch) < page:
            return found
        last = batch[-1]
        key = sort_value(
            s.sort,
            device_id=last.id,
            hardware_id=last.hardware_id,
            name=last.name,
            created_at=last.created_at,
            registered_at=last.registered_at,
            last_seen_at=last.last_seen_at,
        )
        after = Cursor(key, last.id)


SEARCHES: list[dict[str, str]] = [
    {},
    {"state": "online"},
    {"state": "offline"},
    {"state": "disabled"},
    {"state": "preregistered"},
    {"state": "registered"},
    {"lifecycle": "provisioned"},
    {"hardware_id_prefix": "B827"},
    {"hardware_id_prefix": "ab_"},  # '_' is literal: not "abxc..."
    {"hardware_id_prefix": "AB.C"},
    {"hardware_id_prefix": "-1"},
    {"name_prefix": "kiosk 1"},
    {"name_prefix": "Gate-"},
    {"category_a": "site-1"},  # exact: not Site-1
    {"category_a": "100% real"},
    {"category_b": "batch_1", "state": "offline"},
    {"registered_since": (NOW - timedelta(minutes=3)).isoformat()},
    {"registered_before": (NOW - timedelta(minutes=2)).isoformat()},
    {"seen_since": (NOW - timedelta(minutes=10)).isoformat(), "seen_before": NOW.isoformat()},
    {"category_a": "site-2", "name_prefix": "k", "lifecycle": "registered"},
    {"hardware_id": "B827EB0000A"},  # may or may not exist: agreeing is the point
]


@pytest.mark.parametrize("sort", ["id", "hardware_id", "name", "created_at", "registered_at", "last_seen_at"])
@pytest.mark.parametrize("order", ["asc", "desc"])
async def test_every_sort_pages_through_exactly_the_matching_devices(
    pool: Pool, fleet: Fleet, sort: str, order: str
) -> None:
    everything = await _everything(pool, fleet.account_id)
    assert len(everything) == DEVICES
    for query in [*SEARCHES, {"product_id": fleet.products[1]}, {"registration_id": fleet.registration_id}]:
        s = parse_search({**query, "sort": sort, "order": order})
        expected = _expected(everything, s)
        assert await _paged(pool, fleet.account_id, s, page=37) == expected, query


async def test_the_searches_are_not_trivial(pool: Pool, fleet: Fleet) -> None:
    """Each search of SEARCHES (but the exact hardware ID) matches some devices and not all,
    so that the agreement above means something."""
    everything = await _everything(pool, fleet.account_id)
    for query in SEARCHES[1:-1]:
        assert 0 < len(_expected(everything, parse_search(query))) < DEVICES, query


async def test_the_count_is_exact_up_to_the_threshold_and_an_estimate_above(pool: Pool, fleet: Fleet) -> None:
    everything = await _everything(pool, fleet.account_id)
    for query in SEARCHES:
        s = parse_search(query)
        expected = len(_expected(everything, s))
        count = await devices.count_devices(
            pool, fleet.account_id, s, online_cutoff=CUTOFF, exact_max=DEVICES
        )
        assert (count.total, count.exact) == (expected, True), query
        if expected > 10:
            small = await devices.count_devices(pool, fleet.account_id, s, online_cutoff=CUTOFF, exact_max=10)
            assert small.exact is False
            assert small.total >= 11  # at least what was counted, whatever the planner thinks
    exactly = await devices.count_devices(
        pool, fleet.account_id, DeviceSearch(), online_cutoff=CUTOFF, exact_max=DEVICES
    )
    assert (exactly.total, exactly.exact) == (DEVICES, True)  # the threshold itself is still exact


async def test_the_export_is_every_matching_device_in_order(pool: Pool, fleet: Fleet) -> None:
    everything = await _everything(pool, fleet.account_id)
    for query in ({}, {"sort": "name", "order": "desc"}, {"state": "online", "sort": "last_seen_at"}):
        s = parse_search(query)
        exported: list[str] = []
        async with devices.export_devices(pool, fleet.account_id, s, online_cutoff=CUTOFF, batch=100) as read:
            async for batch in read():
                assert len(batch) <= 100
                exported.extend(d.id for d in batch)
        assert exported == _expected(everything, s), query


async def test_a_second_reading_of_an_export_is_the_same_snapshot(pool: Pool, fleet: Fleet) -> None:
    """An HTTP/1.0 export reads twice (its length, then its body): a device changed between
    the two readings must not change the second."""
    s = parse_search({"sort": "name"})
    async with devices.export_devices(pool, fleet.account_id, s, online_cutoff=CUTOFF, batch=100) as read:
        first = [d for batch in [b async for b in read()] for d in batch]
        await pool.execute(
            "UPDATE devices SET name = 'renamed meanwhile' WHERE id = $1", first[0].id
        )  # another connection, committed between the readings
        second = [d for batch in [b async for b in read()] for d in batch]
    assert second == first and first[0].name != "renamed meanwhile"


async def test_another_accounts_devices_never_appear(pool: Pool, fleet: Fleet) -> None:
    theirs = {d.id for d in await _everything(pool, fleet.stranger_account_id)}
    mine = await _everything(pool, fleet.account_id)
    assert len(theirs) == DEVICES and not theirs & {d.id for d in mine}
    some = mine[0]
    for query in (
        {"hardware_id": some.hardware_id},
        {"hardware_id_prefix": "b827"},
        {"category_a": "site-1"},
    ):
        s = parse_search(query)
        assert not theirs & set(await _paged(pool, fleet.account_id, s, page=500))
    # their product and registration: nothing of theirs through mine
    assert (
        await devices.search_devices(
            pool,
            fleet.account_id,
            DeviceSearch(product_id=mine[0].product_id),
            online_cutoff=CUTOFF,
            limit=5000,
        )
        != []
    )
    stranger_product = (await _everything(pool, fleet.stranger_account_id))[0].product_id
    assert (
        await devices.search_devices(
            pool, fleet.account_id, DeviceSearch(product_id=stranger_product), online_cutoff=CUTOFF, limit=10
        )
        == []
    )
